"""The seven baselines of DynaMO's main table, each a small function on the loss path with its own switch
(docs/COMPARISON.md). With every switch off the loss is exactly GRPO's.

Where each one acts, in the order the loss applies them (train.py steps 4 and 7):
  advantages   W-REINFORCE        `w_reinforce_advantages`: +lambda correct, -1 wrong, no group normalisation
  shaping      Entropy Advantages `entropy_advantages`: A + min(alpha H, |A| / kappa), H detached
  selection    Fork Tokens        `fork_mask`: keep the top-rho entropy tokens
               Clip-Cov           `clip_cov_mask`: drop a random few tokens of high covariance
               KL-Cov             `kl_cov_mask`: penalise |log-ratio| on the top-covariance tokens
  loss         grpo.ppo_loss applies the masks, KL-Cov's penalty (no PPO clip) and Entropy Loss's bonus
               -beta H (H differentiable); Clip-Higher is loss.eps_high alone.
Selection always works on detached quantities, over a unit chosen by `loss.select_scope`: each micro-batch
(`micro`, the official code's unit), or the whole mini-batch from a no-grad pre-pass (`mini_batch`).

Shapes: N rollouts, T response tokens; `mask` (N, T) is 1 on valid response tokens.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


def w_reinforce_advantages(correct: Tensor, lam: float) -> Tensor:
    """W-REINFORCE (Zhu et al., arXiv 2506.01347): +lam for a correct response, -1 for a wrong one.

    No baseline and no group normalisation, so a group whose rollouts all agree still carries a gradient.
    correct: (N,) bool. Returns (N,) float32.
    """
    return torch.where(correct.bool(), lam, -1.0).float()


def entropy_advantages(advantages: Tensor, entropy: Tensor, *, alpha: float, kappa: float) -> tuple[Tensor, Tensor]:
    """Entropy Advantages (Cheng et al., arXiv 2506.14758): A' = A + psi, psi = min(alpha H, |A| / kappa).

    H is detached (no entropy gradient: that is what tells it from an entropy bonus). psi >= 0 and, with
    kappa > 1, psi < |A|, so the sign of A never flips, and A = 0 stays 0.
    advantages, entropy: (N, T). Returns (A', psi), both (N, T).
    """
    psi = torch.minimum(alpha * entropy.detach(), advantages.abs() / kappa)  # (N, T)
    return advantages + psi, psi


def quantile(values: Tensor, q: float) -> Tensor:
    """The q-quantile of a 1-D tensor with linear interpolation, by sorting: torch.quantile refuses more than
    2^24 elements (a whole mini-batch's tokens can exceed that) and wants q on the values' device. The same
    arithmetic as torch.quantile (q in the values' dtype, torch.lerp), so the two agree to the bit."""
    v = values.sort().values
    pos = torch.tensor(q, dtype=v.dtype) * (len(v) - 1)  # a CPU scalar: the indices below need no sync
    lo = int(pos.floor())
    hi = min(lo + 1, len(v) - 1)
    return torch.lerp(v[lo], v[hi], (pos - lo).to(v.device))


def fork_mask(entropy: Tensor, mask: Tensor, *, top: float) -> Tensor:
    """Fork Tokens (Wang et al., arXiv 2506.01939): keep the tokens whose entropy is at least the
    (1 - top)-quantile of the valid tokens' entropies (ties kept); padding is not in the quantile.
    entropy, mask: (N, T). Returns keep (N, T) bool."""
    valid = mask.bool()
    if not valid.any():
        return valid
    h = entropy.detach()
    tau = quantile(h[valid].float(), 1.0 - top)
    return (h >= tau) & valid


def token_covariance(logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Cov_t = (logp_t - mean logp) (A_t - mean A), both means over the valid tokens (token-weighted, so
    mean A is not 0 even for group-normalised advantages), logp detached. Padding gets 0. Returns (N, T)."""
    m = mask.float()
    n = m.sum().clamp(min=1)
    lp, a = logp.detach().float(), advantages.detach().float()
    lp_mean, a_mean = (lp * m).sum() / n, (a * m).sum() / n
    return (lp - lp_mean) * (a - a_mean) * m


def n_selected(ratio: float, mask: Tensor) -> int:
    """max(floor(ratio * valid tokens), 1): the official codes' count (a floor of one token per unit)."""
    return max(int(ratio * float(mask.sum())), 1)


def clip_cov_mask(cov: Tensor, clipped: Tensor, mask: Tensor, *, ratio: float, low: float, high: float,
                  generator: torch.Generator) -> Tensor:
    """Clip-Cov (Cui et al., arXiv 2505.22617): among the valid tokens that PPO did not clip and whose
    covariance lies in (low, high), pick max(floor(ratio N), 1) at random (all of them if fewer); the loss
    then drops those tokens' gradient. `generator` makes the pick reproducible.
    cov, clipped, mask: (N, T). Returns drop (N, T) bool."""
    cand = (mask.bool() & ~clipped & (cov > low) & (cov < high)).flatten().nonzero().squeeze(1)  # (C,)
    k = min(n_selected(ratio, mask), len(cand))
    pick = cand[torch.randperm(len(cand), generator=generator)[:k].to(cand.device)]
    drop = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    drop[pick] = True
    return drop.view(cov.shape)


def kl_cov_mask(cov: Tensor, mask: Tensor, *, ratio: float) -> Tensor:
    """KL-Cov (same paper): the max(floor(ratio N), 1) valid tokens of largest (signed) covariance.
    cov, mask: (N, T). Returns selected (N, T) bool."""
    valid = mask.bool()
    k = min(n_selected(ratio, mask), int(valid.sum()))
    ranked = torch.where(valid, cov, -torch.inf).flatten()
    sel = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    sel[ranked.topk(k).indices] = True
    return sel.view(cov.shape) & valid


@dataclasses.dataclass
class Selection:
    """The token masks of the selection methods for one unit (None = that method is off), all (N, T) bool."""
    keep: Tensor | None = None  # Fork Tokens: tokens that keep their policy loss
    drop: Tensor | None = None  # Clip-Cov: tokens whose gradient is dropped
    penalise: Tensor | None = None  # KL-Cov: tokens that get the |log-ratio| penalty

    def rows(self, index) -> Selection:
        """The same masks for a subset of the unit's rows (a micro-batch of a mini-batch)."""
        return Selection(*(None if m is None else m[index] for m in dataclasses.astuple(self)))

    def selected(self) -> Tensor | None:
        """The tokens the active method selected (for the log); None when no selection method is on."""
        masks = [m for m in dataclasses.astuple(self) if m is not None]
        return masks[0] if len(masks) == 1 else (None if not masks else torch.stack(masks).any(0))


def selects_tokens(loss_cfg) -> bool:
    """Whether any selection method is on (Fork Tokens, Clip-Cov, KL-Cov)."""
    return loss_cfg.fork_top < 1.0 or loss_cfg.clip_cov_ratio > 0 or loss_cfg.kl_cov_ratio > 0


def needs_every_row(loss_cfg) -> list[str]:
    """The switched-on methods (their config keys) whose loss depends on rows with advantage 0 too, so that
    leaving those rows out would change the gradient: Entropy Loss and KL-Cov add terms that do not vanish with
    A, Fork Tokens' quantile and Clip-Cov's covariance are over every token of their unit. The one place this
    rule lives: config validation refuses skip_zero_advantage=true with them, objective.skips_zero_advantage
    keeps every row under auto."""
    c = loss_cfg
    return [key for key, on in (("loss.entropy_coef", c.entropy_coef > 0), ("loss.kl_cov_ratio", c.kl_cov_ratio > 0),
                                ("loss.fork_top", c.fork_top < 1), ("loss.clip_cov_ratio", c.clip_cov_ratio > 0)) if on]


def select_tokens(loss_cfg, logp: Tensor, old_logp: Tensor, entropy: Tensor, advantages: Tensor, mask: Tensor,
                  generator: torch.Generator) -> Selection:
    """Every switched-on selection method's mask over one unit, from detached current-policy log-probs and
    entropies. advantages: the (N, T) advantages the covariance uses (before any token shaping)."""
    c = loss_cfg
    sel = Selection()
    if c.fork_top < 1.0:
        sel.keep = fork_mask(entropy, mask, top=c.fork_top)
    if c.clip_cov_ratio > 0 or c.kl_cov_ratio > 0:
        cov = token_covariance(logp, advantages, mask)
        if c.clip_cov_ratio > 0:
            ratio = (logp.detach() - old_logp).exp()
            a = advantages.detach()
            clipped = -a * ratio.clamp(1 - c.eps_low, 1 + c.eps_high) > -a * ratio  # the flat PPO branch wins
            sel.drop = clip_cov_mask(cov, clipped, mask, ratio=c.clip_cov_ratio, low=c.clip_cov_low,
                                     high=c.clip_cov_high, generator=generator)
        if c.kl_cov_ratio > 0:
            sel.penalise = kl_cov_mask(cov, mask, ratio=c.kl_cov_ratio)
    return sel
