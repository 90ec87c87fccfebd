"""Checkpoints (step 8 of train.py): the policy in Hugging Face format plus the training state, written atomically.

`out_dir/checkpoints/step-000080/` holds model.safetensors, config.json and the tokenizer (loadable
with AutoModelForCausalLM.from_pretrained; under FSDP2 the full weights are gathered to rank 0's CPU
first), `optimizer/` (AdamW's state in torch.distributed.checkpoint format: each rank writes its own
shard, so the full state never has to fit in one process) and `trainer_state.pt`: step, scheduler,
every rank's RNG state, data-order position, the allocator's per-prompt statistics, counters and the
resolved config. `manifest.json`, written after every other file, holds each file's size and SHA-256.
Everything is written under a temporary name that one rename makes final, so a crash (even SIGKILL) never
leaves a directory that looks complete; `latest()` only ever sees finished checkpoints. Nothing is loaded from
a checkpoint before it is checked, and nothing read from one can run code (dynamo/trust.py): `resume=auto`
falls back past a damaged checkpoint to the newest intact one. `out_dir/final` points at the last checkpoint
of a finished run. Under several ranks, `save` and `load_optimizer` are collective (every rank calls them) and
out_dir must be one file system that all ranks see.

    python -m dynamo.checkpoint verify runs/default      # every checkpoint of a run (or one checkpoint)
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
import warnings

import numpy as np
import torch
import yaml

from dynamo import distributed as dist, trust
from dynamo.trust import CheckpointError

STATE_FILE = "trainer_state.pt"
OPTIMIZER_DIR = "optimizer"
RUN_FILES = ("metrics.jsonl", "samples.jsonl", "summary.json", "config.yaml", "checkpoints", "final", "run.json",
             "wandb")  # run.json: the run's id (dynamo/trackers.py); wandb: the W&B tracker's files (loggers)
RUN_PATTERNS = ("events.out.tfevents.*",)  # the TensorBoard tracker's event files
# The config keys a run may change when it resumes: none of them changes what is trained. Any other
# difference between a checkpoint's resolved config and the resuming run's stops the resume.
RESUMABLE_KEYS = ("steps", "out_dir", "resume", "overwrite", "eval_every", "checkpoint_every", "keep_checkpoints",
                  "sample_every", "samples_per_step", "logprob_chunk", "activation_checkpointing", "device",
                  "parallel.unshard_for_rollout", "warmup.cache_dir", "warmup.shipped", "rollout.max_rows", "tf32",
                  "loggers")
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def rng_state() -> dict:
    """Every generator's state in types torch.load(weights_only=True) reads back (numpy's keys as a list)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]  # keys: a list (or, in older checkpoints, an array)
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out_dir: str, step: int, model, tokenizer, optimizer, train_state: dict, keep: int = 3) -> str:
    """Write checkpoints/step-{step} atomically, then drop all but the newest `keep` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    root = os.path.join(out_dir, "checkpoints")
    path = os.path.join(root, f"step-{step:06d}")
    tmp = path + ".tmp"
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    _share_tied(model, weights)
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    if optimizer.state:  # no step taken yet (all skipped): nothing to save, and reading it would create state
        with _single_process_ok():
            dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=os.path.join(tmp, OPTIMIZER_DIR))
    if dist.is_main():  # weights holds the full state dict here, {} on the other ranks
        model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if os.environ.get("DYNAMO_SLOW_CHECKPOINT"):  # crash tests: widen the window to kill a half-written save
            time.sleep(float(os.environ["DYNAMO_SLOW_CHECKPOINT"]))
        torch.save(train_state, os.path.join(tmp, STATE_FILE))
        trust.write_manifest(tmp)  # last: it vouches for every file above
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)  # the checkpoint exists, complete, from this instant on
        for old in sorted(_complete(root))[:-keep] if keep > 0 else []:
            shutil.rmtree(os.path.join(root, f"step-{old:06d}"), ignore_errors=True)
    dist.barrier()
    return path


def _share_tied(model, weights: dict) -> None:
    """Tied parameters (e.g. embeddings and LM head) come back from the gather as separate copies;
    make their names share one tensor again so save_pretrained stores it once, as it does unsharded."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    for first, *rest in names.values():
        for name in rest:
            if first in weights and name in weights:
                weights[name] = weights[first]


