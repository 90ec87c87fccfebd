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


def test_default_output_is_the_first_runs_directory(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    a, b = fake_run(tmp_path / "runs" / "a"), fake_run(tmp_path / "runs" / "b")
    monkeypatch.chdir(tmp_path)
    plot.main([os.path.join("runs", "a"), os.path.join("runs", "b")])
    assert capsys.readouterr().out.strip() == str(a / "plot.png") and (a / "plot.png").exists()
    assert sorted(os.listdir(tmp_path)) == ["runs"]  # nothing left in the working directory


def test_gitignore_covers_what_the_commands_write():
    """Run folders (their plots, tracker files), eval.py's results, the warm-up cache, a plot given as --out in the
    checkout's root (the old default, plot.png) and W&B's folder where it lands outside a run."""
    if subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    for path in ("runs/default/plot.png", "runs/default/events.out.tfevents.1.h.2.0", "runs/eval/x/table.md",
                 "cache/tiny-0/config.json", "plot.png", "curves.png", "wandb/latest-run"):
        res = subprocess.run(["git", "-C", ROOT, "check-ignore", "-q", "--no-index", path], capture_output=True)
        assert res.returncode == 0, f"{path} is not ignored"
    assert subprocess.run(["git", "-C", ROOT, "check-ignore", "-q", "--no-index", "assets/x.png"]).returncode == 1


def drawn(monkeypatch, dirs):
    """The figure plot_runs draws for `dirs` (kept open): every title and text on it."""
    pytest.importorskip("matplotlib")
    real = plot.pyplot()
    kept = []

    class Keep:
        def __getattr__(self, name):
            return getattr(real, name)

        def close(self, fig):
            kept.append(fig)

    monkeypatch.setattr(plot, "pyplot", lambda: Keep())
    plot.plot_runs([str(d) for d in dirs], str(dirs[0] / "p.png"))
    (fig,) = kept
    texts = [ax.get_title() for ax in fig.axes] + [t.get_text() for ax in fig.axes for t in ax.texts]
    lines = [line for ax in fig.axes[:1] for line in ax.get_lines() if line.get_alpha() is None]
    real.close(fig)
    return " | ".join(texts).replace("\n", " "), lines


def test_runs_with_the_same_curves_stay_visible(tmp_path, monkeypatch):
    a, b, c = fake_run(tmp_path / "a"), fake_run(tmp_path / "b"), fake_run(tmp_path / "c", slope=0.02)
    text, lines = drawn(monkeypatch, [a, b, c])
    assert len(lines) == 3 and len({(line.get_linestyle(), line.get_marker()) for line in lines}) == 3
    assert "identical curves" in text and "a = b: every panel" in text
    assert "a = c: entropy, response length" in text and "a = c: training reward" not in text  # c learns faster
    assert plot.coinciding({"x": [([1, 2], [0.5, float("nan")])], "y": [([1, 2], [0.5, float("nan")])],
                            "z": [([1, 2], [0.5, 0.6])]}) == ["x = y: training reward"]


def with_config(path, *args):
    from dynamo.config import dump, load_config
    (path / "config.yaml").write_text(dump(load_config(list(args))))
    return path


def test_the_entropy_panel_says_which_rows_each_run_averaged_over(tmp_path, monkeypatch):
    configs = os.path.join(ROOT, "configs")
    dynamo = with_config(fake_run(tmp_path / "dynamo"), "--config", os.path.join(configs, "default.yaml"))
    grpo = with_config(fake_run(tmp_path / "grpo"), "--config", os.path.join(configs, "grpo.yaml"))
    clip_cov = with_config(fake_run(tmp_path / "clip_cov"), "--config", os.path.join(configs, "clip_cov.yaml"))
    assert plot.entropy_rows(str(grpo), []) == "advantage ≠ 0"  # GRPO skips zero-advantage rows (auto)
    assert plot.entropy_rows(str(clip_cov), []) == plot.entropy_rows(str(dynamo), []) == "every row"
    text, _ = drawn(monkeypatch, [grpo, clip_cov])
    assert "entropy: NOT like with like" in text
    assert "advantage ≠ 0: grpo" in text and "every row: clip_cov" in text
    text, _ = drawn(monkeypatch, [clip_cov, dynamo])  # like with like: the title says over which rows
    assert "entropy (every row)" in text and "NOT like with like" not in text
    # without a config.yaml, the rows tell: a run that skipped some rows averaged over the others
    assert plot.entropy_rows(str(tmp_path / "none"), [{"rows_skipped": 0.0}, {"rows_skipped": 0.25}]) == "advantage ≠ 0"
    assert plot.entropy_rows(str(tmp_path / "none"), [{"rows_skipped": 0.0}]) == "every row"


def test_x_axis_is_rollouts_generated_when_every_run_logged_them(tmp_path):
    a = fake_run(tmp_path / "a", steps=3)
    rows = read_metrics(a)
    assert plot.x_of(rows, "step") == {0: 0, 1: 1, 2: 2, 3: 3}
    with pytest.raises(ValueError, match="--x step"):  # an older run without the counter
        plot.plot_runs([str(a)], str(tmp_path / "p.png"), x="rollouts")
    lines = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    total = 0
    for r in lines:
        if r["kind"] == "train":
            total += 100 * r["step"]  # a method whose steps generate more and more
            r["rollouts/generated_total"] = total
    (a / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert plot.x_of(read_metrics(a), "rollouts") == {0: 0, 1: 100, 2: 300, 3: 600}
    pytest.importorskip("matplotlib")
    assert os.path.exists(plot.plot_runs([str(a)], str(tmp_path / "p.png")))


def test_reward_note_when_methods_choose_their_training_rows():
    assert "dapo" in plot.reward_note({"dapo": "dapo", "default": "dynamo"})
    assert plot.reward_note({"grpo": "uniform", "default": "dynamo"}) == ""
    assert plot.reward_note({"a": "greso", "b": "greso"}) == ""  # like with like
    assert "a, b" in plot.reward_note({"a": "greso", "b": "reinforce_ada"})


def test_method_panels_only_when_logged():
    rows = {"train": [{"step": 1, "greso/p_easy": 0.5}], "eval": []}
    p_easy = next(p for p in plot.TRAIN_PANELS if p[0] == "p_easy (greso)")
    assert p_easy[0] in plot.OPTIONAL and p_easy[2](rows["train"][0]) == 0.5
    spread = next(p for p in plot.TRAIN_PANELS if p[0] == "allocation spread")[2]
    assert spread({"rollouts/per_prompt_max": 32, "rollouts/per_prompt_min": 8, "alloc/count_max": 8,
                   "alloc/count_min": 8}) == 24  # what was generated per prompt, not the trained rows
