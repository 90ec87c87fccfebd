"""DynaMO's token level (docs/ALGORITHM.md §5): the compensation factor beta_comp, and `modulate`, where
both factors are applied to the advantages inside the training step (step 6 of train.py).

- beta_comp (`compensation`, Eq. 10) is defined here. Softmax attenuation (§1.3): |d log pi_a / dz|^2
  lies in [(1 - pi_a)^2, 2 (1 - pi_a)^2], so confident (low-entropy) tokens of correct answers get weak
  updates; their positive advantages are boosted linearly in how low the token's entropy is.
- beta_stab (`stabilization`, Eq. 13) is defined in stabilizer.py, from the predicted entropy change.
- `modulate` multiplies the advantages by both (Eq. 14), each behind its config switch;
  `step_normalisers` is the `modulation.scope: step` option; `factor_stats` and
  `entropy_change_corr` are what the log shows.

Shapes: N sequences (rollouts) in the micro-batch, T response tokens.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo import distributed as dist
from dynamo.baselines import quantile
from dynamo.grpo import per_token, work_dtype
from dynamo.logprobs import response_token_stats
from dynamo.stabilizer import entropy_change, predicted_entropy_change, stabilization

# Added to the entropy range so a micro-batch whose valid tokens all share one entropy gives beta = 1.
RANGE_EPS = 1e-8


# ----------------------------------------------------------------------------------------------------------
# the factor: beta_comp (§5.1)


def compensation(
    entropy: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    alpha: float = 0.2,
    h_min: float | Tensor | None = None,
    h_max: float | Tensor | None = None,
) -> Tensor:
    """beta_comp (N, T), detached: 1 + alpha (H_max - H) / (H_max - H_min + 1e-8) where A > 0, else 1.

    H_min / H_max are taken over the valid tokens (mask == 1) of this micro-batch unless given
    (e.g. over the whole step, at the behaviour policy; H is then clamped into the given range so
    beta stays in [1, 1 + alpha] after the policy moved). alpha = mu_max - 1 of the official code (0.2 in
    decay6, 0.4 in decay5).
    Padding and tokens with A <= 0 get exactly 1. `advantages` is (N, T) or (N,).
    Deliberate difference from the official code: it takes min / max over the whole (N, T) tensor,
    padding included (whose entropy is 0 under verl's remove-padding path); here valid tokens only
    (§8). `h_min=0.0` reproduces the official range.
    """
    dtype = work_dtype(entropy)
    h = entropy.detach().to(dtype)  # (N, T)
    valid = mask.detach().bool()  # (N, T)
    adv = per_token(advantages.detach(), valid)  # (N, T)
    any_valid = valid.any()  # ()  no valid token -> bounds 0, result all ones below
    if h_max is None:
        h_max = torch.where(valid, h, -torch.inf).amax()  # ()  max over valid tokens
        h_max = torch.where(any_valid, h_max, 0.0)  # ()
    if h_min is None:
        h_min = torch.where(valid, h, torch.inf).amin()  # ()  min over valid tokens
        h_min = torch.where(any_valid, h_min, 0.0)  # ()
    h_max = torch.as_tensor(h_max, dtype=dtype, device=h.device)  # ()
    h_min = torch.as_tensor(h_min, dtype=dtype, device=h.device)  # ()
    h = torch.minimum(torch.maximum(h, h_min), h_max)  # (N, T) a no-op with this micro-batch's own range
    boost = 1.0 + alpha * (h_max - h) / (h_max - h_min + RANGE_EPS)  # (N, T)  Eq. 10, A > 0
    return torch.where(valid & (adv > 0), boost, torch.ones_like(h))  # (N, T)  1 where A <= 0 or padding


# ----------------------------------------------------------------------------------------------------------
# applying both factors in the training step (§5.3)


def modulate(cfg, cur: dict, old_logp, adv, mask, norms: dict, factors: dict) -> torch.Tensor:
    """A * beta_comp * beta_stab (Eq. 14) at the current policy `cur` (response_token_stats of this
    micro-batch); with both switches off, adv unchanged. `norms` holds step-scope normalisers
    (step_normalisers) or is empty (micro-batch scope). Each factor's valid values are appended to
    `factors` for the log."""
    m, out = cfg.modulation, adv
    valid = mask.bool()
    if m.compensation:  # boost confident tokens of correct answers (§5.1)
        beta = compensation(cur["entropy"], adv, mask, alpha=m.alpha, h_min=norms.get("h_min"),
                            h_max=norms.get("h_max"))  # (n, T)
        factors["comp"].append(beta[valid])
        out = out * beta
    if m.stabilization:  # damp the tokens whose predicted entropy change is largest (§5.2)
        xi = entropy_change(cur["logp"], old_logp, cur["entropy"], adv, mask, eps_low=cfg.loss.eps_low,
                            eps_high=cfg.loss.eps_high, mode=m.estimate, expected_u=cur.get("expected_u"))
        beta = stabilization(xi, mask, lambda_min=m.lambda_min, gamma=m.gamma, tau=m.tau,
                             xi_max=norms.get("xi_max"))  # (n, T)
        factors["stab"].append(beta[valid])
        out = out * beta
    return out


def step_normalisers(cfg, old_logp, entropy, adv, mask, old_u) -> dict:
    """`modulation.scope: step`: the normalisers of both factors over the whole step (all ranks), at the
    behaviour policy: beta_comp's entropy range and beta_stab's largest entropy-change estimate.
    The official scope is the micro-batch (an empty dict here), which makes the factors depend on
    how rollouts are grouped into micro-batches and ranks; the step scope does not.
    old_logp, entropy, adv, mask, old_u: (N, T) this rank's share of the step."""
    m = cfg.modulation
    if m.scope != "step":
        return {}
    valid = mask.bool()
    inf = torch.tensor(float("inf"), dtype=entropy.dtype, device=entropy.device)
    norms = {"h_max": dist.all_reduce_max(torch.where(valid, entropy, -inf).amax()),
             "h_min": -dist.all_reduce_max(torch.where(valid, -entropy, -inf).amax())}
    if m.stabilization:
        xi = entropy_change(old_logp, old_logp, entropy, adv, mask, eps_low=cfg.loss.eps_low,
                            eps_high=cfg.loss.eps_high, mode=m.estimate, expected_u=old_u)  # (N, T)
        norms["xi_max"] = dist.all_reduce_max(xi.max())
    return norms


# ----------------------------------------------------------------------------------------------------------
# what the log shows


def factor_stats(factors: dict) -> dict:
    """Mean and percentiles of each factor over this rank's valid tokens, and the damped fraction."""
    row = {}
    for name, parts in factors.items():
        if parts:
            v = torch.cat(parts).float()  # on the factors' device
            q = [quantile(v, p).item() for p in (0.05, 0.5, 0.95)]  # by sorting: torch.quantile stops at 2^24
            row.update({f"modulation/{name}_mean": v.mean().item(), f"modulation/{name}_p05": q[0],
                        f"modulation/{name}_p50": q[1], f"modulation/{name}_p95": q[2]})
            if name == "stab":
                row["modulation/damped_frac"] = (v < 0.95).float().mean().item()
    return row


@torch.no_grad()
def entropy_change_corr(cfg, model, ro, old) -> float:
    """Pearson correlation, over valid tokens, of the predicted (Eq. 6) and the measured entropy change
    of this step's update: one extra forward pass, so only every k steps. `old` is the step's behaviour pass
    (dynamo.objective.Behaviour, every row passed), re-run here in the same micro-batches."""
    old_logp, entropy, adv, mask, old_u = old.logp, old.entropy, old.adv_tok, old.mask, old.expected_u
    new = torch.cat([response_token_stats(model, ro.input_ids[m], ro.attention_mask[m], ro.prompt_length,
                                          temperature=cfg.rollout.temperature, chunk=cfg.logprob_chunk)["entropy"]
                     for m in old.micro])  # (N, T)
    mode = cfg.modulation.estimate if old_u is not None or cfg.modulation.estimate != "exact" else "head"
    pred = predicted_entropy_change(old_logp, old_logp, entropy, adv, mask, eps_low=cfg.loss.eps_low,
                                    eps_high=cfg.loss.eps_high, mode=mode, expected_u=old_u)  # (N, T)
    valid = mask.bool()
    x, y = pred[valid].double(), (new - entropy)[valid].double()
    x, y = x - x.mean(), y - y.mean()
    return (x * y).sum().item() / max(1e-12, (x.norm() * y.norm()).item())
