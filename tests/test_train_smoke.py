# python -m pytest -q tests/test_train_smoke.py  — subprocess runs of train.py (1 and 2 processes).
import json
import os
import subprocess
import sys

import pytest

import train
from tests.helpers import SHIPPED_START, merged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small everything, from the shipped warmed start (the warm-up and its cache are tested in test_warmup.py and,
# through train.py, by tests/test_measurement.py's experiment runner).
SMALL = ["steps=2", "prompts_per_step=4", "rollouts_per_prompt=4", "eval_prompts=14", "eval_samples=2",
         "train_pool=16", f"model={SHIPPED_START}", "sample_every=1", "samples_per_step=6", "rollout.max_new_tokens=40"]


def run(args, tmp_path, launcher=(sys.executable,), timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [*launcher, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs/default.yaml"),
           *merged(args)]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def step_lines(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if line.startswith("step ")]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    res = run([*SMALL, f"out_dir={tmp / 'out'}"], tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp, res


def test_single_process_run_writes_everything(single_run):
    tmp, res = single_run
    out = tmp / "out"
    rows = read_metrics(out)
    assert {r["kind"] for r in rows} == {"train", "eval"}  # every row says what it is
    steps = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("reward", "accuracy", "zero_adv_groups", "entropy", "response_length", "truncated",
                "grad_norm", "clip_frac", "time/generate", "time/update"):
        assert key in steps[0]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2] and all("eval/accuracy" in r and "reward" not in r for r in evals)
    assert "step    2 | reward" in res.stdout
    # mini_batches 1: the update starts from the sampling policy, nothing is clipped, so the console leaves clip out
    assert all(" clip " not in line for line in step_lines(res.stdout)) and steps[0]["clip_frac"] == 0
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert [r["step"] for r in samples] == [1] * 6 + [2] * 6  # samples_per_step rows every sample_every step
    assert {"prompt_id", "level", "allocated", "group", "prompt", "response", "reward", "advantage"} <= set(samples[0])
    # epoch 1 is uniform (4 rollouts each) and rows come prompt by prompt: 4 of the first prompt, 2 of the second
    assert [(r["allocated"], r["group"]) for r in samples[:6]] == [(4, 0), (4, 1), (4, 2), (4, 3), (4, 0), (4, 1)]
    first, second = samples[0], samples[4]
    assert first["prompt_id"] != second["prompt_id"] and all(r["prompt_id"] == first["prompt_id"] for r in samples[:4])
    assert first["level"] in ("add1", "add2", "add3", "add4", "mul2", "mul3", "mul4")
    assert (out / "config.yaml").exists() and (out / "summary.json").exists()
    summary = json.loads((out / "summary.json").read_text())  # the run's identity travels with its result
    assert summary["config_file"].endswith("configs/default.yaml") and len(summary["config_sha256"]) == 16
    assert (summary["seed"], summary["rl_seed"], summary["steps"]) == (0, 0, 2) and summary["wall_seconds"] > 0
    assert summary["commit"] is None or len(summary["commit"]) == 40
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.num_parameters() > 0 and (out / "final" / "model.safetensors").exists()


def in_process(args, capsys) -> str:
    """train.py's main in this process (no start-up cost); its printed lines."""
    capsys.readouterr()
    train.main(["--config", os.path.join(ROOT, "configs/default.yaml"), *merged(args)])
    return capsys.readouterr().out


def test_checkpoint_is_a_model_directory(single_run, tmp_path, capsys):
    tmp, _ = single_run  # the checkpoint the first run saved is a plain Hugging Face directory
    out = in_process([*SMALL, "steps=1", f"model={tmp / 'out' / 'final'}", f"out_dir={tmp_path / 'out'}",
                      "samples_per_step=0", "mini_batches=2"], capsys)
    assert "[warmup]" not in out and "step    1 | reward" in out
    assert (tmp_path / "out" / "samples.jsonl").read_text() == ""  # samples_per_step 0: a sampled step writes none
    assert " clip " in step_lines(out)[0]  # two mini-batches: the second one's ratios can be clipped


def test_rl_seed_changes_rollouts_but_not_the_start(single_run, tmp_path, capsys):
    tmp, _ = single_run
    in_process([*SMALL, "rl_seed=7", f"out_dir={tmp_path / 'out'}"], capsys)
    a, b = read_metrics(tmp / "out"), read_metrics(tmp_path / "out")
    assert a[0] == b[0] and "eval/accuracy" in a[0]  # the step-0 evaluation does not depend on the RL seed
    # ... while the prompt order and the rollouts do: the logged (prompt, response) pairs of both steps
    logged = [[(r["prompt"], r["response"]) for r in map(json.loads, open(d / "samples.jsonl"))]
              for d in (tmp / "out", tmp_path / "out")]
    assert len(logged[0]) == len(logged[1]) >= 8 and logged[0] != logged[1]


def test_torchrun_two_processes(single_run, tmp_path):
    tmp, _ = single_run
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    res = run([*SMALL, f"out_dir={tmp_path / 'out'}"], tmp_path, launcher)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    steps = [r for r in read_metrics(tmp_path / "out") if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]  # rank 0 alone writes
    assert res.stdout.count("step    2 | reward") == 1


def test_help_answers_without_running(capsys):
    train.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python train.py [--config FILE]") and "python -m dynamo.config" in out
    # the values a bare `python train.py` runs with: the main job's, marked as its config file's
    assert "\n* modulation.compensation bool = true " in out and "\n* micro_batch_size int = 128 " in out


def test_help_lists_every_config_key():
    import dataclasses
    from dynamo.config import Config, help_rows, help_text
    rows = {key: (typ, note) for key, typ, note in help_rows()}
    for f in dataclasses.fields(Config):
        sub = getattr(Config(), f.name)
        names = [f"{f.name}.{g.name}" for g in dataclasses.fields(sub)] if dataclasses.is_dataclass(sub) else [f.name]
        for name in names:  # each with its type, default and a one-line meaning
            assert name in rows and rows[name][1], f"config key {name} has no meaning in --help"
    assert rows["allocation"][0] == 'str = "dynamo" (uniform|dynamo|oracle|dapo|greso|knapsack|reinforce_ada)'
    assert '  warmup.shipped bool = true ' in help_text()
