"""Update-magnitude stabilisation beta_stab from the predicted entropy change (docs/ALGORITHM.md §1.4, §5.2).

Applied to the advantages, together with beta_comp, in modulator.py:modulate (step 6 of train.py).

Under the logit step dz = eta xi (e_a - pi) a token's entropy moves, to first order, by
    dH = -eta xi [pi_a L_a - sum_v pi_v^2 L_v],   L_v = log pi_v + H            (Eq. 6; the paper's Eq. 29)
with xi = I r A the token's effective policy-gradient weight (I = 1 where PPO-clip lets the gradient
through). Xi = |dH| flags the tokens whose update would move entropy most; beta_stab damps them.

Modes for the second term E_u = sum_v pi_v^2 L_v (u_t = pi_t L_t is the sampled token's first term):
  head   the official code (DynaMO-RL commit 63e5ec9, dp_actor.py `_compute_entropy_estimation`): E_u
         replaced by the mean of u over the sequence's valid tokens (default).
  exact  E_u itself, from the full logits (`expected_u_from_logits`, one extra reduction over V).
  v0     the first release (DynaMO-RL commit 496c27f, dp_actor.py `_compute_entropy_estimation`):
         one value per sequence, |sum_t pi_t^2 L_t xi_t|, broadcast to its tokens. It is no
         first-order dH of any token; kept for reproduction only.
eta is dropped (a common scale that the normalisation x = Xi / max Xi removes). v0 multiplied by
eta = 1e-6 before adding the 1e-8 of the normaliser; to reproduce that exactly call
`stabilization(..., eps=1e-2)` (= 1e-8 / 1e-6).

Shapes: N sequences in the micro-batch, T response tokens, V vocabulary.
"""
import torch
from torch import Tensor

from dynamo.grpo import per_token, work_dtype

# Log-ratio clamp, as in the loss (§6): keeps r finite so x never becomes inf / inf.
# The official estimate does not clamp; this only matters when |logp - old_logp| > 20.
LOG_RATIO_CLAMP = 20.0


def expected_u_from_logits(logits: Tensor) -> Tensor:
    """E_u = sum_v pi_v^2 (log pi_v + H) over the last (vocabulary) dim: (..., V) -> (...)."""
    logp = torch.log_softmax(logits.detach().to(work_dtype(logits)), dim=-1)  # (..., V)
    p = logp.exp()  # (..., V)
    h = -(p * logp).sum(-1, keepdim=True)  # (..., 1)  entropy H
    return (p * p * (logp + h)).sum(-1)  # (...)  Eq. 6, second term


def effective_weight(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, eps_low: float, eps_high: float
) -> Tensor:
    """xi = I r A (N, T): I = [A > 0, r <= 1 + eps_high] + [A < 0, r >= 1 - eps_low] (Eq. 11)."""
    dtype = work_dtype(logp)
    valid = mask.detach().bool()  # (N, T)
    adv = per_token(advantages.detach(), valid).to(dtype)  # (N, T)
    log_ratio = logp.detach().to(dtype) - old_logp.detach().to(dtype)  # (N, T)
    r = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()  # (N, T)  r = pi / pi_old
    unclipped = ((adv > 0) & (r <= 1.0 + eps_high)) | ((adv < 0) & (r >= 1.0 - eps_low))  # (N, T)  I
    return torch.where(unclipped & valid, r * adv, torch.zeros_like(r))  # (N, T)  xi = I r A


