# python -m pytest -q tests/test_resume.py  — exact resume, crash safety, bad input, non-finite steps.
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import train
from dynamo import checkpoint, objective
from tests.helpers import SHIPPED_START, assert_logged_as_recorded, merged, require_gradients, step_rows, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "default.yaml")
# From the shipped warmed start on the two levels it half solves: mixed rewards and real gradients on every
# machine (test_resume_is_exact checks that precondition by name).
SMALL = ["prompts_per_step=4", "rollouts_per_prompt=4", "eval_prompts=8", "eval_samples=1", "train_pool=12",
         f"model={SHIPPED_START}", "task_levels=[add2, add3]", "rollout.max_new_tokens=40",
         "eval_every=0", "sample_every=0", "optim.lr=1e-4", "optim.warmup_steps=1"]


def run(args, cwd, env_extra=None, wait=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", CONFIG, *merged(SMALL, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


def weights(out, step):
    return load_file(os.path.join(out, "checkpoints", f"step-{step:06d}", "model.safetensors"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """6 uninterrupted steps (in this process): what every interrupted-and-resumed run must reproduce."""
    full = tmp_path_factory.mktemp("full") / "out"
    train.main(["--config", CONFIG, *SMALL, "steps=6", f"out_dir={full}"])
    require_gradients(step_rows(full), [4, 5, 6], least=2)  # the steps after a resume point must update weights
    return full


def test_logged_numbers_are_the_recorded_ones(full_run):
    """The official settings (allocation, micro-batch modulation) log what they logged before the refactor."""
    assert_logged_as_recorded(full_run, "official_six_steps")


def test_resume_is_exact(full_run, tmp_path, capsys):
    # in this process (no start-up cost); the same as subprocesses: the SIGTERM and SIGKILL tests below
    full, split = full_run, tmp_path / "split"
    a = step_rows(full)
    train.main(["--config", CONFIG, *SMALL, "steps=3", f"out_dir={split}"])
    capsys.readouterr()
    train.main(["--config", CONFIG, *SMALL, "steps=6", f"out_dir={split}", "resume=auto"])
    out = capsys.readouterr().out
    assert "resumed from" in out and "step-000003" in out
    b = step_rows(split)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]  # rows of steps 1-3 kept, 4-6 appended once
    for s in (4, 5, 6):
        assert a[s] == b[s], s
    state = [torch.load(out / "checkpoints" / "step-000006" / "trainer_state.pt", weights_only=False)
             for out in (full, split)]
    assert state[0]["prompt_stats"] == state[1]["prompt_stats"]  # allocator statistics carried over exactly
    assert state[0]["order"] == state[1]["order"]
    wa, wb = weights(full, 6), weights(split, 6)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise on CPU
    assert os.path.realpath(full / "final").endswith("step-000006")


def test_sigterm_finishes_the_step_checkpoints_and_resumes_exactly(full_run, tmp_path):
    out = tmp_path / "out"
    proc = run(["steps=6", f"out_dir={out}"], tmp_path, wait=False)
    lines = []
    for line in proc.stdout:  # the handler is in place before the first evaluation
        lines.append(line)
        if line.startswith("eval step    0"):
            proc.send_signal(signal.SIGTERM)
            break
    log = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    stopped = int(re.search(r"interrupted at step (\d+); resume with resume=auto", log)[1])
    assert "SIGTERM: finishing this step" in log and stopped < 6
    assert checkpoint.latest(str(out)).endswith(f"step-{stopped:06d}") and not (out / "final").exists()
    assert f"resumed from {checkpoint.latest(str(out))}" in run(["steps=6", f"out_dir={out}", "resume=auto"], tmp_path)
    a, b = step_rows(full_run), step_rows(out)
    assert sorted(b) == [1, 2, 3, 4, 5, 6] and all(a[s] == b[s] for s in b)
    wa, wb = weights(full_run, 6), weights(out, 6)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise, as if never interrupted


def test_sigkill_during_checkpoint_write_resumes_from_last_complete(tmp_path):
    out = tmp_path / "out"
    proc = run(["steps=4", "checkpoint_every=1", f"out_dir={out}"], tmp_path,
               env_extra={"DYNAMO_SLOW_CHECKPOINT": "60"}, wait=False)
    half = out / "checkpoints" / "step-000001.tmp" / "model.safetensors"
    deadline = time.time() + 300
    while not half.exists():  # the first save is under way: its weights are written, its state is not
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "checkpoints" / "step-000001").exists()  # nothing half-written looks complete
    # Kill again in the second save, after the first one completed.
    proc = run(["steps=4", "checkpoint_every=1", f"out_dir={out}", "resume=auto"], tmp_path,
               env_extra={"DYNAMO_SLOW_CHECKPOINT": "0.01"}, wait=False)
    proc.wait(timeout=600)
    assert proc.returncode == 0
    log = run(["steps=6", "checkpoint_every=1", f"out_dir={out}", "resume=auto"], tmp_path)
    assert "step-000004" in log and "step    5 | reward" in log
    assert sorted(step_rows(out)) == [1, 2, 3, 4, 5, 6]
    names = sorted(os.listdir(out / "checkpoints"))
    assert names == ["step-000004", "step-000005", "step-000006"]  # keep_checkpoints = 3


def test_a_run_never_overwrites_or_continues_another_silently(tmp_path, capsys):
    out = tmp_path / "out"
    base = [*SMALL, f"out_dir={out}"]
    train.main(["--config", CONFIG, *base, "steps=2"])  # an earlier run: logs and its checkpoint at step 2
    before = (out / "metrics.jsonl").read_text()
    # a fresh run into its directory stops before any work, naming the ways out (the command line's exit)
    res = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config", CONFIG, *base, "steps=1"],
                         cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0 and "holds another run" in res.stderr, res.stderr[-2000:]
    assert all(way in res.stderr for way in ("resume=auto", "out_dir=", "overwrite=true"))
    assert (out / "metrics.jsonl").read_text() == before  # untouched
    # resume=auto never continues a checkpoint past `steps`, nor one written under other run-defining keys
    assert "at step 2, past this run's steps = 1" in fail([f"out_dir={out}", "resume=auto"])
    msg = fail([f"out_dir={out}", "resume=auto", "steps=3", "optim.lr=2e-4", "rollout.temperature=0.8"])
    assert "optim.lr: 0.0001 -> 0.0002; rollout.temperature: 1.0 -> 0.8" in msg and "steps, out_dir" in msg
    # keys that do not change the run may change: a longer run continues
    capsys.readouterr()
    train.main(["--config", CONFIG, *merged(base, ["steps=3", "resume=auto", "sample_every=1"])])
    assert "resumed from" in capsys.readouterr().out and sorted(step_rows(out)) == [1, 2, 3]
    # a finished run is left as it is: nothing is re-evaluated, re-saved or re-summarised
    train.main(["--config", CONFIG, *base, "steps=3", "resume=auto"])
    assert "already finished all 3 steps" in capsys.readouterr().out and sorted(step_rows(out)) == [1, 2, 3]
    # overwrite=true deletes the earlier run first
    train.main(["--config", CONFIG, *base, "steps=1", "overwrite=true"])
    assert "removed the earlier run's" in capsys.readouterr().out
    assert sorted(step_rows(out)) == [1] and os.listdir(out / "checkpoints") == ["step-000001"]
    # resume=auto with nothing to resume says that it starts fresh
    train.main(["--config", CONFIG, *SMALL, "steps=1", "resume=auto", f"out_dir={tmp_path / 'new'}"])
    assert f"no checkpoint in {tmp_path / 'new'}: starting fresh" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- bad input, in-process

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    model, tok = tiny(seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def fail(args, capsys=None):
    with pytest.raises(SystemExit) as e:
        train.main(["--config", CONFIG, *merged(SMALL, ["steps=1"], args)])
    return str(e.value.code)


GOOD = ['{"problem": "12+34=", "answer": "46"}', '{"problem": "5*6=", "answer": "30"}']


@pytest.mark.parametrize("rows, needle", [
    (None, "these paths do not exist: 'data' = "),
    ([], "holds no problems"),
    ([GOOD[0], '{"problem": "1+1=", "answer": '], "bad.jsonl:2: malformed JSON"),
    ([GOOD[0], '{"problem": "1+1="}'], "bad.jsonl:2"),
    ([GOOD[0], '{"answer": "2"}'], "bad.jsonl:2: no problem text"),
    (['{"id": 7, "problem": "1+1=", "answer": "2"}', '{"id": 7, "problem": "2+2=", "answer": "4"}'],
     "duplicate prompt id '7'"),
])
def test_bad_data_files_name_file_and_line(tmp_path, model_dir, rows, needle):
    path = tmp_path / "bad.jsonl"
    if rows is not None:
        write(path, rows)
    msg = fail([f"model={model_dir}", f"data={path}", f"out_dir={tmp_path / 'out'}"])
    assert needle in msg


def test_bad_model_and_output_directories(tmp_path, model_dir):
    data = write(tmp_path / "d.jsonl", GOOD)
    assert "these paths do not exist: 'model' = " in fail([f"model={tmp_path / 'nope'}", f"data={data}",
                                                f"out_dir={tmp_path / 'o'}"])
    (tmp_path / "file").write_text("x")
    assert "is not writable" in fail([f"model={model_dir}", f"data={data}", f"out_dir={tmp_path / 'file' / 'o'}"])
    assert "not a complete checkpoint" in fail([f"model={model_dir}", f"data={data}", f"out_dir={tmp_path / 'o'}",
                                                f"resume={tmp_path}"])
    assert "config key 'stepz'" in fail(["stepz=3"])


def test_long_prompts_stop_or_are_skipped(tmp_path, model_dir, capsys):
    data = write(tmp_path / "d.jsonl", GOOD + ['{"problem": "' + "1+" * 60 + '1=", "answer": "61"}'])
    common = [f"model={model_dir}", f"data={data}", "rollout.max_prompt_tokens=40"]
    assert "1 prompts exceed rollout.max_prompt_tokens = 40" in fail([*common, f"out_dir={tmp_path / 'a'}"])
    train.main(["--config", CONFIG, *merged(SMALL, ["steps=1", *common, "rollout.too_long=skip",
                                                   f"out_dir={tmp_path / 'b'}", "prompts_per_step=2"])])
    assert "skipped 1 of 3 prompts" in capsys.readouterr().out


def test_non_finite_loss_skips_the_step_and_stops_after_a_streak(tmp_path, model_dir, monkeypatch, recwarn):
    data = write(tmp_path / "d.jsonl", GOOD)
    real = objective.ppo_loss
    monkeypatch.setattr(objective, "ppo_loss", lambda *a, **k: (lambda l, s: (l * float("nan"), s))(*real(*a, **k)))
    out = tmp_path / "out"
    args = ["--config", CONFIG, *merged(SMALL, [f"model={model_dir}", f"data={data}", "prompts_per_step=2"])]
    train.main([*args, "steps=2", f"out_dir={out}"])
    # the schedule steps after a skipped optimiser step by design: PyTorch's misordering warning is not shown
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)], [str(w.message) for w in recwarn]
    rows = step_rows(out)
    assert rows[2]["skipped_steps"] == 2
    before, after = load_file(os.path.join(model_dir, "model.safetensors")), weights(out, 2)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights untouched by skipped steps
    state = torch.load(out / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=False)
    assert not (out / "checkpoints" / "step-000002" / "optimizer").exists()  # AdamW never stepped: no moments
    with pytest.raises(SystemExit, match="3 consecutive optimiser steps had a non-finite gradient norm"):
        train.main([*args, "steps=5", "optim.max_bad_steps=3", f"out_dir={tmp_path / 'out2'}"])


