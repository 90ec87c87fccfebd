"""Checkpoints: the policy in Hugging Face format plus the training state, written atomically.

`out_dir/checkpoints/step-000080/` holds model.safetensors, config.json and the tokenizer (loadable
with AutoModelForCausalLM.from_pretrained) and `trainer_state.pt`: step, optimiser, scheduler, RNG
states, data-order position, the allocator's per-prompt statistics, counters and the resolved config.
Each is written under a temporary name and renamed into place, so a crash (even SIGKILL) never leaves
a directory that looks complete; `latest()` only ever sees finished checkpoints. `out_dir/final`
points at the last checkpoint of a finished run.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import time

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out_dir: str, step: int, model, tokenizer, train_state: dict, keep: int = 3) -> str:
    """Write checkpoints/step-{step} atomically, then drop all but the newest `keep`."""
    root = os.path.join(out_dir, "checkpoints")
    path = os.path.join(root, f"step-{step:06d}")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if os.environ.get("DYNAMO_SLOW_CHECKPOINT"):  # crash tests: widen the window to kill a half-written save
        time.sleep(float(os.environ["DYNAMO_SLOW_CHECKPOINT"]))
    torch.save(train_state, os.path.join(tmp, STATE_FILE))
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)  # the checkpoint exists, complete, from this instant on
    for old in sorted(_complete(root))[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, f"step-{old:06d}"), ignore_errors=True)
    return path


def mark_final(out_dir: str, path: str) -> None:
    """out_dir/final -> the given checkpoint (a relative symlink, replaced atomically)."""
    link, tmp = os.path.join(out_dir, "final"), os.path.join(out_dir, "final.tmp")
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.relpath(path, out_dir), tmp)
    if os.path.isdir(link) and not os.path.islink(link):
        shutil.rmtree(link)
    os.replace(tmp, link)


def _complete(root: str) -> list[int]:
    if not os.path.isdir(root):
        return []
    steps = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        if m and os.path.exists(os.path.join(root, name, STATE_FILE)):
            steps.append(int(m.group(1)))
    return steps


def latest(out_dir: str) -> str | None:
    """The newest complete checkpoint under out_dir, or None."""
    steps = _complete(os.path.join(out_dir, "checkpoints"))
    return os.path.join(out_dir, "checkpoints", f"step-{max(steps):06d}") if steps else None


def load_state(path: str) -> dict:
    file = os.path.join(path, STATE_FILE)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    # Our own file: optimiser tensors plus plain Python containers (RNG states hold numpy arrays).
    return torch.load(file, map_location="cpu", weights_only=False)
