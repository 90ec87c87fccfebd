"""Checkpoints: the policy in Hugging Face format plus the training state, written atomically.

A checkpoint directory `step-000080/` holds model.safetensors, config.json, the tokenizer
(loadable with AutoModelForCausalLM.from_pretrained) and `trainer_state.pt` (step, optimiser,
scheduler, RNG states, data position, allocator statistics, resolved config). It is written under a
temporary name and renamed into place, so a crash never leaves a half checkpoint behind.
"""
from __future__ import annotations

import os
import random
import shutil

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"


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


def save(path: str, model, tokenizer, train_state: dict | None = None) -> str:
    """Write the checkpoint at `path` (atomic: temporary directory, then rename)."""
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if train_state is not None:
        torch.save(train_state, os.path.join(tmp, STATE_FILE))
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path
