# python -m pytest -q tests/test_devices.py  — the step's tensor functions with their data on another device than the CPU indices.
"""On a GPU, the step's float tensors live on the device while prompt indices, row indices and constants are made
on the CPU; an op that mixes them raises there and nowhere on a CPU-only machine. The meta device raises the same
device checks as CUDA, so every function runs here with its float inputs on `meta` and its index tensors on the
CPU. Meta tensors hold no values, so a function that needs one (.item(), a boolean mask) stops there: such a stop
is allowed, any error about devices is not."""
import re

import pytest
import torch

from dynamo import baselines, grpo, modulator, stabilizer
from dynamo.config import load_config
from dynamo.logprobs import _TokenStats

META = torch.device("meta")
N, T, V, D = 6, 5, 11, 4
G = torch.Generator().manual_seed(0)
MASK = (torch.rand(N, T, generator=G) > 0.2).float()
PIDX = torch.tensor([0, 0, 0, 1, 1, 1])  # on the CPU, as the loop keeps it
LOGP, ENT = -torch.rand(N, T, generator=G), torch.rand(N, T, generator=G)
ADV = torch.randn(N, 1, generator=G).expand(N, T)
DATA_NEEDED = re.compile(r"cannot be called on meta tensors|register_meta|data-dependent|nonzero")


def m(x):
    return x.to(META)


def runs_on_meta(fn):
    """fn() either finishes or stops where it needs a value; it never mixes devices."""
    try:
        fn()
        return True
    except (RuntimeError, NotImplementedError) as e:
        assert "device" not in str(e).lower(), str(e).splitlines()[0]
        assert DATA_NEEDED.search(str(e)), str(e).splitlines()[0]
        return False


CFG = load_config(["modulation.compensation=true", "modulation.stabilization=true", "modulation.scope=step",
                   "modulation.estimate=exact"])
CASES = {
    "grpo.group_advantages": lambda: grpo.group_advantages(m(torch.randn(N)), PIDX),
    "grpo.token_weights token_mean": lambda: grpo.token_weights(m(MASK), PIDX, "token_mean"),
    "grpo.token_weights prompt_mean": lambda: grpo.token_weights(m(MASK), PIDX, "prompt_mean"),
    "grpo.ppo_loss": lambda: grpo.ppo_loss(m(LOGP), m(LOGP + 0.1), m(ADV), m(MASK), eps_low=0.2, eps_high=0.28,
                                           dual_clip=10.0, entropy=m(ENT), entropy_coef=0.01),
    "modulator.compensation": lambda: modulator.compensation(m(ENT), m(ADV), m(MASK), alpha=0.2),
    "modulator.step_normalisers": lambda: modulator.step_normalisers(CFG, m(LOGP), m(ENT), m(ADV), m(MASK),
                                                                     m(ENT)),
    "modulator.modulate": lambda: modulator.modulate(CFG, {"logp": m(LOGP), "entropy": m(ENT), "expected_u": m(ENT)},
                                                     m(LOGP), m(ADV), m(MASK), {}, {"comp": [], "stab": []}),
    "modulator.factor_stats": lambda: modulator.factor_stats({"comp": [m(torch.rand(10))], "stab": [m(torch.rand(9))]}),
    "stabilizer.entropy_change": lambda: stabilizer.entropy_change(m(LOGP), m(LOGP + 0.1), m(ENT), m(ADV), m(MASK),
                                                                    eps_low=0.2, eps_high=0.28, mode="head"),
    "stabilizer.stabilization": lambda: stabilizer.stabilization(m(ENT), m(MASK), lambda_min=0.6, gamma=50.0, tau=0.99),
    "baselines.w_reinforce_advantages": lambda: baselines.w_reinforce_advantages(m(torch.tensor([True, False])), 0.1),
    "baselines.entropy_advantages": lambda: baselines.entropy_advantages(m(ADV), m(ENT), alpha=0.4, kappa=2.0),
    "baselines.quantile": lambda: baselines.quantile(m(torch.rand(10)), 0.3),
    "baselines.fork_mask": lambda: baselines.fork_mask(m(ENT), m(MASK), top=0.2),
    "baselines.token_covariance": lambda: baselines.token_covariance(m(LOGP), m(ADV), m(MASK)),
    "baselines.clip_cov_mask": lambda: baselines.clip_cov_mask(m(ENT), m(MASK.bool()), m(MASK), ratio=0.2, low=-1.0,
                                                               high=5.0, generator=torch.Generator()),
    "baselines.kl_cov_mask": lambda: baselines.kl_cov_mask(m(ENT), m(MASK), ratio=0.2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_function_of_the_step_mixes_devices(name):
    runs_on_meta(CASES[name])


def test_the_log_prob_head_runs_forward_and_backward_on_the_device():
    """The chunked LM head (logprobs._TokenStats) in full: forward and backward run on meta to the end."""
    h = m(torch.randn(N * T, D)).requires_grad_(True)
    w = m(torch.randn(V, D)).requires_grad_(True)
    targets = m(torch.randint(0, V, (N * T,)))
    for expected_u, entropy_grad in ((False, False), (True, True)):
        logp, entropy, eu = _TokenStats.apply(h, w, None, targets, 1.0, 8, expected_u, entropy_grad)
        loss = logp.sum() + (entropy.sum() if entropy_grad else 0)
        gh, gw = torch.autograd.grad(loss, (h, w))
        assert gh.device == gw.device == META and gh.shape == h.shape and gw.shape == w.shape


def test_the_probe_catches_a_device_mix():
    """The check is not vacuous: torch.quantile with q on the CPU (the bug it was written for) is caught."""
    with pytest.raises(AssertionError, match="device"):
        runs_on_meta(lambda: torch.quantile(m(torch.rand(10)), torch.tensor([0.5])))
