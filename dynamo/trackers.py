"""Experiment trackers (config key `loggers`): TensorBoard and Weights & Biases get every metrics.jsonl row too.

    python train.py loggers=[tensorboard]                  # event files in out_dir: tensorboard --logdir runs
    WANDB_MODE=offline python train.py loggers=[wandb]     # later: wandb sync runs/default/wandb/offline-run-*

Decided once, when the run starts: `open_trackers` opens the named trackers on rank 0 (the other ranks log
nothing), and step_metrics.write_row hands each metrics.jsonl row, train and eval, to them as well. A tracker gets
the row's numbers at the row's step under the row's key names: the values of a nested mapping under key/subkey
(`alloc/count_hist/8`, `alloc/budget_by_level/add1`), booleans as 0/1; text and lists are left out, and so are
`kind` and `step` (the step is the tracker's step). The resolved config is the tracker run's config; the run's id
and name (out_dir/run.json, fixed when the run starts and kept when it resumes; summary.json repeats them) are the
tracker run's id and name, so a resumed run continues the same tracker run. Both packages are optional and imported
only when named; a named one that is missing stops the run before any work, with the command that installs it.
"""
from __future__ import annotations

import atexit
import glob
import importlib
import json
import os
import re
import secrets

from dynamo import distributed as dist
from dynamo.config import RUN_FILE, ConfigError, config_path, dump, run_identity, to_dict, with_main_config

MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}  # what each name imports
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}
EVENT_FILES = "events.out.tfevents.*"  # TensorBoard's event files, written straight into out_dir


def check_installed(names: list) -> None:
    """Import each named tracker's package now (and only those): a missing one is a ConfigError naming its install."""
    for name in names:
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            raise ConfigError(f"loggers: {name} is named but its package is not installed: {INSTALL[name]} "
                              f"(or leave {name} out of loggers)") from None


def scalars(row: dict) -> dict[str, float]:
    """The numbers of a metrics.jsonl row under their key names, nested mappings flattened with '/'; `kind`, `step`,
    text and lists left out."""
    out: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (bool, int, float)):
            out[prefix] = float(value)

    for key, value in row.items():
        if key not in ("kind", "step"):
            walk(key, value)
    return out


def run_name(cfg, argv: list[str]) -> str:
    """<config file name>-seed<seed>[-rl<rl_seed>], e.g. default-seed0: what the trackers show for the run."""
    stem = os.path.splitext(os.path.basename(config_path(with_main_config(argv))))[0]
    rl = f"-rl{cfg.rl_seed}" if 0 <= cfg.rl_seed != cfg.seed else ""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{stem}-seed{cfg.seed}{rl}")[:48]


def claim_run_id(cfg, argv: list[str], fresh: bool) -> dict:
    """out_dir/run.json, {"id", "name"}: a new id when the run starts fresh (the name and 8 random hex digits, so a
    rerun with overwrite=true is another tracker run), the saved one when it resumes."""
    path = os.path.join(cfg.out_dir, RUN_FILE)
    if not fresh and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    name = run_name(cfg, argv)
    run = {"id": f"{name.replace('.', '_')}-{secrets.token_hex(4)}", "name": name}
    with open(path + ".tmp", "w") as f:
        json.dump(run, f)
    os.replace(path + ".tmp", path)
    return run


class TensorBoard:
    """Event files in out_dir, so `tensorboard --logdir runs` lists each run by its folder. A resumed run from step s
    opens a new event file with purge_step s: TensorBoard hides the earlier file's events at steps >= s, the rows
    metrics.jsonl drops too, so every step appears once."""

    def __init__(self, cfg, identity: dict, start: int):
        from torch.utils.tensorboard import SummaryWriter
        if start == 1:  # a fresh run owns its directory's logs (as metrics.jsonl: step_metrics.open_log)
            for old in glob.glob(os.path.join(cfg.out_dir, EVENT_FILES)):
                os.remove(old)
        self.writer = SummaryWriter(log_dir=cfg.out_dir, purge_step=start if start > 1 else None)
        if start == 1:
            self.writer.add_text("config", "    " + dump(cfg).replace("\n", "\n    "), 0)  # markdown: a code block
            self.writer.add_text("run", "    " + json.dumps(identity, indent=1).replace("\n", "\n    "), 0)

    def log(self, row: dict) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, global_step=row["step"])
        self.writer.flush()  # a row a step: what metrics.jsonl holds, the event file holds as well

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A Weights & Biases run with the run's id (resume="allow": a resumed run continues it), name and resolved
    config, its files under out_dir/wandb. Project: $WANDB_PROJECT, else "dynamo"; WANDB_MODE=offline logs without
    a network (`wandb sync` uploads later)."""

    def __init__(self, cfg, identity: dict, start: int):
        import wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "dynamo", id=identity["run_id"],
                              name=identity["run_name"], resume="allow", dir=cfg.out_dir,
                              config={**to_dict(cfg), "run": identity})

    def log(self, row: dict) -> None:
        self.run.log(scalars(row), step=row["step"])

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB}


def open_trackers(cfg, argv: list[str], start: int) -> list:
    """The trackers of `cfg.loggers`, opened for a run that starts (start 1) or resumes at step `start`; [] on every
    rank but 0. Rank 0 also fixes the run's id and name in out_dir/run.json, loggers or not. Each tracker is closed
    when the process exits (its last rows are flushed as they are logged)."""
    if not dist.is_main():
        return []
    claim_run_id(cfg, argv, fresh=start == 1)
    if not cfg.loggers:
        return []
    identity = run_identity(argv, cfg)
    opened = [TRACKERS[name](cfg, identity, start) for name in cfg.loggers]
    for tracker in opened:
        atexit.register(tracker.close)
    return opened
