"""DynaMO's token level inside the training step: the switches, and the diagnostics the log shows.

The factors themselves are pure functions in modulator.py (beta_comp) and stabilizer.py (beta_stab).
"""
from __future__ import annotations

import torch

from dynamo import distributed as dist
from dynamo.logprobs import response_token_stats
from dynamo.modulator import compensation
from dynamo.stabilizer import entropy_change, predicted_entropy_change, stabilization


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


def modulate(cfg, cur: dict, old_logp, adv, mask, norms: dict, factors: dict) -> torch.Tensor:
    """Token advantages times DynaMO's factors (SPEC §5); with both switches off, adv unchanged.
    `norms` holds step-scope normalisers (step_normalisers) or is empty (micro-batch scope)."""
    m, out = cfg.modulation, adv
    valid = mask.bool()
    if m.compensation:  # boost confident tokens of correct answers (softmax attenuation, SPEC §1)
        beta = compensation(cur["entropy"], adv, mask, alpha=m.alpha, h_min=norms.get("h_min"),
                            h_max=norms.get("h_max"))  # (n, T)
        factors["comp"].append(beta[valid])
        out = out * beta
    if m.stabilization:  # damp the tokens whose predicted entropy change is largest
        xi = entropy_change(cur["logp"], old_logp, cur["entropy"], adv, mask, eps_low=cfg.loss.eps_low,
                            eps_high=cfg.loss.eps_high, mode=m.estimate, expected_u=cur.get("expected_u"))
        beta = stabilization(xi, mask, lambda_min=m.lambda_min, gamma=m.gamma, tau=m.tau,
                             xi_max=norms.get("xi_max"))  # (n, T)
        factors["stab"].append(beta[valid])
        out = out * beta
    return out


def factor_stats(factors: dict) -> dict:
    """Mean and percentiles of each factor over this rank's valid tokens, and the damped fraction."""
    row = {}
    for name, parts in factors.items():
        if parts:
            v = torch.cat(parts).float()
            q = torch.quantile(v, torch.tensor([0.05, 0.5, 0.95])).tolist()
            row.update({f"modulation/{name}_mean": v.mean().item(), f"modulation/{name}_p05": q[0],
                        f"modulation/{name}_p50": q[1], f"modulation/{name}_p95": q[2]})
            if name == "stab":
                row["modulation/damped_frac"] = (v < 0.95).float().mean().item()
    return row


@torch.no_grad()
def entropy_change_corr(cfg, model, ro, micro, old_logp, entropy, adv, mask, old_u) -> float:
    """Pearson correlation, over valid tokens, of the predicted (SPEC §1 Eq. 29) and the measured
    entropy change of this step's update: one extra forward pass, so only every k steps."""
    new = torch.cat([response_token_stats(model, ro.input_ids[m], ro.attention_mask[m], ro.prompt_length,
                                          temperature=cfg.rollout.temperature, chunk=cfg.logprob_chunk)["entropy"]
                     for m in micro])  # (N, T)
    mode = cfg.modulation.estimate if old_u is not None or cfg.modulation.estimate != "exact" else "head"
    pred = predicted_entropy_change(old_logp, old_logp, entropy, adv, mask, eps_low=cfg.loss.eps_low,
                                    eps_high=cfg.loss.eps_high, mode=mode, expected_u=old_u)  # (N, T)
    valid = mask.bool()
    x, y = pred[valid].double(), (new - entropy)[valid].double()
    x, y = x - x.mean(), y - y.mean()
    return (x * y).sum().item() / max(1e-12, (x.norm() * y.norm()).item())
