# python -m pytest -q tests/test_distributed.py  — FSDP2 under torchrun (gloo, 2 processes) against 1 process.
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dynamo import distributed as dist
from tests.helpers import SHIPPED_START, assert_logged_as_recorded, merged, require_gradients, step_rows, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# From the shipped warmed start on the two levels it half solves (add2, add3): mixed rewards, real gradients,
# on every machine. The one-process fixture checks that precondition.
SMALL = ["prompts_per_step=4", "rollouts_per_prompt=4", "eval_prompts=8", "eval_samples=1", "train_pool=12",
         f"model={SHIPPED_START}", "task_levels=[add2, add3]", "rollout.max_new_tokens=40",
         "eval_every=0", "sample_every=0", "optim.lr=1e-4", "optim.warmup_steps=1"]
# What makes a step independent of how its rollouts are split over ranks: the allocator works within a
# rank, so only a uniform allocation is the same for 1 and 2 ranks, and both token factors need their
# normalisers over the whole step (the official micro-batch scope sees a different micro-batch per rank).
SPLIT_FREE = ["allocation=uniform", "modulation.scope=step", "skip_zero_advantage=false"]
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")


def run(args, cwd, launcher=(sys.executable,)):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [*launcher, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs/default.yaml"),
           *merged(SMALL, args)]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res.stdout


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """4 steps in one plain process, the reference for the 2-rank runs; at least 3 of them must update."""
    tmp = tmp_path_factory.mktemp("one")
    run([*SPLIT_FREE, "steps=4", f"out_dir={tmp / 'out'}"], tmp)
    require_gradients(step_rows(tmp / "out"), [1, 2, 3, 4], least=3)
    return tmp


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The same 4 steps under torchrun with 2 processes (FSDP2): compared with one process, and resumed."""
    tmp = tmp_path_factory.mktemp("two")
    out = run([*SPLIT_FREE, "steps=4", f"out_dir={tmp / 'out'}"], tmp, TORCHRUN)
    assert out.count("step    4 | reward") == 1  # rank 0 alone prints
    return tmp / "out"


def test_two_ranks_match_one_process(one_process, two_ranks):
    a, b = step_rows(one_process / "out"), step_rows(two_ranks)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:  # the same rollouts (row seeds), so the same rewards and lengths; the loss to float rounding
        for key in ("reward", "accuracy", "response_length", "zero_adv_groups", "truncated"):
            assert a[s][key] == b[s][key], (s, key)
        for key in ("loss", "grad_norm", "entropy", "approx_kl"):
            assert abs(a[s][key] - b[s][key]) <= 1e-4 * max(1.0, abs(a[s][key])), (s, key, a[s][key], b[s][key])
    wa, wb = weights(one_process / "out" / "final"), weights(two_ranks / "final")
    assert sorted(wa) == sorted(wb)  # tied embeddings stored once, as a plain save does
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 2e-5
    start = weights(SHIPPED_START)  # and the weights did move, by far more than that (Adam: about lr a step)
    assert max((wa[k] - start[k]).abs().max().item() for k in wa) > 2e-4


def test_two_ranks_skipping_zero_advantage_rows(one_process, tmp_path):
    """Under FSDP2 each forward is collective: a rank with fewer rows to update fills its micro-batches
    up to the other rank's count with rows whose contribution is 0. Same result as updating every row."""
    out = run([*SPLIT_FREE, "skip_zero_advantage=true", "micro_batch_size=2", "steps=4",
               f"out_dir={tmp_path / 'out'}"], tmp_path, TORCHRUN)
    a, b = step_rows(one_process / "out"), step_rows(tmp_path / "out")
    assert any(b[s]["rows_skipped"] > 0 and b[s]["grad_norm"] > 0 for s in b), "precondition: no step skipped rows"
    for s in a:
        for key in ("reward", "accuracy", "response_length", "zero_adv_groups"):
            assert a[s][key] == b[s][key], (s, key)
        for key in ("loss", "grad_norm", "entropy"):
            assert abs(a[s][key] - b[s][key]) <= 1e-4 * max(1.0, abs(a[s][key])), (s, key, a[s][key], b[s][key])
    wa, wb = weights(one_process / "out" / "final"), weights(tmp_path / "out" / "final")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 2e-5
    assert "step    4 | reward" in out


def test_logged_numbers_are_the_recorded_ones(one_process, two_ranks):
    """Step 8's bookkeeping (dynamo/step_metrics.py) logs what it logged before it moved out of train.py."""
    assert_logged_as_recorded(one_process / "out", "split_free_one_process")
    assert_logged_as_recorded(two_ranks, "split_free_two_ranks")


