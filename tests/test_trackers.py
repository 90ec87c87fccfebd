# python -m pytest -q tests/test_trackers.py  — config key `loggers`: TensorBoard and W&B get metrics.jsonl's rows.
import json
import math
import os
import shutil
import sys
import types

import pytest

import train
from dynamo import checkpoint, launch, trackers
from dynamo.config import ConfigError, load_config
from dynamo.step_metrics import open_logs, write_row
from tests.helpers import SHIPPED_START

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "default.yaml")
SMALL = ["prompts_per_step=4", "rollouts_per_prompt=4", "eval_prompts=8", "eval_samples=1", "train_pool=12",
         f"model={SHIPPED_START}", "task_levels=[add2, add3]", "rollout.max_new_tokens=40", "sample_every=0",
         "eval_every=2", "checkpoint_every=2"]


class FakeWandb(types.ModuleType):
    """What the W&B tracker calls of the `wandb` package, recorded: init's arguments, each log, finish."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            id, name = kwargs["id"], kwargs["name"]

            def log(self, values, step):
                fake.logged.append((step, dict(values)))

            def finish(self):
                fake.finished += 1
        return Run()


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def metrics_rows(out) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def test_a_row_reaches_a_tracker_under_its_own_names():
    row = {"kind": "train", "step": 3, "reward": -0.25, "skipped_steps": 0, "entropy": float("nan"),
           "alloc/count_hist": {"4": 2, "8": 1}, "alloc/budget_by_level": {"add2": 8}, "flag": True,
           "note": "text", "levels": [1, 2]}
    got = trackers.scalars(row)
    assert set(got) == {"reward", "skipped_steps", "entropy", "alloc/count_hist/4", "alloc/count_hist/8",
                        "alloc/budget_by_level/add2", "flag"}  # kind, step, text and lists left out
    assert got["reward"] == -0.25 and got["alloc/count_hist/4"] == 2.0 and got["flag"] == 1.0
    assert math.isnan(got["entropy"])


def test_loggers_names_known_trackers_once():
    assert load_config(["loggers=[tensorboard, wandb]"]).loggers == ["tensorboard", "wandb"]
    assert load_config([]).loggers == []  # metrics.jsonl only, by default
    for bad in ("loggers=[tensorbord]", "loggers=[wandb, wandb]", "loggers=wandb"):
        with pytest.raises(ConfigError, match="'loggers'"):
            load_config([bad])


@pytest.mark.parametrize("name, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_tracker_stops_the_run_before_any_work_naming_its_install(name, module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    with pytest.raises(SystemExit, match=f"config error: loggers: {name} is named but its package is not installed: "
                                         f"pip install {name}"):
        launch.read_config([f"loggers=[{name}]", f"out_dir={tmp_path / 'out'}"], "")
    assert not (tmp_path / "out").exists()  # nothing written: the run stopped at its config


def test_only_named_trackers_are_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: fine while not named
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    trackers.check_installed([])
    assert launch.read_config(["steps=2"], "").loggers == []


def test_wandb_run_gets_the_config_id_name_and_every_row(fake_wandb, tmp_path, monkeypatch):
    """The tracker logic without the package: a fake `wandb` records what the tracker sends."""
    monkeypatch.setattr(trackers, "run_identity", lambda argv, cfg: {"run_id": json.load(
        open(os.path.join(cfg.out_dir, "run.json")))["id"], "run_name": "n", "config_file": "c"})
    cfg = load_config(["--config", CONFIG, "loggers=[wandb]", f"out_dir={tmp_path}"])
    metrics, _ = open_logs(cfg, 1, ["--config", CONFIG])
    rows = [{"kind": "eval", "step": 0, "eval/accuracy": 0.5},
            {"kind": "train", "step": 1, "reward": 0.1, "alloc/count_hist": {"4": 3}},
            {"kind": "eval", "step": 1, "eval/accuracy": 0.6}]
    for row in rows:
        write_row(metrics, row)
    (init,) = fake_wandb.inits
    run = json.load(open(tmp_path / "run.json"))
    assert run["name"] == "default-seed0" and run["id"].startswith("default-seed0-")
    assert (init["id"], init["resume"], init["dir"]) == (run["id"], "allow", str(tmp_path))
    assert init["config"]["modulation"]["compensation"] is True and init["config"]["out_dir"] == str(tmp_path)
    assert fake_wandb.logged == [(0, {"eval/accuracy": 0.5}), (1, {"reward": 0.1, "alloc/count_hist/4": 3.0}),
                                 (1, {"eval/accuracy": 0.6})]
    assert [json.loads(line) for line in open(tmp_path / "metrics.jsonl")] == rows  # the same rows as the tracker's
    # resuming at step 2 continues the same tracker run; a fresh start (overwrite) is another one
    open_logs(cfg, 2, ["--config", CONFIG])
    open_logs(cfg, 1, ["--config", CONFIG])
    assert fake_wandb.inits[1]["id"] == run["id"] and fake_wandb.inits[2]["id"] != run["id"]


def test_only_rank_0_logs(fake_wandb, tmp_path, monkeypatch):
    monkeypatch.setattr(trackers.dist, "is_main", lambda: False)
    monkeypatch.setattr("dynamo.step_metrics.dist.is_main", lambda: False)
    cfg = load_config(["loggers=[wandb]", f"out_dir={tmp_path}"])
    assert open_logs(cfg, 1) == (None, None) and fake_wandb.inits == [] and not (tmp_path / "run.json").exists()


def test_tracker_outputs_belong_to_the_run(tmp_path):
    """A fresh run into a folder holding only another run's tracker files stops; overwrite=true removes them."""
    (tmp_path / "events.out.tfevents.1.host.1.0").write_text("x")
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "debug.log").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    assert checkpoint.previous_run(str(tmp_path)) == ["wandb", "events.out.tfevents.1.host.1.0"]
    checkpoint.remove_run(str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


def scalars_of(out) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard reads out_dir's event files (all of them, purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(out) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's numbers as the trackers should have them."""
    found: dict[str, list] = {}
    for row in metrics_rows(out):
        for key, value in trackers.scalars(row).items():
            found.setdefault(key, []).append((row["step"], value))
    return found


def assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for tag, points in expected.items():
        steps = [s for s, _ in got[tag]]
        assert steps == [s for s, _ in points] and len(set(steps)) == len(steps), tag  # each step once
        for (_, a), (_, b) in zip(got[tag], points):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-9), tag  # float32


def test_tensorboard_holds_metrics_jsonl_and_a_resume_adds_no_step_twice(tmp_path, fake_wandb):
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    args = ["--config", CONFIG, *SMALL, f"out_dir={out}", "loggers=[tensorboard, wandb]"]
    train.main([*args, "steps=3"])
    rows = metrics_rows(out)
    assert [(r["kind"], r["step"]) for r in rows] == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2),
                                                      ("train", 3), ("eval", 3)]
    assert_same(scalars_of(out), expected_scalars(out))  # train and eval rows, the same values at the same steps
    logged = {}
    for step, values in fake_wandb.logged:  # W&B (faked) got the same numbers
        for key, value in values.items():
            logged.setdefault(key, []).append((step, value))
    assert_same(logged, expected_scalars(out))
    summary = json.load(open(out / "summary.json"))
    assert summary["run_id"] == fake_wandb.inits[0]["id"] == json.load(open(out / "run.json"))["id"]
    assert fake_wandb.inits[0]["name"] == summary["run_name"] == "default-seed0"
    # killed after step 3 was logged, before its checkpoint: the resume from step 2 logs step 3 again
    shutil.rmtree(out / "checkpoints" / "step-000003")
    os.remove(out / "final")
    train.main([*args[:-1], "loggers=[tensorboard]", "steps=3", "resume=auto"])  # trackers may change on resume
    assert len([f for f in os.listdir(out) if f.startswith("events.out.tfevents.")]) == 2  # one stream, 2 files
    assert [(r["kind"], r["step"]) for r in metrics_rows(out)] == [(r["kind"], r["step"]) for r in rows]
    assert_same(scalars_of(out), expected_scalars(out))  # step 3 once: the earlier file's step 3 is purged
    assert len(fake_wandb.inits) == 1
    train.main([*args, "steps=4", "resume=auto"])  # W&B named again: the same tracker run continues
    assert fake_wandb.inits[1]["id"] == fake_wandb.inits[0]["id"]
    assert_same(scalars_of(out), expected_scalars(out))


def test_real_wandb_offline(tmp_path, monkeypatch):
    """The W&B tracker against the real package, offline (no network): id, name, config and the logged values."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(["--config", CONFIG, "loggers=[wandb]", f"out_dir={tmp_path}"])
    identity = {"run_id": "default-seed0-0123abcd", "run_name": "default-seed0", "config_file": "configs/default.yaml"}
    tracker = trackers.WandB(cfg, identity, 1)
    try:
        tracker.log({"kind": "eval", "step": 0, "eval/accuracy": 0.25})
        tracker.log({"kind": "train", "step": 1, "reward": 0.5, "alloc/count_hist": {"4": 2}})
        run = tracker.run
        assert (run.id, run.name) == ("default-seed0-0123abcd", "default-seed0")
        assert run.config["steps"] == 80 and run.config["run"]["config_file"] == "configs/default.yaml"
        tracker.log({"kind": "train", "step": 2, "reward": 0.75})  # W&B commits step 1 when step 2 arrives
        assert run.summary["reward"] == 0.5 and run.summary["alloc/count_hist/4"] == 2.0
        assert (run.summary["_step"], run.summary["eval/accuracy"]) == (1, 0.25)
    finally:
        tracker.close()
    assert wandb.run is None
    assert any(d.endswith("-default-seed0-0123abcd") for d in os.listdir(tmp_path / "wandb"))  # offline run files