def load_optimizer(path: str, model, optimizer) -> None:
    """AdamW's state from a checkpoint into `optimizer` (collective; each rank reads the slice its
    shards need, so a different number of ranks can read it too)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    if not os.path.isdir(os.path.join(path, OPTIMIZER_DIR)):
        return  # saved before any optimiser step: AdamW starts fresh, as it did then
    state = get_optimizer_state_dict(model, optimizer)  # the layout to fill
    with _single_process_ok():
        trust.safe_dcp_load(state, os.path.join(path, OPTIMIZER_DIR))  # data only, never plain pickle
    set_optimizer_state_dict(model, optimizer, state)


@contextlib.contextmanager
def _single_process_ok():
    """Without a process group torch.distributed.checkpoint warns on every call that it assumes one process."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


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
    """trainer_state.pt, read as data only (tensors and plain containers; see dynamo/trust.py)."""
    file = os.path.join(path, STATE_FILE)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    state = trust.safe_torch_load(file)
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{file}: not a trainer state (no step); copy the checkpoint again from its source")
    return state


def open_checkpoint(path: str) -> tuple[str, dict]:
    """(what was checked, trainer state) of a checkpoint that passed its check; CheckpointError otherwise."""
    checked = trust.verify(path)
    state = load_state(path)
    trust.check_optimizer_metadata(os.path.join(path, OPTIMIZER_DIR))
    return checked, state


def newest_intact(out_dir: str, log) -> tuple[str, dict] | tuple[None, None]:
    """resume=auto: the newest checkpoint of out_dir that passes its check, and its trainer state. Each one that
    fails is reported and skipped; none at all: (None, None); every one failing stops the run."""
    steps = sorted(_complete(os.path.join(out_dir, "checkpoints")), reverse=True)
    failed = []
    for step in steps:
        path = os.path.join(out_dir, "checkpoints", f"step-{step:06d}")
        try:
            checked, state = open_checkpoint(path)
        except CheckpointError as e:
            log(f"checkpoint {path} failed its check, skipped: {e}")
            failed.append(step)
            continue
        log(f"checkpoint {path}: {checked}")
        if failed:
            log(f"resuming from step {step}, {steps[0] - step} steps before the newest checkpoint (step {steps[0]}), "
                f"which failed its check: those steps run again")
        return path, state
    if failed:
        raise CheckpointError(f"every checkpoint in {out_dir} failed its check (steps {', '.join(map(str, failed))}; "
                              "see above): copy them again from their source, or start afresh with overwrite=true")
    return None, None


def _run_names(out_dir: str) -> list[str]:
    """RUN_FILES, then the files in out_dir that match RUN_PATTERNS."""
    return [*RUN_FILES, *sorted(os.path.basename(p) for pattern in RUN_PATTERNS
                                for p in glob.glob(os.path.join(glob.escape(out_dir), pattern)))]


def previous_run(out_dir: str) -> list[str]:
    """The outputs of an earlier run found in out_dir (an empty checkpoints/ folder does not count)."""
    found = []
    for name in _run_names(out_dir):
        path = os.path.join(out_dir, name)
        if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)):
            found.append(name)
    return found