def predicted_entropy_change(
    logp: Tensor,
    old_logp: Tensor,
    entropy: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    mode: str = "head",
    expected_u: Tensor | None = None,
) -> Tensor:
    """Signed first-order entropy change per token (N, T), in units of eta; 0 at padding.

    head / exact: -xi (u - E_u) (Eq. 6); v0: the per-sequence -sum_t pi_t^2 L_t xi_t.
    This is what the diagnostic correlates with the measured entropy change.
    """
    dtype = work_dtype(logp)
    valid = mask.detach().bool()  # (N, T)
    fmask = valid.to(dtype)  # (N, T)
    zero = torch.zeros((), dtype=dtype, device=logp.device)  # ()
    # Padding values never enter a sum (a masked-out inf * 0 would still be nan).
    lp = torch.where(valid, logp.detach().to(dtype), zero)  # (N, T)
    h = torch.where(valid, entropy.detach().to(dtype), zero)  # (N, T)
    xi = effective_weight(logp, old_logp, advantages, mask, eps_low=eps_low, eps_high=eps_high)  # (N, T)
    pi = lp.exp()  # (N, T)  probability of the sampled token
    lam = lp + h  # (N, T)  L_t = log pi_t + H_t
    u = pi * lam  # (N, T)  first term of Eq. 6, sampled token
    if mode == "head":
        count = fmask.sum(-1, keepdim=True).clamp(min=1.0)  # (N, 1)
        baseline = (u * fmask).sum(-1, keepdim=True) / count  # (N, 1)  u-bar: mean over valid tokens
    elif mode == "exact":
        if expected_u is None:
            raise ValueError("mode='exact' needs expected_u = expected_u_from_logits(logits), shape (N, T)")
        baseline = expected_u.detach().to(dtype)  # (N, T)  sum_v pi_v^2 L_v
    elif mode == "v0":
        seq = -(pi * pi * lam * xi * fmask).sum(-1, keepdim=True)  # (N, 1)  first release, per sequence
        return seq * fmask  # (N, T)
    else:
        raise ValueError(f"unknown entropy-change mode {mode!r}: head | exact | v0")
    return torch.where(valid, -xi * (u - baseline), torch.zeros_like(u))  # (N, T)  Eq. 6 / eta


def entropy_change(
    logp: Tensor,
    old_logp: Tensor,
    entropy: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    mode: str = "head",
    expected_u: Tensor | None = None,
) -> Tensor:
    """Xi = |dH| (N, T) >= 0, detached, 0 at padding (Eq. 12).

    `advantages` is (N, T) or (N,); eps_low / eps_high are the PPO clip range actually used by the
    loss (0.2 / 0.28 in the official run). Since Xi >= 0 and 0 at padding, `Xi.max()` is already the
    max over valid tokens: the whole-step normaliser is the max of these over the step's micro-batches.
    """
    dh = predicted_entropy_change(
        logp, old_logp, entropy, advantages, mask,
        eps_low=eps_low, eps_high=eps_high, mode=mode, expected_u=expected_u,
    )  # (N, T)
    return dh.abs()  # (N, T)  Xi = |dH|


def stabilization(
    xi: Tensor,
    mask: Tensor,
    *,
    lambda_min: float = 0.6,
    gamma: float = 50.0,
    tau: float = 0.99,
    xi_max: float | Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """beta_stab (N, T) in [lambda_min, 1], detached; exactly 1 at padding (Eq. 13).

    x = Xi / (xi_max + eps), beta = lambda_min + (1 - lambda_min) / (1 + exp(gamma (x - tau))).
    xi_max None: max over this micro-batch's valid tokens (official); pass the step's max for
    whole-step scope. With the defaults the arg-max token (x ~ 1) always gets 0.751.
    decay5 preset (official `decay5_linearnorm`): tau 0.9, lambda_min = 1 - alpha = 0.6.
    """
    dtype = work_dtype(xi)
    valid = mask.detach().bool()  # (N, T)
    zero = torch.zeros((), dtype=dtype, device=xi.device)  # ()
    x_raw = torch.where(valid, xi.detach().to(dtype), zero)  # (N, T)  Xi >= 0, so padding 0 never wins the max
    if xi_max is None:
        xi_max = x_raw.amax() if x_raw.numel() else zero  # ()  micro-batch scope (official)
    xi_max = torch.as_tensor(xi_max, dtype=dtype, device=x_raw.device)  # ()
    x = x_raw / (xi_max + eps)  # (N, T)  linear normalisation ("linearnorm")
    # sigmoid(-z) == 1 / (1 + exp(z)) without overflow for large x.
    beta = lambda_min + (1.0 - lambda_min) * torch.sigmoid(-gamma * (x - tau))  # (N, T)  Eq. 13
    return torch.where(valid, beta, torch.ones_like(beta))  # (N, T)
