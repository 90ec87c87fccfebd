"""Gradient compensation beta_comp (SPEC §5; the paper's beta^comp, README Eq. for A^final).

Softmax attenuation (SPEC §1): |d log pi_a / dz|^2 lies in [(1 - pi_a)^2, 2 (1 - pi_a)^2], so confident
(low-entropy) tokens of correct answers get weak updates. Their positive advantages are boosted linearly
in how low the token's entropy is within the micro-batch.

Shapes: N sequences (rollouts) in the micro-batch, T response tokens.
"""
import torch
from torch import Tensor

# Added to the entropy range so a micro-batch whose valid tokens all share one entropy gives beta = 1.
RANGE_EPS = 1e-8


def per_token(advantages: Tensor, mask: Tensor) -> Tensor:
    """Advantages as (N, T): a per-sequence (N,) advantage is broadcast over the response tokens."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (N, 1)
    return advantages.expand(mask.shape)  # (N, T)


def work_dtype(x: Tensor) -> torch.dtype:
    """float32 for bf16/fp16/fp32 inputs, float64 stays float64 (used by the float64 tests)."""
    return torch.promote_types(x.dtype, torch.float32)


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
    beta stays in [1, 1 + alpha] after the policy moved). alpha = mu_max - 1 of the official code (0.2 in decay6, 0.4 in decay5).
    Padding and tokens with A <= 0 get exactly 1. `advantages` is (N, T) or (N,).
    Deliberate difference from the official code: it takes min / max over the whole (N, T) tensor,
    padding included (whose entropy is 0 under verl's remove-padding path); SPEC §5 says valid only.
    """
    dtype = work_dtype(entropy)
    h = entropy.detach().to(dtype)  # (N, T)
    valid = mask.detach().bool()  # (N, T)
    adv = per_token(advantages.detach(), valid)  # (N, T)
    any_valid = valid.any()  # ()  no valid token -> bounds 0, result all ones below
    if h_max is None:
        h_max = torch.where(valid, h, -torch.inf).amax()  # ()  SPEC §5: max over valid tokens
        h_max = torch.where(any_valid, h_max, 0.0)  # ()
    if h_min is None:
        h_min = torch.where(valid, h, torch.inf).amin()  # ()  SPEC §5: min over valid tokens
        h_min = torch.where(any_valid, h_min, 0.0)  # ()
    h_max = torch.as_tensor(h_max, dtype=dtype, device=h.device)  # ()
    h_min = torch.as_tensor(h_min, dtype=dtype, device=h.device)  # ()
    h = torch.minimum(torch.maximum(h, h_min), h_max)  # (N, T) a no-op with this micro-batch's own range
    boost = 1.0 + alpha * (h_max - h) / (h_max - h_min + RANGE_EPS)  # (N, T)  SPEC §5 beta_comp, A > 0
    return torch.where(valid & (adv > 0), boost, torch.ones_like(h))  # (N, T)  1 where A <= 0 or padding
