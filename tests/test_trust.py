# python -m pytest -q tests/test_trust.py  — damaged checkpoints are caught and named, crafted ones run no code.
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval as eval_script
import train
from dynamo import checkpoint, trust
from tests.helpers import SHIPPED_START, merged
from tests.test_resume import CONFIG, SMALL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["steps=2", "checkpoint_every=1", "keep_checkpoints=3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-step run with a checkpoint after each step (written by today's code: manifests)."""
    out = tmp_path_factory.mktemp("run") / "out"
    train.main(["--config", CONFIG, *merged(SMALL, RUN, [f"out_dir={out}"])])
    return out


def copy_run(run_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run_dir, out, symlinks=True)
    return out


def ckpt(out, step):
    return os.path.join(out, "checkpoints", f"step-{step:06d}")


def flip(path, offset=-100):
    """Change one byte (by default near the end, inside the data) without changing the size."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def exit_message(fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    assert isinstance(e.value.code, str), e.value.code
    return e.value.code


DAMAGE = [("model.safetensors", truncate), ("model.safetensors", flip), ("optimizer/__0_0.distcp", flip),
          ("trainer_state.pt", truncate), ("tokenizer.json", flip), ("config.json", truncate)]


def test_every_file_has_a_checksum_and_a_fresh_checkpoint_verifies(run_dir):
    files = json.load(open(os.path.join(ckpt(run_dir, 2), trust.MANIFEST)))["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt", "optimizer/.metadata",
            "optimizer/__0_0.distcp"} <= set(files)
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in files.values())
    assert trust.verify(ckpt(run_dir, 2)).startswith("intact")


@pytest.mark.parametrize("name, damage", DAMAGE)
def test_a_damaged_file_is_named_and_auto_resume_falls_back(run_dir, tmp_path, name, damage, capsys):
    out = copy_run(run_dir, tmp_path)
    damage(os.path.join(ckpt(out, 2), name))
    path, state = checkpoint.newest_intact(str(out), print)
    assert path == ckpt(out, 1) and state["step"] == 1  # the newest intact checkpoint
    printed = capsys.readouterr().out
    assert f"step-000002/{name}" in printed and "skipped" in printed and "1 steps before the newest" in printed
    # named explicitly, it stops the run before any work, naming the file
    msg = exit_message(train.main, ["--config", CONFIG, *merged(SMALL, RUN, ["steps=3", f"out_dir={out}",
                                                                                f"resume={ckpt(out, 2)}"])])
    assert f"step-000002/{name}" in msg and "\n" not in msg


def test_auto_resume_past_a_damaged_checkpoint_trains_on(run_dir, tmp_path, capsys):
    out = copy_run(run_dir, tmp_path)
    truncate(os.path.join(ckpt(out, 2), "model.safetensors"))
    train.main(["--config", CONFIG, *merged(SMALL, RUN, ["steps=3", f"out_dir={out}", "resume=auto"])])
    printed = capsys.readouterr().out
    assert "resumed from " + ckpt(out, 1) in printed
    assert trust.verify(ckpt(out, 2)).startswith("intact")  # step 2 ran again and was written anew


def test_every_checkpoint_damaged_stops_with_what_to_do(run_dir, tmp_path):
    out = copy_run(run_dir, tmp_path)
    for step in (1, 2):
        flip(os.path.join(ckpt(out, step), "model.safetensors"))
    msg = exit_message(train.main, ["--config", CONFIG, *merged(SMALL, RUN, ["steps=3", f"out_dir={out}",
                                                                                "resume=auto"])])
    assert "every checkpoint" in msg and "overwrite=true" in msg


@pytest.mark.parametrize("name, damage", [d for d in DAMAGE if not d[0].startswith(("optimizer", "trainer"))])
def test_eval_names_a_damaged_checkpoint_file(run_dir, tmp_path, name, damage):
    out = copy_run(run_dir, tmp_path)
    damage(os.path.join(ckpt(out, 2), name))
    msg = exit_message(eval_script.main, [f"model={ckpt(out, 2)}", "data=[arithmetic]", "k=1",
                                          f"output={tmp_path / 'eval'}", "task_problems=2"])
    assert f"step-000002/{name}" in msg and "\n" not in msg


def test_checkpoints_without_a_manifest_still_resume(run_dir, tmp_path, capsys):
    """A checkpoint from before manifests (numpy's RNG state as an array, no manifest.json) loads as data and
    resumes; its damaged safetensors file is still caught by the structural check."""
    out = copy_run(run_dir, tmp_path)
    for step in (1, 2):
        path = ckpt(out, step)
        os.remove(os.path.join(path, trust.MANIFEST))
        state = checkpoint.load_state(path)
        for rng in state["rng"]:
            name, keys, *rest = rng["numpy"]
            rng["numpy"] = (name, np.array(keys, dtype=np.uint32), *rest)  # as the earlier code saved it
        torch.save(state, os.path.join(path, checkpoint.STATE_FILE))
    truncate(os.path.join(ckpt(out, 2), "model.safetensors"))
    train.main(["--config", CONFIG, *merged(SMALL, RUN, ["steps=3", f"out_dir={out}", "resume=auto"])])
    printed = capsys.readouterr().out
    assert "no manifest" in printed and "resumed from " + ckpt(out, 1) in printed


# ---------------------------------------------------------------------------------------- crafted files

class Payload:
    """Unpickling this creates the marker file (a stand-in for any command an attacker would run)."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_trainer_state_runs_no_code(run_dir, tmp_path):
    out, marker = copy_run(run_dir, tmp_path), tmp_path / "marker"
    path = ckpt(out, 2)
    torch.save({"step": 2, "boom": Payload(marker)}, os.path.join(path, checkpoint.STATE_FILE))
    trust.write_manifest(path)  # whoever crafted it can recompute the checksums too
    msg = exit_message(train.main, ["--config", CONFIG, *merged(SMALL, RUN, ["steps=3", f"out_dir={out}",
                                                                                f"resume={path}"])])
    assert "trainer_state.pt: refused" in msg and not marker.exists()
    assert checkpoint.newest_intact(str(out), lambda *a: None)[0] == ckpt(out, 1)  # auto skips it
    res = subprocess.run([sys.executable, "-m", "dynamo.checkpoint", "verify", path], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 1 and "refused" in res.stdout and not marker.exists()


def test_crafted_optimizer_metadata_runs_no_code(run_dir, tmp_path):
    out, marker = copy_run(run_dir, tmp_path), tmp_path / "marker"
    path = ckpt(out, 2)
    with open(os.path.join(path, "optimizer", ".metadata"), "wb") as f:
        import pickle
        pickle.dump(Payload(marker), f)
    trust.write_manifest(path)
    msg = exit_message(train.main, ["--config", CONFIG, *merged(SMALL, RUN, ["steps=3", f"out_dir={out}",
                                                                                f"resume={path}"])])
    assert "optimizer/.metadata" in msg and "refused" in msg and not marker.exists()
    res = subprocess.run([sys.executable, "-m", "dynamo.checkpoint", "verify", path], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 1 and ".metadata" in res.stdout and not marker.exists()


def test_a_crafted_optimizer_entry_runs_no_code(run_dir, tmp_path):
    """AdamW's non-tensor entries (its param_groups) are pickled inside the .distcp shard: one replaced by a
    payload, in a checkpoint whose metadata and manifest are consistent with it."""
    import torch.distributed.checkpoint as dcp
    out, marker = copy_run(run_dir, tmp_path), tmp_path / "marker"
    path = ckpt(out, 2)
    opt_dir = os.path.join(path, "optimizer")
    from dynamo.model import load_pretrained
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    model, _ = load_pretrained(path)
    opt = torch.optim.AdamW(model.parameters())
    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)  # as in training: param_groups carry initial_lr
    checkpoint.load_optimizer(path, model, opt)  # the real state, read safely
    state = get_optimizer_state_dict(model, opt)
    state["param_groups"][0]["lr"] = Payload(marker)
    shutil.rmtree(opt_dir)
    dcp.save(state, checkpoint_id=opt_dir)
    trust.write_manifest(path)
    assert not marker.exists()
    msg = exit_message(train.main, ["--config", CONFIG, *merged(SMALL, RUN, ["steps=3", f"out_dir={out}",
                                                                                f"resume={path}"])])
    assert "optimizer" in msg and "refused" in msg and not marker.exists()


# ---------------------------------------------------------------------------------------- models given as `model`

def test_a_damaged_model_directory_is_named(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(SHIPPED_START, model)
    truncate(model / "model.safetensors")
    msg = exit_message(train.main, ["--config", CONFIG, *merged(SMALL, ["steps=1", f"model={model}",
                                                                        f"out_dir={tmp_path / 'o'}"])])
    assert "model.safetensors" in msg and "\n" not in msg
    msg = exit_message(eval_script.main, [f"model={model}", "data=[arithmetic]", "k=1", "task_problems=2",
                                          f"output={tmp_path / 'eval'}"])
    assert "model.safetensors" in msg and "\n" not in msg


def test_a_truncated_gguf_file_is_named(tmp_path):
    from tests.real_model import gguf_path
    cut = tmp_path / "cut.gguf"
    with open(gguf_path(), "rb") as src:
        cut.write_bytes(src.read(1 << 20))
    msg = exit_message(train.main, ["--config", CONFIG, *merged(SMALL, ["steps=1", f"model={cut}",
                                                                        f"out_dir={tmp_path / 'o'}"])])
    assert "cut.gguf" in msg
