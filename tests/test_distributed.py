# python -m pytest -q tests/test_distributed.py  — FSDP2 under torchrun (gloo, 2 processes) against 1 process.
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dynamo import distributed as dist
from tests.helpers import step_rows, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Easy levels and a warm-up long enough that most steps have real gradients.
SMALL = ["prompts_per_step=4", "rollouts_per_prompt=4", "eval_prompts=8", "eval_samples=1", "train_pool=12",
         "task_levels=[add1, add2]", "warmup.steps=120", "warmup.check_every=120", "rollout.max_new_tokens=24",
         "eval_every=0", "sample_every=0", "optim.lr=1e-3", "optim.warmup_steps=1"]
# What makes a step independent of how its rollouts are split over ranks: the allocator works within a
# rank, so only a uniform allocation is the same for 1 and 2 ranks, and both token factors need their
# normalisers over the whole step (the official micro-batch scope sees a different micro-batch per rank).
SPLIT_FREE = ["allocation=uniform", "modulation.scope=step"]
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")


def run(args, cwd, launcher=(sys.executable,)):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [*launcher, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs/default.yaml"),
           *SMALL, *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res.stdout


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """4 steps in one plain process; its warm-up cache is shared by the runs below."""
    tmp = tmp_path_factory.mktemp("one")
    cache = f"warmup.cache_dir={tmp / 'cache'}"
    run([cache, *SPLIT_FREE, "steps=4", f"out_dir={tmp / 'out'}"], tmp)
    return tmp, cache


def test_two_ranks_match_one_process(one_process, tmp_path):
    tmp, cache = one_process
    out = run([cache, *SPLIT_FREE, "steps=4", f"out_dir={tmp_path / 'out'}"], tmp_path, TORCHRUN)
    assert out.count("step    4 | reward") == 1  # rank 0 alone prints
    a, b = step_rows(tmp / "out"), step_rows(tmp_path / "out")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert sum(a[s]["grad_norm"] > 0 for s in a) >= 2, "the comparison needs real updates"
    for s in a:  # the same rollouts (row seeds), so the same rewards and lengths; the loss to float rounding
        for key in ("reward", "accuracy", "response_length", "zero_adv_groups", "truncated"):
            assert a[s][key] == b[s][key], (s, key)
        for key in ("loss", "grad_norm", "entropy", "approx_kl"):
            assert abs(a[s][key] - b[s][key]) <= 1e-4 * max(1.0, abs(a[s][key])), (s, key, a[s][key], b[s][key])
    wa, wb = weights(tmp / "out" / "final"), weights(tmp_path / "out" / "final")
    assert sorted(wa) == sorted(wb)  # tied embeddings stored once, as a plain save does
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    start = weights(next((tmp / "cache").iterdir()))
    assert max((wa[k] - start[k]).abs().max().item() for k in wa) > 1e-3  # and the weights did move


def test_two_rank_resume_is_exact(one_process, tmp_path):
    tmp, cache = one_process
    full, split = tmp_path / "full", tmp_path / "split"
    run([cache, "steps=4", f"out_dir={full}"], tmp_path, TORCHRUN)
    run([cache, "steps=2", f"out_dir={split}"], tmp_path, TORCHRUN)
    out = run([cache, "steps=4", f"out_dir={split}", "resume=auto"], tmp_path, TORCHRUN)
    assert "resumed from" in out and "step-000002" in out
    a, b = step_rows(full), step_rows(split)
    assert sorted(b) == [1, 2, 3, 4] and any(a[s]["grad_norm"] > 0 for s in (3, 4))
    for s in (3, 4):
        assert a[s] == b[s], s
    wa, wb = weights(full / "final"), weights(split / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise: same world size, deterministic CPU
    ckpt = split / "checkpoints" / "step-000002"
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert any(name.endswith(".distcp") for name in os.listdir(ckpt / "optimizer"))  # sharded optimiser state
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(ckpt).num_parameters() > 0  # the gathered weights load anywhere


def test_dynamo_allocation_with_every_memory_option_under_two_ranks(one_process, tmp_path):
    tmp, cache = one_process
    # rollouts_per_prompt 6 in [4, 8]: the per-rank allocation really varies the group sizes, and ranks must
    # still run the same number of micro-batches and generate steps (a mismatch would hang, not pass)
    out = run([cache, "steps=4", "prompts_per_step=8", "train_pool=16", "rollouts_per_prompt=6", "allocator.n_max=8",
               "micro_batch_size=5",
               "checkpoint_every=2", "activation_checkpointing=true", "parallel.unshard_for_rollout=true",
               "parallel.mixed_precision=bf16", "eval_every=2", f"out_dir={tmp_path / 'out'}"], tmp_path, TORCHRUN)
    rows = step_rows(tmp_path / "out")
    assert sorted(rows) == [1, 2, 3, 4]
    assert any(r["alloc/count_max"] > r["alloc/count_min"] for r in rows.values())  # unequal groups
    assert "eval step    4" in out and (tmp_path / "out" / "checkpoints" / "step-000004").exists()


def test_without_a_process_group_nothing_is_sharded():
    model, _ = tiny()
    assert not dist.active() and not dist.is_sharded(model)
    assert dist.run_as_forward(model, lambda a, b=0: a + b, 1, b=2) == 3
    with dist.gathered(model):  # a no-op without FSDP
        pass


def test_random_shape_model_trains_under_torchrun_with_one_process(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from random_model import SHAPES, build
    assert SHAPES["qwen2.5-math-1.5b"]["vocab_size"] == 151936
    small = dict(SHAPES["qwen2.5-math-1.5b"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=5000)  # the same code, a CPU-sized shape
    build(small, str(tmp_path / "model"))
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1")
    out = run([f"model={tmp_path / 'model'}", "steps=1", "rollout.max_new_tokens=8", "eval_samples=1",
               f"out_dir={tmp_path / 'out'}"], tmp_path, launcher)
    row = step_rows(tmp_path / "out")[1]
    assert row["response_length"] > 0 and "time/generate" in open(tmp_path / "out" / "metrics.jsonl").read()
    assert "step    1 | reward" in out
