# python -m pytest -q tests/test_skip_zero_advantage.py  — rows whose advantage is 0 left out of the update.
import os

import pytest
import torch
from safetensors.torch import load_file

import train
from dynamo.config import load_config
from dynamo.objective import skips_zero_advantage
from dynamo.run_state import zero_missing_gradients
from tests.helpers import SHIPPED_START, merged, require_gradients, step_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# From the shipped start on the levels it half solves: every step has groups with and without a gradient.
SMALL = ["prompts_per_step=4", "rollouts_per_prompt=4", "eval_prompts=8", "eval_samples=1", "train_pool=12",
         f"model={SHIPPED_START}", "task_levels=[add2, add3]", "rollout.max_new_tokens=40", "eval_every=0",
         "sample_every=0", "optim.lr=1e-4", "optim.warmup_steps=1", "steps=3", "micro_batch_size=4"]


def run(config, args, out):
    train.main(["--config", os.path.join(ROOT, "configs", config), *merged(SMALL, args, [f"out_dir={out}"])])
    return step_rows(out), load_file(os.path.join(out, "final", "model.safetensors"))


@pytest.mark.parametrize("config, extra", [("grpo.yaml", []), ("default.yaml", ["modulation.scope=step"]),
                                           ("grpo.yaml", ["mini_batches=2", "modulation.scope=step"])],
                         ids=["grpo", "dynamo-step-scope", "grpo-two-mini-batches"])
def test_skipping_leaves_the_update_unchanged_where_exact(config, extra, tmp_path):
    a, wa = run(config, [*extra, "skip_zero_advantage=false"], tmp_path / "all")
    b, wb = run(config, [*extra, "skip_zero_advantage=true"], tmp_path / "skip")
    require_gradients(a, [1, 2, 3], least=2)
    # precondition: steps that both update and skip rows, else the comparison proves nothing
    mixed = [s for s in (1, 2, 3) if b[s]["rows_skipped"] > 0 and b[s]["grad_norm"] > 0]
    assert mixed, f"no step skipped rows and updated others: {[b[s]['rows_skipped'] for s in (1, 2, 3)]}"
    assert all(a[s]["rows_skipped"] == 0 for s in (1, 2, 3))
    # entropy is logged over the rows of the old-log-prob pass: all of them only where the step needs them all
    same = ("reward", "accuracy", "zero_adv_groups", "response_length") + (("entropy",) if extra else ())
    for s in (1, 2, 3):
        for key in same:
            assert a[s][key] == pytest.approx(b[s][key], rel=1e-6), (s, key)
        for key in ("loss", "grad_norm"):  # the same sum, over fewer (zero) terms: float rounding only
            assert a[s][key] == pytest.approx(b[s][key], rel=1e-4, abs=1e-7), (s, key)
    # Adam divides by the root of the second moment, which turns rounding differences of near-zero gradient
    # entries into weight differences of up to a few 1e-6 over several optimiser steps (as between 1 and 2 ranks)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 2e-5
    start = load_file(os.path.join(SHIPPED_START, "model.safetensors"))
    assert max((wa[k] - start[k]).abs().max().item() for k in wa) > 1e-4  # and the weights did move


def test_auto_skips_only_where_exact():
    def skips(*args):
        return skips_zero_advantage(load_config(["--config", os.path.join(ROOT, "configs", args[0]), *args[1:]]))
    assert skips("grpo.yaml") and skips("uniform_allocation.yaml", "modulation.scope=step")
    assert not skips("default.yaml")  # micro-batch-scope modulation: the factors' normalisers would change
    assert skips("default.yaml", "skip_zero_advantage=true") and not skips("grpo.yaml", "skip_zero_advantage=false")


def test_forced_skip_under_micro_batch_scope_runs(tmp_path):
    """The documented difference: the factors' normalisers cover the updated rows of each micro-batch."""
    rows, _ = run("default.yaml", ["skip_zero_advantage=true", "steps=2"], tmp_path / "out")
    assert any(rows[s]["rows_skipped"] > 0 for s in (1, 2))
    assert all(torch.isfinite(torch.tensor(rows[s]["loss"])) for s in (1, 2))


def test_a_mini_batch_with_no_gradient_still_steps_adamw():
    """With every row skipped AdamW must still see zero gradients (weight decay, momentum), as it does
    without skipping; a parameter left with grad None would be skipped by the optimiser."""
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    before = model.weight.detach().clone()
    opt.zero_grad(set_to_none=True)  # no backward ran
    zero_missing_gradients(model)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.step()
    assert torch.allclose(model.weight.detach(), before * (1 - 0.1 * 0.5))  # decayed, as with a zero gradient
