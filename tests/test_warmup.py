# python -m pytest -q tests/test_warmup.py  — the shipped warmed start, the warm-up's window rule and its messages.
import json
import os

import pytest
import torch

from dynamo import warmup
from dynamo.config import load_config
from tests.helpers import SHIPPED_START

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = load_config(["--config", os.path.join(ROOT, "configs", "default.yaml")])
INFO = json.load(open(os.path.join(SHIPPED_START, "warmup.json")))


def test_shipped_start_belongs_to_the_default_config():
    # A change to any warm-up setting (or to the rule's version) makes the shipped start stale: rebuild it.
    assert warmup.SHIPPED == SHIPPED_START
    assert INFO["key"] == warmup.cache_key(DEFAULT), f"stale shipped start: rebuild it with `{warmup.REBUILD_SHIPPED}`"
    assert INFO["settings"] == warmup.settings(DEFAULT)


def test_shipped_weights_score_what_their_record_says_inside_the_window():
    """Re-measure the snapshot's check accuracy with the warm-up's own check: the weights and their record agree."""
    model, tokenizer, _ = warmup.warm_up(DEFAULT, torch.device("cpu"), log=lambda *a: None)
    w = DEFAULT.warmup
    dev = [warmup.task.Problem(f"dev:{q}", q, a, "dev")
           for q, a in warmup._dev_pairs(DEFAULT.task_levels, {p.prompt for p in warmup.task.split(
               DEFAULT.task_levels, DEFAULT.seed, 0, DEFAULT.eval_prompts)[1]}, DEFAULT.seed)]
    check = dict(max_new_tokens=DEFAULT.rollout.max_new_tokens,
                 seed=warmup.derive_seed(DEFAULT.seed, "warmup", INFO["step"]))
    model.eval()
    pass1 = warmup.accuracy(model, tokenizer, dev, greedy=False, **check)
    greedy = warmup.accuracy(model, tokenizer, dev, greedy=True, **check)
    # the seeded sampler is robust to last-bit differences between CPUs; allow two problems either way
    assert abs(pass1 - INFO["pass1"]) <= 2 / len(dev) and abs(greedy - INFO["greedy"]) <= 2 / len(dev)
    assert w.target_low <= pass1 <= w.target_high and greedy - pass1 >= w.min_greedy_gap
    assert INFO["checks"][-1]["step"] == INFO["step"]  # the record holds the whole selection history


def test_the_shipped_start_is_used_only_for_its_own_settings(monkeypatch, tmp_path):
    def no_training(cfg, device, log):
        raise LookupError("would train")
    monkeypatch.setattr(warmup, "train", no_training)
    lines = []
    cfg = load_config(["--config", os.path.join(ROOT, "configs", "default.yaml"), f"warmup.cache_dir={tmp_path}"])
    warmup.warm_up(cfg, torch.device("cpu"), log=lines.append)
    assert "shipped warmed start" in lines[0] and warmup.REBUILD_SHIPPED in lines[0]
    assert f"{INFO['made']['cpu_capability']} kernels" in lines[0]  # where it came from
    for other in (["seed=1"], ["warmup.shipped=false"], ["eval_prompts=128"], ["task_levels=[add1, add2]"]):
        cfg = load_config(["--config", os.path.join(ROOT, "configs", "default.yaml"), f"warmup.cache_dir={tmp_path}",
                           *other])
        said = []
        with pytest.raises(LookupError):
            warmup.warm_up(cfg, torch.device("cpu"), log=said.append)
        name = other[0].split("=")[0].replace("task_levels", "levels")
        # before training, one line says why the shipped start does not serve (not with warmup.shipped=false)
        assert (said == []) if name == "warmup.shipped" else (
            len(said) == 1 and f"other values of {name}" in said[0] and "rl_seed" in said[0])


def test_a_warm_up_that_stays_below_the_window_stops_and_says_what_to_change(tmp_path):
    cfg = load_config(["warmup.steps=4", "warmup.check_every=2", "warmup.batch_size=8", f"warmup.cache_dir={tmp_path}"])
    with pytest.raises(warmup.WarmupError, match=r"below the window \[0.3, 0.5\]: raise warmup.steps"):
        warmup.warm_up(cfg, torch.device("cpu"), log=lambda *a: None)
    assert not os.listdir(tmp_path)  # nothing cached


def test_a_jump_over_the_window_names_both_checks_and_the_fix():
    w = DEFAULT.warmup
    msg = warmup._miss_message(w, [{"step": 300, "pass1": 0.21}, {"step": 305, "pass1": 0.62}])
    assert "from 0.210 at step 300 to 0.620 at step 305" in msg and "warmup.fine_check_every (now 5)" in msg


def test_out_of_gap_snapshots_fall_back_to_the_largest_gap_inside_the_window(tmp_path):
    # target_low 0 puts every snapshot inside the window; a gap of 2 cannot be met, so the largest gap wins
    cfg = load_config(["warmup.steps=6", "warmup.check_every=3", "warmup.fine_check_every=3", "warmup.target_low=0",
                       "warmup.target_high=1", "warmup.min_greedy_gap=2", "warmup.batch_size=8",
                       "task_levels=[add1, add2, add3]", "eval_prompts=16", f"warmup.cache_dir={tmp_path}"])
    lines = []
    _, _, info = warmup.warm_up(cfg, torch.device("cpu"), log=lines.append)
    assert [c["step"] for c in info["checks"]] == [3, 6]
    best = max(info["checks"], key=lambda c: c["greedy"] - c["pass1"])
    assert info["step"] == best["step"] and "had greedy gap >= 2.0" in info["chosen_by"]
    assert any("met the greedy-gap condition" in line for line in lines)
    reused = []
    warmup.warm_up(cfg, torch.device("cpu"), log=reused.append)  # the cache says where it came from
    assert "reusing cached model" in reused[0] and info["chosen_by"] in reused[0] and "Delete that directory" in reused[0]


def test_help_says_how_to_rebuild_the_shipped_start(capsys):
    warmup.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m dynamo.warmup") and warmup.REBUILD_SHIPPED in out
