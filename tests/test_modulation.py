# python -m pytest -q tests/test_modulation.py
"""Token-level modulation (docs/ALGORITHM.md §5): beta_comp (dynamo/modulator.py), Xi and beta_stab
(dynamo/stabilizer.py)."""
import math

import pytest
import torch

from dynamo.modulator import compensation
from dynamo.stabilizer import (
    entropy_change,
    expected_u_from_logits,
    predicted_entropy_change,
    stabilization,
)

EPS = dict(eps_low=0.2, eps_high=0.28)  # the official run's clip range (§6)
MODES = ["head", "exact", "v0"]


def random_batch(seed, n=4, t=6, v=11, pad=True):
    """Random micro-batch with right padding, a mix of A > 0, A < 0, A = 0, and ratios in and out of the clip range."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=g) * 2.0  # (N, T, V)
    logp_all = torch.log_softmax(logits, -1)  # (N, T, V)
    tokens = torch.randint(0, v, (n, t), generator=g)  # (N, T)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (N, T)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N, T)
    old_logp = logp + 0.4 * torch.randn(n, t, generator=g)  # (N, T)  r spread around 1
    adv = torch.tensor([1.0, -1.0, 0.0, 0.5])[:n] if n <= 4 else torch.randn(n, generator=g)  # (N,)
    lengths = torch.randint(1, t + 1, (n,), generator=g) if pad else torch.full((n,), t)  # (N,)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).float()  # (N, T)
    eu = expected_u_from_logits(logits)  # (N, T)
    return dict(logp=logp, old_logp=old_logp, entropy=entropy, adv=adv, mask=mask, expected_u=eu)


def factors(b, mode="head", **stab_kw):
    """beta_comp, Xi, beta_stab for a batch dict from random_batch."""
    comp = compensation(b["entropy"], b["adv"], b["mask"])
    xi = entropy_change(
        b["logp"], b["old_logp"], b["entropy"], b["adv"], b["mask"], **EPS, mode=mode, expected_u=b["expected_u"]
    )
    return comp, xi, stabilization(xi, b["mask"], **stab_kw)


# ---------------------------------------------------------------------------- hand-computed examples


def test_compensation_hand_example():
    entropy = torch.tensor([[0.5, 1.0, 2.0], [1.5, 7.0, 0.1]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    # valid entropies 0.5, 1.0, 2.0, 1.5 -> H_min 0.5, H_max 2.0 (the padded 7.0 and 0.1 must not count)
    # row 0 (A > 0): 1 + 0.2 (2 - H) / 1.5 -> 1.2, 1 + 0.2 / 1.5 = 1.1333, 1.0
    # row 1 (A < 0): 1 everywhere; padding 1
    expected = torch.tensor([[1.2, 1.0 + 0.2 / 1.5, 1.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(compensation(entropy, adv, mask), expected, atol=1e-6, rtol=0)
    # decay5 preset: alpha 0.4 -> 1.4 at the lowest-entropy token
    assert compensation(entropy, adv, mask, alpha=0.4)[0, 0].item() == pytest.approx(1.4, abs=1e-6)


def hand_batch():
    # row 0: A = +1, logp == old_logp (r = 1, I = 1, xi = 1); pi = 0.5, 0.25, 1.0; H = 1.0, 1.5, 0.2
    #   u = pi (log pi + H) = 0.5 (0.306853) = 0.153426, 0.25 (0.113706) = 0.028426, 1.0 (0.2) = 0.2
    #   u-bar = 0.381853 / 3 = 0.127284 -> Xi = |u - u-bar| = 0.026142, 0.098858, 0.072716
    # row 1: A = -1, pi = 0.8, 0.5 (+ padding), r = 0.9 (>= 0.8: I = 1, xi = -0.9) and r = 0.7 (< 0.8: I = 0)
    #   u = 0.8 (0.776856) = 0.621485, 0.5 (-0.193147) = -0.096574; u-bar = 0.262456
    #   Xi = |0.9 (0.621485 - 0.262456)| = 0.323126, 0 (clipped token), 0 (padding)
    logp = torch.tensor([[0.5, 0.25, 1.0], [0.8, 0.5, 0.3]]).log()
    old_logp = logp - torch.tensor([[0.0, 0.0, 0.0], [math.log(0.9), math.log(0.7), 5.0]])
    entropy = torch.tensor([[1.0, 1.5, 0.2], [1.0, 0.5, 3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    return logp, old_logp, entropy, adv, mask


def test_entropy_change_head_hand_example():
    xi = entropy_change(*hand_batch(), **EPS)
    expected = torch.tensor([[0.0261421, 0.0988579, 0.0727157], [0.3231264, 0.0, 0.0]])
    torch.testing.assert_close(xi, expected, atol=1e-6, rtol=0)


def test_entropy_change_v0_hand_example():
    # v0: one value per sequence, |sum_t pi^2 (log pi + H) xi|
    #   row 0: 0.25 (0.306853) + 0.0625 (0.113706) + 1 (0.2) = 0.076713 + 0.007107 + 0.2 = 0.283820
    #   row 1: |0.64 (0.776856) (-0.9) + 0| = 0.447469 on both valid tokens, 0 at padding
    xi = entropy_change(*hand_batch(), **EPS, mode="v0")
    expected = torch.tensor([[0.2838198] * 3, [0.4474693, 0.4474693, 0.0]])
    torch.testing.assert_close(xi, expected, atol=1e-6, rtol=0)


def test_stabilization_hand_example():
    xi = torch.tensor([[0.0, 0.5, 1.0], [0.99, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # max over valid = 1.0 (the padded 2.0 must not count) -> x = 0, 0.5, 1, 0.99
    # beta = 0.6 + 0.4 / (1 + exp(50 (x - 0.99))):
    #   x = 0    -> 0.6 + 0.4 / (1 + e^-49.5) = 1.0
    #   x = 0.5  -> 0.6 + 0.4 / (1 + e^-24.5) = 1.0 - 9e-12
    #   x = 1    -> 0.6 + 0.4 / (1 + e^0.5) = 0.6 + 0.4 / 2.648721 = 0.751016 (§5.2: "x = 1 gives 0.751")
    #   x = 0.99 -> 0.6 + 0.4 / 2 = 0.8;  padding -> 1
    expected = torch.tensor([[1.0, 1.0, 0.7510163], [0.8, 1.0, 1.0]])
    torch.testing.assert_close(stabilization(xi, mask), expected, atol=1e-6, rtol=0)
    # decay5 preset (tau 0.9): x = 0.9 -> 0.8; x = 1 -> 0.6 + 0.4 / (1 + e^5) = 0.6 + 0.4 / 149.413 = 0.602677
    xi5 = torch.tensor([[0.9, 1.0]])
    torch.testing.assert_close(
        stabilization(xi5, torch.ones(1, 2), tau=0.9), torch.tensor([[0.8, 0.6026772]]), atol=1e-6, rtol=0
    )


# ---------------------------------------------------------------------------- the official formulas, as loops


def loop_reference(b, mode, alpha=0.2, lambda_min=0.6, gamma=50.0, tau=0.99):
    """decay6_linearnorm (§5) written token by token in Python floats: A * beta_comp * beta_stab."""
    keys = ("logp", "old_logp", "entropy", "adv", "mask", "expected_u")
    logp, old, ent, adv, mask, eu = (b[k].tolist() for k in keys)
    n, t = len(logp), len(logp[0])
    valid = [(i, j) for i in range(n) for j in range(t) if mask[i][j]]
    h_min = min(ent[i][j] for i, j in valid)
    h_max = max(ent[i][j] for i, j in valid)
    xi_w, u = {}, {}
    for i, j in valid:
        r = math.exp(logp[i][j] - old[i][j])
        ind = (adv[i] > 0 and r <= 1 + EPS["eps_high"]) or (adv[i] < 0 and r >= 1 - EPS["eps_low"])
        xi_w[i, j] = r * adv[i] if ind else 0.0
        u[i, j] = math.exp(logp[i][j]) * (logp[i][j] + ent[i][j])
    big_xi = {}
    for i in range(n):
        js = [j for j in range(t) if mask[i][j]]
        if mode == "v0":
            s = sum(math.exp(2 * logp[i][j]) * (logp[i][j] + ent[i][j]) * xi_w[i, j] for j in js)
            big_xi.update({(i, j): abs(s) for j in js})
            continue
        ubar = sum(u[i, j] for j in js) / len(js) if js else 0.0
        for j in js:
            base = ubar if mode == "head" else eu[i][j]
            big_xi[i, j] = abs(-xi_w[i, j] * (u[i, j] - base))
    m = max(big_xi.values())
    out = [[0.0] * t for _ in range(n)]
    for i, j in valid:
        comp = 1 + alpha * (h_max - ent[i][j]) / (h_max - h_min + 1e-8) if adv[i] > 0 else 1.0
        x = big_xi[i, j] / (m + 1e-8)
        stab = lambda_min + (1 - lambda_min) / (1 + math.exp(gamma * (x - tau)))
        out[i][j] = adv[i] * comp * stab
    return torch.tensor(out)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference(mode, seed):
    b = random_batch(seed)
    comp, _, stab = factors(b, mode=mode)
    got = b["adv"].unsqueeze(-1) * comp * stab * b["mask"]  # (N, T)
    torch.testing.assert_close(got, loop_reference(b, mode), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_argmax_token_is_always_damped(mode):
    # §5 note: the token with the largest Xi has x = 1/(1 + 1e-8/max) ~ 1 -> beta_stab 0.751.
    for seed in range(4):
        b = random_batch(seed)
        _, xi, stab = factors(b, mode=mode)
        m = xi.max()
        assert m > 0
        x = m / (m + 1e-8)  # 1 up to the normaliser's 1e-8 (visible when max Xi is ~1e-3, as in small v0 batches)
        expected = 0.6 + 0.4 / (1 + math.exp(50 * (x.item() - 0.99)))  # 0.751 at x = 1
        assert stab[b["mask"].bool()].min().item() == pytest.approx(expected, abs=1e-6)
        assert expected == pytest.approx(0.751, abs=1e-4)


# ---------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("mode", MODES)
def test_padding_never_matters(mode):
    b = random_batch(3)
    pad = ~b["mask"].bool()  # (N, T)
    assert pad.any()
    g = torch.Generator().manual_seed(7)
    junk = dict(b)
    for k in ("logp", "old_logp", "entropy", "expected_u"):
        noise = 50.0 * torch.randn(b[k].shape, generator=g)  # (N, T)
        junk[k] = torch.where(pad, b[k] + noise, b[k])  # (N, T)
    for a, c in zip(factors(b, mode=mode), factors(junk, mode=mode)):
        torch.testing.assert_close(a, c, atol=0, rtol=0)
    comp, xi, stab = factors(junk, mode=mode)
    assert (comp[pad] == 1).all() and (xi[pad] == 0).all() and (stab[pad] == 1).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_valid", [0, 1])
def test_one_or_no_valid_token_is_finite(mode, n_valid):
    b = random_batch(4)
    b["mask"] = torch.zeros_like(b["mask"])
    b["mask"][0, 0] = float(n_valid)
    comp, xi, stab = factors(b, mode=mode)
    for f in (comp, xi, stab):
        assert torch.isfinite(f).all()
    # one token: H_max == H_min -> beta_comp 1. In head mode its Xi is 0 (u equals its own sequence mean),
    # so beta_stab is 1; in exact / v0 it is its own max -> 0.751. No token: all ones.
    assert (comp == 1).all()
    assert ((stab >= 0.6) & (stab <= 1)).all()
    if mode == "head" or n_valid == 0:
        assert (xi == 0).all() and (stab == 1).all()


@pytest.mark.parametrize("mode", MODES)
def test_signs_never_change(mode):
    for seed in range(5):
        b = random_batch(seed, n=8, t=7)
        comp, xi, stab = factors(b, mode=mode)
        assert (xi >= 0).all()
        assert ((comp >= 1) & (comp <= 1.2 + 1e-6)).all() and ((stab >= 0.6) & (stab <= 1)).all()
        adv = b["adv"].unsqueeze(-1).expand_as(comp)  # (N, T)
        assert torch.equal(torch.sign(adv * comp * stab), torch.sign(adv))


@pytest.mark.parametrize("mode", MODES)
def test_zero_advantages_change_nothing(mode):
    b = random_batch(5)
    b["adv"] = torch.zeros(4)
    comp, xi, stab = factors(b, mode=mode)
    assert (comp == 1).all() and (xi == 0).all()
    torch.testing.assert_close(stab, torch.ones_like(stab))  # x = 0 -> 1 - 0.4 sigmoid(-49.5) = 1
    assert (b["adv"].unsqueeze(-1) * comp * stab == 0).all()


def test_per_sequence_and_per_token_advantages_agree():
    b = random_batch(6)
    b_tok = dict(b, adv=b["adv"].unsqueeze(-1).expand(4, 6).clone())
    for a, c in zip(factors(b), factors(b_tok)):
        torch.testing.assert_close(a, c, atol=0, rtol=0)


def test_step_scope_normaliser():
    b = random_batch(7)
    _, xi, stab = factors(b)
    torch.testing.assert_close(stabilization(xi, b["mask"], xi_max=xi.max()), stab)
    # a larger step-wide max (another micro-batch held the arg-max): nothing here is damped much
    wide = stabilization(xi, b["mask"], xi_max=torch.tensor(10.0) * xi.max())
    assert wide.min() > 0.999
    assert stabilization(xi, b["mask"], xi_max=float(10 * xi.max())).equal(wide)


def test_bf16_inputs_give_float32_detached_outputs():
    b = random_batch(8)
    bf = {k: v.to(torch.bfloat16).requires_grad_(k in ("logp", "entropy")) for k, v in b.items()}
    bf["mask"] = b["mask"]
    comp, xi, stab = factors(bf)
    for f in (comp, xi, stab):
        assert f.dtype == torch.float32 and not f.requires_grad
    dh = predicted_entropy_change(
        bf["logp"], bf["old_logp"], bf["entropy"], bf["adv"], bf["mask"], **EPS
    )
    assert dh.dtype == torch.float32 and not dh.requires_grad


def test_bad_mode_arguments():
    args = hand_batch()
    with pytest.raises(ValueError):
        entropy_change(*args, **EPS, mode="exact")  # needs expected_u
    with pytest.raises(ValueError):
        entropy_change(*args, **EPS, mode="nope")


# ---------------------------------------------------------------------------- exact mode against the true softmax


def entropy64(z):
    logp = torch.log_softmax(z, -1)  # (V,)
    return -(logp.exp() * logp).sum()


@pytest.mark.parametrize("seed", range(8))
def test_exact_mode_predicts_true_entropy_change(seed):
    # One position, logits z (V,), sampled token a, step dz = eta xi (e_a - pi) (§1).
    # True dH = H(z + dz) - H(z) in float64; first order: -eta xi [pi_a L_a - sum_v pi_v^2 L_v].
    g = torch.Generator().manual_seed(seed)
    v = int(torch.randint(10, 51, (1,), generator=g))
    z = torch.randn(v, generator=g, dtype=torch.float64) * 2.0  # (V,)
    pi = torch.softmax(z, -1)  # (V,)
    a = int(torch.multinomial(pi, 1, generator=g))
    xi_w = float(torch.randn(1, generator=g, dtype=torch.float64))  # xi = r A with r = 1: A = xi
    eta = 1e-4
    dz = eta * xi_w * (torch.nn.functional.one_hot(torch.tensor(a), v).double() - pi)  # (V,)
    true_dh = (entropy64(z + dz) - entropy64(z)).item()

    logp = torch.log_softmax(z, -1)[a].reshape(1, 1)  # (N=1, T=1)
    ent = entropy64(z).reshape(1, 1)  # (1, 1)
    eu = expected_u_from_logits(z.reshape(1, 1, v))  # (1, 1)
    mask = torch.ones(1, 1)
    pred = eta * predicted_entropy_change(
        logp, logp, ent, torch.tensor([xi_w], dtype=torch.float64), mask, **EPS, mode="exact", expected_u=eu
    ).item()
    assert abs(pred) > 1e-9  # a non-degenerate case
    assert abs(pred - true_dh) <= 1e-3 * abs(true_dh)
    xi_abs = entropy_change(
        logp, logp, ent, torch.tensor([xi_w], dtype=torch.float64), mask, **EPS, mode="exact", expected_u=eu
    ).item()
    assert eta * xi_abs == pytest.approx(abs(true_dh), rel=1e-3)


def test_expected_u_from_logits_matches_definition():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 3, 13, generator=g, dtype=torch.float64)  # (N, T, V)
    eu = expected_u_from_logits(logits)  # (N, T)
    assert eu.shape == (2, 3) and eu.dtype == torch.float64
    for i in range(2):
        for j in range(3):
            p = torch.softmax(logits[i, j], -1).tolist()
            h = -sum(q * math.log(q) for q in p)
            assert eu[i, j].item() == pytest.approx(sum(q * q * (math.log(q) + h) for q in p), rel=1e-12)
    assert expected_u_from_logits(logits.to(torch.bfloat16)).dtype == torch.float32
