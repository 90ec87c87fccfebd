# python -m pytest -q tests/test_baselines.py  — the seven baselines on a toy batch whose values are worked
# out by hand (docs/COMPARISON.md, "Tests"): loss value and per-token gradient of each method.
import math

import pytest
import torch

from dynamo.baselines import (Selection, clip_cov_mask, entropy_advantages, fork_mask, kl_cov_mask, quantile,
                              select_tokens, token_covariance, w_reinforce_advantages)
from dynamo.config import ConfigError, load_config
from dynamo.grpo import ppo_loss, token_weights
from dynamo.logprobs import _TokenStats

# Two responses x three tokens; response 1's last token is padding (5 valid tokens). Response 0 is correct
# (A = +1), response 1 wrong (A = -1). Ratios r = exp(logp - old_logp) are 1, 1.25, 0.9 / 1.1, 0.75.
MASK = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
ADV = torch.tensor([[1.0, 1, 1], [-1, -1, -1]])
LOGP = torch.tensor([[-0.1, -2.0, -0.3], [-2.6, -0.5, 0.0]], dtype=torch.float64)
RATIO = torch.tensor([[1.0, 1.25, 0.9], [1.1, 0.75, 1.0]], dtype=torch.float64)
OLD = LOGP - RATIO.log()
H = torch.tensor([[0.4, 2.0, 0.8], [1.6, 1.0, 0.0]])
VALID = MASK.bool()


def loss_and_g(adv=ADV, eps_high=0.2, select=None, **kw):
    """(token-mean loss, g) with g = d loss_t / d logp_t per token (the gradient times the 5 valid tokens)."""
    logp = LOGP.clone().requires_grad_()
    w = token_weights(MASK, torch.arange(2), "token_mean").double()
    loss, _ = ppo_loss(logp, OLD, adv.double(), w, eps_low=0.2, eps_high=eps_high, dual_clip=10.0,
                       select=select, **kw)
    loss.backward()
    return loss.item(), (logp.grad * 5).masked_fill(~VALID, 0.0).float()


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a).float(), torch.as_tensor(b).float(), atol=tol)


def test_grpo_reference():
    loss, g = loss_and_g()
    assert math.isclose(loss, -0.24, abs_tol=1e-6)
    assert close(g, [[-1, 0, -0.9], [1.1, 0, 0]])  # (0,1) and (1,1) clipped


def test_clip_higher():
    loss, g = loss_and_g(eps_high=0.28)
    assert math.isclose(loss, -0.25, abs_tol=1e-6)
    assert close(g, [[-1, -1.25, -0.9], [1.1, 0, 0]])  # (0,1) no longer clipped, (1,1) still (low side)


def test_entropy_loss_value_and_gradient():
    loss, g = loss_and_g(entropy=H.double(), entropy_coef=0.001)
    assert math.isclose(loss, -0.24 - 0.001 * 1.16, abs_tol=1e-7)  # mean H over valid tokens only: 1.16
    assert close(g, [[-1, 0, -0.9], [1.1, 0, 0]])  # the bonus does not act through logp
    # The bonus's gradient reaches the logits: two-token vocabulary, logits (ln 3, 0) -> p = (3/4, 1/4).
    weight = torch.tensor([[math.log(3.0)], [0.0]], requires_grad=True)  # logits = weight @ hidden, hidden = 1
    _, ent, _ = _TokenStats.apply(torch.ones(1, 1), weight, None, torch.tensor([0]), 1.0, 16, False, True)
    assert math.isclose(ent.item(), 0.562335, abs_tol=1e-5)
    (-0.001 * ent).sum().backward()
    assert close(weight.grad[:, 0], [2.05988e-4, -2.05988e-4], tol=1e-8)  # 0 would mean H was detached