def test_two_rank_sigterm_then_resume_is_exact(two_ranks, tmp_path):
    full, split = two_ranks, tmp_path / "split"
    a = step_rows(full)
    require_gradients(a, [2, 3, 4], least=2)  # the steps after the stop must update the weights
    # SIGTERM to torchrun, as a scheduler sends it: torchrun passes it on, both ranks finish the same step,
    # write one checkpoint together and exit
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*TORCHRUN, os.path.join(ROOT, "train.py"), "--config",
                             os.path.join(ROOT, "configs/default.yaml"), *SMALL, *SPLIT_FREE, "steps=4",
                             f"out_dir={split}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("eval step    0"):
            proc.send_signal(signal.SIGTERM)
            break
    log = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, log[-3000:]
    stopped = int(re.search(r"interrupted at step (\d+); resume with resume=auto", log)[1])
    assert stopped < 4 and log.count("interrupted at step") == 1  # rank 0 alone prints
    out = run([*SPLIT_FREE, "steps=4", f"out_dir={split}", "resume=auto"], tmp_path, TORCHRUN)
    assert f"step-{stopped:06d}" in out and "resumed from" in out
    b = step_rows(split)
    assert sorted(b) == [1, 2, 3, 4]
    for s in b:
        assert a[s] == b[s], s
    wa, wb = weights(full / "final"), weights(split / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise: same world size, deterministic CPU
    states = [torch.load(d / "final" / "trainer_state.pt", weights_only=False) for d in (full, split)]
    assert states[0]["prompt_stats"] == states[1]["prompt_stats"]  # the allocator's table carried over exactly
    ckpt = split / "checkpoints" / f"step-{stopped:06d}"
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert any(name.endswith(".distcp") for name in os.listdir(ckpt / "optimizer"))  # sharded optimiser state
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(ckpt).num_parameters() > 0  # the gathered weights load anywhere


def test_dynamo_allocation_with_every_memory_option_under_two_ranks(tmp_path):
    # rollouts_per_prompt 6 in [4, 8]: the per-rank allocation really varies the group sizes, and ranks must
    # still run the same number of micro-batches and generate steps (a mismatch would hang, not pass)
    out = run(["steps=3", "prompts_per_step=8", "train_pool=16", "rollouts_per_prompt=6", "allocator.n_max=8",
               "micro_batch_size=5",
               "checkpoint_every=2", "activation_checkpointing=true", "parallel.unshard_for_rollout=true",
               "parallel.mixed_precision=bf16", "eval_every=2", f"out_dir={tmp_path / 'out'}"], tmp_path, TORCHRUN)
    rows = step_rows(tmp_path / "out")
    assert sorted(rows) == [1, 2, 3]  # step 3 starts epoch 2: the first allocation by priority
    assert any(r["alloc/count_max"] > r["alloc/count_min"] for r in rows.values()), \
        "precondition broken: the allocation never varied the group sizes (no prompts with different pass rates)"
    assert "eval step    2" in out and "eval step    3" in out
    assert (tmp_path / "out" / "checkpoints" / "step-000002").exists()
    assert (tmp_path / "out" / "checkpoints" / "step-000003").exists()


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


EVAL_UNEVEN = '''
import sys, torch
sys.path.insert(0, {root!r})
from dynamo import distributed as dist
from dynamo.evaluate import evaluate
from dynamo.task import split
from tests.helpers import tiny
dist.init()
model, tok = tiny()
dist.shard(model, bf16=False)
problems = split(["add1", "add2"], 0, 3, 3)[1]
res = evaluate(model, tok, problems, [p.prompt for p in problems], samples=1, temperature=1.0, top_p=1.0,
               max_new_tokens=6, seed=0, batch_size=1)
from dynamo.rollout import sample
ro = sample(model, tok, ["1+1="], [2 if dist.rank() == 0 else 1], seeds=[0], temperature=1.0, top_p=1.0,
            max_new_tokens=4, max_rows=1)  # rank 0 needs 2 generate calls, rank 1 one
dist.print0("done", len(res["per_problem"]), len(ro.prompt_index))
dist.barrier()  # as train.py ends: no rank tears the process group down while another still uses it
dist.shutdown()
'''


def test_evaluation_with_uneven_batches_over_ranks_does_not_hang(tmp_path):
    """3 problems, 1 per batch, 2 sharded ranks: rank 0 runs 2 batches, rank 1 one. Every rank must run as many
    generate calls (each is collective), decided before the first; deciding after the loop hung. The same for
    training rollouts split into calls of rollout.max_rows rows."""
    script = tmp_path / "uneven.py"
    script.write_text(EVAL_UNEVEN.format(root=ROOT))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    res = subprocess.run([*TORCHRUN, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and "done 3 2" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]


def test_bf16_compute_keeps_float32_weights_that_move_at_the_papers_lr(tmp_path):
    """parallel.mixed_precision=bf16 (FSDP2, one process): bf16 compute, float32 master weights and AdamW state,
    so at the paper's lr of 1e-6 the weights move (dtype=bfloat16 weights, where they would round away, are
    refused at start)."""
    out = tmp_path / "out"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1")
    run([*SMALL, "steps=2", "optim.lr=1e-6", "parallel.mixed_precision=bf16", "skip_zero_advantage=false",
         f"out_dir={out}"], tmp_path, launcher)
    start = load_file(os.path.join(SHIPPED_START, "model.safetensors"))
    end = load_file(os.path.join(out, "checkpoints", "step-000002", "model.safetensors"))
    moved = sum((start[k] != end[k]).sum().item() for k in start) / sum(v.numel() for v in start.values())
    assert end[next(iter(end))].dtype == torch.float32 and moved > 0.99, moved
