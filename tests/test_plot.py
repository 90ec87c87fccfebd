# python -m pytest -q tests/test_plot.py  — python -m dynamo.plot on hand-written metrics.jsonl files (no training).
import json
import os
import subprocess
import sys

import pytest

from dynamo import plot
from dynamo.step_metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_run(path, steps: int = 12, slope: float = 0.01):
    """A run directory whose metrics.jsonl has train rows for steps 1..steps and eval rows at 0 and the end."""
    path.mkdir(parents=True)
    rows = [{"kind": "eval", "step": 0, "eval/accuracy": 0.3, "eval/se": 0.02, "eval/add1": 0.5}]
    for s in range(1, steps + 1):
        acc = 0.3 + slope * s
        rows.append({"kind": "train", "step": s, "reward": 2 * acc - 1, "accuracy": acc, "entropy": 0.5,
                     "response_length": 20.0, "zero_adv_groups": 0.25, "alloc/count_min": 4, "alloc/count_max": 12})
    rows.append({"kind": "eval", "step": steps, "eval/accuracy": 0.3 + slope * steps, "eval/se": 0.02})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_metrics_splits_rows_by_kind(tmp_path):
    rows = read_metrics(fake_run(tmp_path / "a", steps=3))
    assert [r["step"] for r in rows["train"]] == [1, 2, 3] and [r["step"] for r in rows["eval"]] == [0, 3]


def test_names_are_basenames_unless_they_clash(tmp_path):
    assert plot.run_names(["runs/a", "runs/b/"]) == ["a", "b"]
    assert plot.run_names(["x/grpo/seed0", "x/default/seed0"]) == ["grpo/seed0", "default/seed0"]


def test_running_mean_is_trailing():
    assert plot.running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_two_runs_make_one_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a, b = fake_run(tmp_path / "runs" / "a"), fake_run(tmp_path / "other" / "a", slope=0.02)  # basenames clash
    out = tmp_path / "figs" / "curves.png"
    plot.main([str(a), str(b), "--out", str(out), "--window", "3"])
    assert capsys.readouterr().out.strip() == str(out)  # the path it wrote
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_a_directory_without_metrics_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty has no metrics.jsonl"):
        plot.main([str(fake_run(tmp_path / "a")), str(tmp_path / "empty")])


def test_missing_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(SystemExit, match="matplotlib is needed for plots: pip install matplotlib"):
        plot.main([str(fake_run(tmp_path / "a")), "--out", str(tmp_path / "p.png")])
    assert not (tmp_path / "p.png").exists()


def test_help_answers():
    res = subprocess.run([sys.executable, "-m", "dynamo.plot", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("usage: python -m dynamo.plot")
    assert "--window" in res.stdout and "held-out" in res.stdout