def test_fork_tokens_quantile_and_loss():
    assert math.isclose(quantile(H[VALID], 0.8).item(), 1.68, abs_tol=1e-6)  # padding's 0 not included
    keep = fork_mask(H, MASK, top=0.2)
    assert keep.tolist() == [[False, True, False], [False, False, False]]
    loss, g = loss_and_g(select=Selection(keep=keep))
    assert math.isclose(loss, -0.24, abs_tol=1e-6) and close(g, torch.zeros(2, 3))  # the kept token is clipped
    loss, g = loss_and_g(eps_high=0.28, select=Selection(keep=keep))
    assert math.isclose(loss, -0.25, abs_tol=1e-6) and close(g, [[0, -1.25, 0], [0, 0, 0]])
    keep = fork_mask(H, MASK, top=0.4)  # tau = 1.24
    assert keep.tolist() == [[False, True, False], [True, False, False]]
    loss, g = loss_and_g(select=Selection(keep=keep))
    assert math.isclose(loss, -0.02, abs_tol=1e-6) and close(g, [[0, 0, 0], [1.1, 0, 0]])


def test_fork_quantile_excludes_padding():
    """With the padding's entropy 0 wrongly in the quantile tau would be 1.6 and (1,0) kept."""
    assert not fork_mask(H, MASK, top=0.2)[1, 0]
    assert fork_mask(H, torch.ones(2, 3), top=0.2)[1, 0]


def test_entropy_advantages():
    shaped, psi = entropy_advantages(ADV, H, alpha=0.4, kappa=2.0)
    assert close(psi[VALID], [0.16, 0.5, 0.32, 0.5, 0.4])
    assert close(shaped[VALID], [1.16, 1.5, 1.32, -0.5, -0.6])
    loss, g = loss_and_g(adv=shaped)
    assert math.isclose(loss, -0.6236, abs_tol=1e-6)
    assert close(g, [[-1.16, 0, -1.188], [0.55, 0, 0]])
    zero, psi0 = entropy_advantages(torch.zeros(2, 3), H, alpha=0.4, kappa=2.0)
    assert torch.equal(zero, torch.zeros(2, 3)) and torch.equal(psi0, torch.zeros(2, 3))  # A = 0 stays 0


def test_covariance_is_token_weighted():
    cov = token_covariance(LOGP, ADV, MASK)  # mean A = 0.2, mean logp = -1.1
    assert close(cov, [[0.8, -0.72, 0.64], [1.8, -0.72, 0]])


def clipped(eps_high=0.2, eps_low=0.2):
    a = ADV.double()
    return (-a * RATIO.clamp(1 - eps_low, 1 + eps_high) > -a * RATIO) & VALID


def test_clip_cov():
    cov = token_covariance(LOGP, ADV, MASK)
    gen = torch.Generator().manual_seed(0)
    drop = clip_cov_mask(cov, clipped(), MASK, ratio=2e-4, low=1.0, high=5.0, generator=gen)
    assert drop.tolist() == [[False, False, False], [True, False, False]]  # the only candidate
    loss, g = loss_and_g(select=Selection(drop=drop))
    assert math.isclose(loss, -0.46, abs_tol=1e-6) and close(g, [[-1, 0, -0.9], [0, 0, 0]])
    # the official recipe's PPO eps = 1: nothing clipped, same candidate
    drop = clip_cov_mask(cov, clipped(1.0, 1.0), MASK, ratio=2e-4, low=1.0, high=5.0, generator=gen)
    logp = LOGP.clone().requires_grad_()
    w = token_weights(MASK, torch.arange(2), "token_mean").double()
    loss, _ = ppo_loss(logp, OLD, ADV.double(), w, eps_low=0.999999, eps_high=1.0, dual_clip=10.0,
                       select=Selection(drop=drop))
    loss.backward()
    assert math.isclose(loss.item(), -0.48, abs_tol=1e-5)
    assert close((logp.grad * 5).masked_fill(~VALID, 0), [[-1, -1.25, -0.9], [0, 0.75, 0]])


def test_clip_cov_pick_is_seeded_and_counts_valid_tokens():
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(100, 50)
    cov = torch.full((100, 50), 2.0)
    picks = [clip_cov_mask(cov, torch.zeros(100, 50, dtype=torch.bool), mask, ratio=2e-3, low=1.0, high=5.0,
                           generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert int(picks[0].sum()) == 10  # floor(2e-3 * 5000)
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])
    none = clip_cov_mask(cov, torch.zeros(100, 50, dtype=torch.bool), mask, ratio=2e-3, low=3.0, high=5.0,
                         generator=g)
    assert not none.any()  # no candidate in the band: nothing dropped