def test_config_changes_skip_resumable_keys_and_keys_one_version_lacks():
    old = {"steps": 5, "eval_every": 2, "optim": {"lr": 1e-4, "beta1": 0.9}, "removed_key": 1}
    new = {"steps": 9, "eval_every": 4, "optim": {"lr": 2e-4, "beta1": 0.9}, "added_key": 3}
    assert checkpoint.config_changes(old, new) == ["optim.lr: 0.0001 -> 0.0002"]


def test_resume_auto_restarts_the_same_run_stopped_before_its_first_checkpoint(tmp_path, capsys):
    from dynamo.config import dump, load_config
    out = tmp_path / "out"
    args = merged(SMALL, ["steps=1", f"out_dir={out}", "resume=auto"])
    out.mkdir()
    (out / "config.yaml").write_text(dump(load_config(["--config", CONFIG, *args])))  # what that run left
    (out / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.5}\n')
    assert "holds another run" in fail([*args, "optim.lr=2e-4"])  # another config: refused
    train.main(["--config", CONFIG, *args])  # the same config: starts again from scratch
    assert "starting fresh" in capsys.readouterr().out and sorted(step_rows(out)) == [1]


def test_the_folder_reuse_message_lists_config_differences_up_front(tmp_path):
    """A fresh run into a folder holding a run made with another config: the first message lists the differing keys
    and does not send the user to resume=auto, which would refuse; with the same config it offers resume=auto."""
    from dynamo.config import dump, load_config
    out = tmp_path / "out"
    args = merged(SMALL, ["steps=1", f"out_dir={out}"])
    out.mkdir()
    (out / "config.yaml").write_text(dump(load_config(["--config", CONFIG, *args])))  # what that run left
    (out / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.5}\n')
    msg = fail([*args, "optim.lr=2e-4", "steps=3"])
    assert "holds another run (metrics.jsonl, config.yaml), made with another config (optim.lr: 0.0001 -> 0.0002)" in msg
    assert "resume=auto would refuse" in msg and "continue it with resume=auto" not in msg
    assert f"--config {out}/config.yaml resume=auto" in msg and "out_dir=" in msg and "overwrite=true" in msg
    msg = fail([*args, "steps=3"])  # steps may change on resume: continuing is the first way out
    assert "continue it with resume=auto" in msg and "another config" not in msg