def remove_run(out_dir: str) -> None:
    """Delete an earlier run's outputs (overwrite=true); nothing else in out_dir is touched."""
    for name in _run_names(out_dir):
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def check_writable(out_dir: str) -> None:
    """Fail now, not after an hour of generation, if the run cannot write its outputs."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"output directory {out_dir!r} (config key 'out_dir') is not writable: {e.strerror}") from None


def claim_out_dir(cfg, log) -> tuple[str | None, dict | None]:
    """The checkpoint to continue and its trainer state, checked before anything is loaded from it, or (None,
    None) to start fresh once sure that out_dir holds no other run's outputs. Rank 0 checks (and hashes); the
    other ranks load the checkpoint it chose."""
    if cfg.resume:
        found = error = None
        if dist.is_main():
            try:
                if cfg.resume == "auto":
                    found = newest_intact(cfg.out_dir, log)[0]
                else:  # named explicitly: a checkpoint that fails its check stops the run
                    log(f"checkpoint {cfg.resume}: {open_checkpoint(cfg.resume)[0]}")
                    found = cfg.resume
            except (CheckpointError, OSError) as e:
                error = str(e)
        found, error = dist.broadcast_object((found, error))
        if error:
            raise CheckpointError(error)
        if found:
            return found, load_state(found)
    if cfg.resume == "auto":
        log(f"no checkpoint in {cfg.out_dir}: starting fresh")
    old = previous_run(cfg.out_dir)
    if old and cfg.overwrite:
        if dist.is_main():
            remove_run(cfg.out_dir)
        log(f"overwrite=true: removed the earlier run's {', '.join(old)} from {cfg.out_dir}")
    elif old:
        changes = saved_config_changes(cfg)  # None: no config.yaml to compare with
        if cfg.resume == "auto" and changes == []:
            return None, None  # the same run, stopped before its first checkpoint: it starts again
        raise ValueError(another_run_message(cfg.out_dir, old, changes))
    return None, None


def saved_config_changes(cfg) -> list[str] | None:
    """config_changes from the config.yaml of the run in cfg.out_dir to `cfg`, or None when there is none to read."""
    saved = os.path.join(cfg.out_dir, "config.yaml")
    try:
        with open(saved) as f:
            old = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    return config_changes(old, dataclasses.asdict(cfg)) if isinstance(old, dict) else None


def another_run_message(out_dir: str, found: list[str], changes: list[str] | None) -> str:
    """Why a fresh run may not write into out_dir, and the ways out that work: resume=auto comes first only when the
    run there was made with a config this one may resume (a different one would be refused by the resume too)."""
    head = f"out_dir {out_dir!r} holds another run ({', '.join(found)})"
    elsewhere = "write this run elsewhere with out_dir=..., or delete the old one first with overwrite=true"
    if changes:
        return (f"{head}, made with another config ({'; '.join(changes)}), so resume=auto would refuse to continue "
                f"it: {elsewhere} (to continue it instead: python train.py --config {out_dir}/config.yaml resume=auto)")
    return f"{head}: continue it with resume=auto, {elsewhere}"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def config_changes(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every key outside RESUMABLE_KEYS whose value differs (keys that only one side
    knows, i.e. added or removed by a newer version of this code, are not compared)."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(set(a) & set(b)) if k not in RESUMABLE_KEYS and a[k] != b[k]]


def check_resumable(path: str, state: dict, config: dict) -> None:
    """A checkpoint this run may continue: not past `steps`, and written under the same run-changing config."""
    if state["step"] > config["steps"]:
        raise ValueError(f"checkpoint {path} is at step {state['step']}, past this run's steps = {config['steps']}: "
                         "raise steps, or start a new run in another out_dir (or with overwrite=true)")
    changes = config_changes(state["config"], config)
    if changes:
        raise ValueError(f"checkpoint {path} was written under another config ({'; '.join(changes)}): resume with "
                         "the same settings, or start a new run in another out_dir (or with overwrite=true). Keys "
                         f"that may change on resume: {', '.join(RESUMABLE_KEYS)}")


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (what schedulers send before preemption) ask the run to stop after the
    current step with a checkpoint. A second Ctrl-C stops at once; further SIGTERMs (torchrun forwards
    the one it got to its workers) change nothing. Outside the main thread it installs nothing."""

    def __init__(self, log=print, out_dir: str = ""):
        self.signum, self.log, self._old, self.out_dir = 0, log, {}, out_dir
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            print("interrupted again: stopping now, without a checkpoint", flush=True)
            raise SystemExit(128 + signum)
        if not self.signum:
            self.signum = signum
            self.log(f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
                     "(Ctrl-C again to stop at once)")

    def agreed(self) -> int:
        """The signal every rank stops on after this step (0 = go on): the same on all ranks."""
        return int(dist.all_reduce_max(torch.tensor([float(self.signum)]))[0].item())

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def exit(self, step: int, signum: int) -> None:
        """Leave the run after the checkpoint of `step` (every rank, with the agreed `signum`): exit status
        128 + the signal's number, as a shell reports a process the signal ended."""
        self.log(f"interrupted at step {step}; resume with resume=auto"
                 + (f": the same command plus resume=auto continues from {self.out_dir}/checkpoints" if self.out_dir
                    else ""))
        self.restore()
        dist.shutdown()
        sys.exit(128 + signum)


def verify_command(argv: list[str]) -> int:
    """python -m dynamo.checkpoint verify DIR: check one checkpoint, or every checkpoint of a run directory,
    without loading any of it; one line each. Exit status 1 if any fails its check."""
    asked = bool({"-h", "--help"} & set(argv))
    if asked or len(argv) != 2 or argv[0] != "verify":
        print("usage: python -m dynamo.checkpoint verify DIR   (a checkpoint, or a run's out_dir: each of its "
              "checkpoints)\nChecks every file against the checkpoint's manifest.json (SHA-256 and size), and that "
              "its trainer state and optimizer metadata hold data only; loads nothing into a model. Exit status 1 "
              "if any check fails.")
        return 0 if asked else 2
    target = argv[1]
    root = os.path.join(target, "checkpoints")
    if os.path.isdir(root):
        paths = [os.path.join(root, name) for name in sorted(os.listdir(root)) if _STEP_DIR.match(name)]
    elif os.path.isdir(target):
        paths = [target]
    else:
        print(f"error: {target} is neither a checkpoint nor a run directory")
        return 2
    if not paths:
        print(f"{target}: no checkpoints")
    bad = 0
    for path in paths:
        try:
            print(f"{path}: {open_checkpoint(path)[0]}; trainer state and optimizer metadata hold data only")
        except (CheckpointError, OSError) as e:
            bad += 1
            print(f"{path}: FAILED: {e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(verify_command(sys.argv[1:]))