def test_kl_cov():
    cov = token_covariance(LOGP, ADV, MASK)
    sel = kl_cov_mask(cov, MASK, ratio=2e-3)
    assert sel.tolist() == [[False, False, False], [True, False, False]]  # largest covariance, 1.8
    loss, g = loss_and_g(select=Selection(penalise=sel), kl_coef=1.0)
    assert math.isclose(loss, -0.240938, abs_tol=1e-6)
    assert close(g, [[-1, -1.25, -0.9], [2.1, 0.75, 0]])  # no PPO clip; +1 from |log-ratio| at (1,0)
    loss, g = loss_and_g(select=Selection(penalise=sel), kl_coef=0.1)
    assert math.isclose(loss, -0.258094, abs_tol=1e-6) and close(g[1, 0], 1.2)
    sel2 = kl_cov_mask(cov, MASK, ratio=0.4)  # k = 2 adds (0,0), where the log-ratio is 0: nothing changes
    assert sel2.tolist() == [[True, False, False], [True, False, False]]
    loss2, g2 = loss_and_g(select=Selection(penalise=sel2), kl_coef=1.0)
    assert math.isclose(loss2, -0.240938, abs_tol=1e-6) and close(g2, [[-1, -1.25, -0.9], [2.1, 0.75, 0]])


def test_kl_cov_is_inert_on_policy():
    """At ratio 1 (the first optimiser step of an RL step) |log-ratio| and its gradient are 0: plain PG."""
    logp = LOGP.clone().requires_grad_()
    w = token_weights(MASK, torch.arange(2), "token_mean").double()
    sel = torch.ones(2, 3, dtype=torch.bool)
    loss, _ = ppo_loss(logp, LOGP, ADV.double(), w, eps_low=0.2, eps_high=0.2, dual_clip=10.0,
                       select=Selection(penalise=sel))
    loss.backward()
    assert math.isclose(loss.item(), -0.2, abs_tol=1e-7)  # -(sum of A over valid tokens) / 5 = -(3 - 2) / 5
    assert close((logp.grad * 5).masked_fill(~VALID, 0), [[-1, -1, -1], [1, 1, 0]])


def test_w_reinforce():
    adv = w_reinforce_advantages(torch.tensor([True, False]), 0.1)
    assert adv.tolist() == pytest.approx([0.1, -1.0])
    loss, g = loss_and_g(adv=adv[:, None].expand(2, 3))
    assert math.isclose(loss, 0.318, abs_tol=1e-6)
    assert close(g, [[-0.1, 0, -0.09], [1.1, 0, 0]])


def test_single_advantage_unit_selects_nothing_by_covariance():
    """A unit whose valid tokens share one advantage (one response) has covariance 0 everywhere: Clip-Cov
    finds no candidate, so each response alone as its own micro-batch gives GRPO's loss."""
    total = 0.0
    for i in range(2):
        row = slice(i, i + 1)
        cov = token_covariance(LOGP[row], ADV[row], MASK[row])
        assert torch.equal(cov, torch.zeros_like(cov))
        drop = clip_cov_mask(cov, clipped()[row], MASK[row], ratio=2e-4, low=1.0, high=5.0,
                             generator=torch.Generator().manual_seed(0))
        assert not drop.any()
        w = MASK[row].double() / 5
        total += ppo_loss(LOGP[row], OLD[row], ADV[row].double(), w, eps_low=0.2, eps_high=0.2, dual_clip=10.0,
                          select=Selection(drop=drop))[0].item()
    assert math.isclose(total, -0.24, abs_tol=1e-6)


def test_every_switch_off_is_exactly_grpo():
    """The baseline keys at their defaults select nothing and change nothing: ppo_loss's value and gradient
    are bit-identical to the plain call."""
    cfg = load_config(["--config", "configs/grpo.yaml"])
    assert select_tokens(cfg.loss, LOGP, OLD, H, ADV, MASK, torch.Generator()) == Selection()
    plain = loss_and_g()
    switched_off = loss_and_g(select=Selection(), entropy=H.double(), entropy_coef=cfg.loss.entropy_coef)
    assert plain[0] == switched_off[0] and torch.equal(plain[1], switched_off[1])


