# python -m pytest -q tests/test_modulation_wiring.py  — DynaMO's token factors inside the training step.
import torch

from dynamo.config import load_config
from dynamo.grpo import ppo_loss, token_weights
from dynamo.modulator import modulate, step_normalisers


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    n, t = 6, 7
    mask = (torch.rand(n, t, generator=g) > 0.2).float()
    cur = {"logp": -torch.rand(n, t, generator=g), "entropy": torch.rand(n, t, generator=g)}
    old = cur["logp"] + 0.05 * torch.randn(n, t, generator=g)
    adv = torch.randn(n, 1, generator=g).expand(n, t)
    return cur, old, adv, mask


def test_both_switches_off_is_exactly_grpo():
    cfg = load_config(["modulation.compensation=false", "modulation.stabilization=false"])
    cur, old, adv, mask = inputs()
    factors = {"comp": [], "stab": []}
    out = modulate(cfg, cur, old, adv, mask, {}, factors)
    w = token_weights(mask, torch.arange(6), "token_mean")
    grpo = ppo_loss(cur["logp"], old, adv, w, eps_low=0.2, eps_high=0.28, dual_clip=10.0)[0]
    same = ppo_loss(cur["logp"], old, out, w, eps_low=0.2, eps_high=0.28, dual_clip=10.0)[0]
    assert torch.equal(out, adv) and torch.equal(grpo, same)
    assert factors == {"comp": [], "stab": []}


def test_switches_multiply_detached_factors_and_keep_signs():
    cur, old, adv, mask = inputs(1)
    cur["logp"].requires_grad_(True)
    for comp, stab in ((True, False), (False, True), (True, True)):
        cfg = load_config([f"modulation.compensation={comp}", f"modulation.stabilization={stab}"])
        factors = {"comp": [], "stab": []}
        out = modulate(cfg, cur, old, adv, mask, {}, factors)
        assert not out.requires_grad  # factors are detached: the loss gradient flows through logp only
        assert bool(factors["comp"]) == comp and bool(factors["stab"]) == stab
        valid = mask.bool()
        assert torch.all(torch.sign(out[valid]) == torch.sign(adv[valid]))
        assert not torch.equal(out, adv)


def test_step_scope_factors_do_not_depend_on_the_micro_batch_split():
    cur, old, adv, mask = inputs(2)
    for scope, same in (("step", True), ("micro_batch", False)):
        cfg = load_config(["modulation.compensation=true", "modulation.stabilization=true",
                           f"modulation.scope={scope}"])
        norms = step_normalisers(cfg, cur["logp"], cur["entropy"], adv, mask, None)
        assert bool(norms) == (scope == "step")
        whole = modulate(cfg, cur, cur["logp"], adv, mask, norms, {"comp": [], "stab": []})
        halves = torch.cat([modulate(cfg, {k: v[s] for k, v in cur.items()}, cur["logp"][s], adv[s], mask[s], norms,
                                     {"comp": [], "stab": []}) for s in (slice(0, 3), slice(3, 6))])
        assert torch.allclose(whole, halves, atol=1e-6) == same
