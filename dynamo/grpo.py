"""GRPO with groups of any size (docs/ALGORITHM.md §4) and the PPO dual-clip token loss (§6).

Steps 4 (advantages) and 7 (update) of train.py.

Shapes: N rollouts, T response tokens.
"""
from __future__ import annotations

import torch

from dynamo.baselines import Selection


def group_advantages(rewards: torch.Tensor, prompt_index: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_g) / (std_g + eps) over the rollouts of the same prompt (Eq. 9).

    std is the unbiased (Bessel) std, as in the official code. Groups whose rewards are all equal
    (all correct, all wrong, or a single rollout) get A = 0: they carry no learning signal.
    rewards, prompt_index: (N,). Returns (N,) float32.
    """
    rewards = rewards.float()
    groups, inverse = torch.unique(prompt_index, return_inverse=True)  # inverse: (N,) group of each row
    inverse = inverse.to(rewards.device)  # prompt indices may live on the CPU
    g = len(groups)
    size = rewards.new_zeros(g).index_add_(0, inverse, torch.ones_like(rewards))  # (G,)
    mean = rewards.new_zeros(g).index_add_(0, inverse, rewards) / size  # (G,)
    sq = rewards.new_zeros(g).index_add_(0, inverse, (rewards - mean[inverse]) ** 2)  # (G,)
    std = (sq / (size - 1).clamp(min=1)).sqrt()  # (G,) Bessel-corrected
    adv = (rewards - mean[inverse]) / (std[inverse] + eps)  # (N,)
    flat = (std[inverse] == 0) | (size[inverse] < 2)  # (N,) no variance in the group
    return torch.where(flat, torch.zeros_like(adv), adv)


def per_token(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages as (N, T): a per-sequence (N,) advantage is broadcast over the response tokens (§4)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (N, 1)
    return advantages.expand(mask.shape)  # (N, T)


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for bf16/fp16/fp32 inputs, float64 stays float64 (used by the float64 tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def token_weights(mask: torch.Tensor, prompt_index: torch.Tensor, aggregation: str,
                  all_reduce=lambda x: x) -> torch.Tensor:
    """Per-token loss weights that sum to 1 over the valid tokens of one mini-batch (all ranks).

    This is the single place where the loss denominator is decided, so splitting a mini-batch into
    micro-batches (gradient accumulation) never changes the gradient:
      token_mean:  1 / (valid tokens in the mini-batch)                   (official)
      prompt_mean: 1 / (prompts in the mini-batch * valid tokens of that prompt there)
    Under several ranks the counts are summed over ranks with `all_reduce` (prompts never span
    ranks), and gradients are then summed, not averaged.
    mask: (N, T), prompt_index: (N,). Returns (N, T) float32.
    """
    mask = mask.float()
    if aggregation == "token_mean":
        return mask / all_reduce(mask.sum()).clamp(min=1)
    if aggregation == "prompt_mean":
        groups, inverse = torch.unique(prompt_index, return_inverse=True)
        inverse = inverse.to(mask.device)  # prompt_index lives on the CPU, the mask with the model
        group_tokens = mask.new_zeros(len(groups)).index_add_(0, inverse, mask.sum(1))  # (G,)
        n_groups = all_reduce(mask.new_tensor(float(len(groups))))
        per_row = 1.0 / (n_groups * group_tokens[inverse].clamp(min=1))  # (N,)
        return mask * per_row[:, None]
    raise ValueError(f"unknown loss aggregation {aggregation!r}")


def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor, *,
             eps_low: float, eps_high: float, dual_clip: float, select: Selection | None = None,
             kl_coef: float = 1.0, entropy: torch.Tensor | None = None, entropy_coef: float = 0.0,
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO dual-clip policy loss summed with `weights` (Eq. 15); returns (loss, stats).

    logp, old_logp, advantages, weights: (N, T). Advantages are per token (possibly modulated or shaped).
    weights are zero outside the response mask and carry the denominator (see token_weights); the
    baselines never change it. With `select` empty and entropy_coef 0 this is GRPO's loss; otherwise, in
    this order (dynamo/baselines.py):
      select.keep      Fork Tokens: only the kept tokens have a policy loss
      select.drop      Clip-Cov: the dropped tokens' loss (and gradient) is multiplied by 0
      select.penalise  KL-Cov: no PPO clip at all (the plain -A r), + kl_coef |log-ratio| on the penalised tokens
      entropy_coef     Entropy Loss: - entropy_coef * H summed with the same weights (H keeps its graph)
    """
    select = select or Selection()
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)  # (N, T) guards exp against overflow
    ratio = log_ratio.exp()  # (N, T)
    loss1 = -advantages * ratio  # (N, T)
    loss2 = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # (N, T)
    clipped = torch.maximum(loss1, loss2)  # (N, T) pessimistic PPO bound
    loss3 = -advantages * dual_clip  # (N, T) dual clip: bounds the loss of negative advantages
    per_token = torch.where(advantages < 0, torch.minimum(clipped, loss3), clipped)  # (N, T)
    if select.penalise is not None:  # KL-Cov replaces the clip by its penalty
        per_token = loss1
    if select.keep is not None:
        per_token = per_token * select.keep
    if select.drop is not None:
        per_token = per_token * ~select.drop
    if select.penalise is not None:
        per_token = per_token + kl_coef * log_ratio.abs() * select.penalise
    loss = (per_token * weights).sum()
    if entropy_coef:
        loss = loss - entropy_coef * (entropy * weights).sum()
    with torch.no_grad():
        valid = weights > 0
        n = valid.sum().clamp(min=1)
        stats = {
            "clip_frac": ((loss2 > loss1) & valid).sum().item() / n.item(),
            "dual_clip_frac": ((advantages < 0) & (clipped > loss3) & valid).sum().item() / n.item(),
            "approx_kl": (0.5 * (log_ratio ** 2) * valid).sum().item() / n.item(),
        }
        if select.penalise is not None:
            stats["kl_abs_sum"] = (log_ratio.abs() * (select.penalise & valid)).sum().item()
    return loss, stats