@pytest.mark.parametrize("name, key, value", [
    ("clip_higher", "eps_high", 0.28), ("entropy_loss", "entropy_coef", 0.001), ("fork_tokens", "fork_top", 0.2),
    ("entropy_adv", "entropy_adv_alpha", 0.4), ("clip_cov", "clip_cov_ratio", 2e-4),
    ("kl_cov", "kl_cov_ratio", 2e-3), ("w_reinforce", "advantage", "w_reinforce")])
def test_each_baseline_config_is_grpo_plus_one_key(name, key, value):
    grpo = load_config(["--config", "configs/grpo.yaml"])
    cfg = load_config(["--config", f"configs/{name}.yaml"])
    assert getattr(cfg.loss, key) == value
    assert (grpo.loss.eps_low, grpo.loss.eps_high) == (0.2, 0.2) and grpo.allocation == "uniform"
    setattr(cfg.loss, key, getattr(grpo.loss, key))
    cfg.out_dir = grpo.out_dir
    assert cfg == grpo  # nothing else differs


def test_bad_baseline_values_stop_at_start():
    for bad in ("loss.fork_top=0", "loss.entropy_adv_kappa=1", "loss.clip_cov_ratio=-1", "loss.advantage=ppo"):
        with pytest.raises(ConfigError, match="loss"):
            load_config([bad])
    with pytest.raises(ConfigError, match="skip_zero_advantage = true cannot be used with loss.kl_cov_ratio"):
        load_config(["skip_zero_advantage=true", "loss.kl_cov_ratio=0.002"])


# ---------------------------------------------------------------------------------------- inside train.py

def run(config, args, out):
    import train
    from tests.helpers import merged, step_rows
    from tests.test_skip_zero_advantage import ROOT, SMALL  # the shipped start on a few half-solved prompts
    train.main(["--config", f"{ROOT}/configs/{config}", *merged(SMALL, ["steps=1", "mini_batches=2"], args,
                                                                 [f"out_dir={out}"])])
    return step_rows(out)[1]


@pytest.mark.parametrize("name, logged", [
    ("clip_higher", []), ("entropy_loss", []), ("fork_tokens", ["baseline/selected_frac"]),
    ("entropy_adv", ["baseline/psi_mean"]), ("clip_cov", ["baseline/selected_frac"]),
    ("kl_cov", ["baseline/selected_frac", "baseline/kl_abs_selected"]), ("w_reinforce", [])])
def test_each_baseline_trains_and_logs_its_quantity(name, logged, tmp_path):
    row = run(f"{name}.yaml", [], tmp_path)
    assert math.isfinite(row["loss"]) and row["grad_norm"] > 0
    assert all(k in row and math.isfinite(row[k]) for k in logged), logged
    assert not any(k.startswith("baseline/") for k in set(row) - set(logged))
    needs_every_row = name in ("entropy_loss", "fork_tokens", "clip_cov", "kl_cov")
    assert (row["rows_skipped"] == 0) if needs_every_row else True
    if name == "fork_tokens":
        assert 0.2 <= row["baseline/selected_frac"] < 0.3  # ties at the threshold are kept
    if name == "kl_cov":
        assert row["baseline/kl_abs_selected"] > 0  # the second mini-batch is off-policy
    if name == "w_reinforce":
        assert row["zero_adv_groups"] == 0  # no group normalisation: every group carries a gradient


def test_mini_batch_scope_does_not_depend_on_the_micro_batch_size(tmp_path):
    """select_scope: mini_batch selects over the whole mini-batch (a pre-pass), so splitting it into
    micro-batches of 2 or 8 rows changes the loss only by float rounding."""
    a = run("fork_tokens.yaml", ["loss.select_scope=mini_batch", "micro_batch_size=2"], tmp_path / "a")
    b = run("fork_tokens.yaml", ["loss.select_scope=mini_batch", "micro_batch_size=8"], tmp_path / "b")
    c = run("fork_tokens.yaml", ["micro_batch_size=2"], tmp_path / "c")  # micro scope: another selection
    assert a["baseline/selected_frac"] == b["baseline/selected_frac"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert c["baseline/selected_frac"] != a["baseline/selected_frac"] or c["loss"] != pytest.approx(a["loss"], rel=1e-5)
