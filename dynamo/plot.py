"""Curves of several train.py runs side by side, in one PNG.

    python -m dynamo.plot runs/default runs/grpo                  # -> runs/plot.png, beside the first run
    python -m dynamo.plot runs/exp/*/seed0 --out curves.png --window 20

Panels, against the RL step, from each run's metrics.jsonl: training reward and accuracy (each step faint,
the running mean over --window steps on top), entropy, response length, the fraction of zero-advantage
groups, the allocation spread (most minus fewest rollouts any prompt got that step) and the held-out
pass@1 of the evaluation rows with its standard error. matplotlib is optional: only plotting needs it.
"""
from __future__ import annotations

import argparse
import os
import sys

from dynamo.step_metrics import read_metrics

NEEDS_MATPLOTLIB = "matplotlib is needed for plots: pip install matplotlib"


def _field(key: str):
    return lambda row: row.get(key, float("nan"))  # a field this run did not log: a gap in its curve


# (title, y label, value of a train row, smoothed): one panel each, in this order
TRAIN_PANELS = [
    ("training reward", "mean reward (±1)", _field("reward"), True),
    ("training accuracy", "fraction of rollouts correct", _field("accuracy"), True),
    ("entropy", "nats per response token", _field("entropy"), False),
    ("response length", "tokens per rollout", _field("response_length"), False),
    ("zero-advantage groups", "fraction of prompts", _field("zero_adv_groups"), False),
    ("allocation spread", "max − min rollouts per prompt",
     lambda r: r.get("alloc/count_max", float("nan")) - r.get("alloc/count_min", float("nan")), False),
]


def pyplot():
    """matplotlib.pyplot on the Agg backend (writes files, needs no display); ImportError when not installed."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(NEEDS_MATPLOTLIB) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def run_names(dirs: list[str]) -> list[str]:
    """Legend names: each directory's basename, or parent/basename for all when basenames clash
    (runs/exp/grpo/seed0 and runs/exp/default/seed0 are grpo/seed0 and default/seed0)."""
    paths = [os.path.normpath(os.path.abspath(d)) for d in dirs]
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) < len(names):
        names = [os.path.join(os.path.basename(os.path.dirname(p)), os.path.basename(p)) for p in paths]
    return names


def running_mean(ys: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each point (fewer at the start)."""
    return [sum(ys[max(0, i - window + 1):i + 1]) / len(ys[max(0, i - window + 1):i + 1]) for i in range(len(ys))]


def held_out_curve(evals: list[dict]) -> tuple[list, list, list | None]:
    """(steps, accuracy, SE) of the held-out split; for a run without one (JSONL data), the mean avg@k of its
    eval_data benchmarks (no SE)."""
    rows = [r for r in evals if "eval/accuracy" in r]
    if rows:
        return [r["step"] for r in rows], [r["eval/accuracy"] for r in rows], [r["eval/se"] for r in rows]
    rows = [(r["step"], v) for r in evals for k, v in r.items() if k.startswith("eval/mean/avg@")]
    return [s for s, _ in rows], [v for _, v in rows], None


def plot_runs(dirs: list[str], out: str = "plot.png", window: int = 10) -> str:
    """Draw the runs in `dirs` into the PNG `out`; returns its path. FileNotFoundError names a directory
    without metrics.jsonl, ImportError says matplotlib is missing."""
    runs = {name: read_metrics(d) for name, d in zip(run_names(dirs), dirs)}  # every directory checked first
    plt = pyplot()
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    axes = axes.flat  # 6 training panels, held-out accuracy, the legend
    for i, (name, rows) in enumerate(runs.items()):
        color = f"C{i % 10}"
        steps = [r["step"] for r in rows["train"]]
        for ax, (_, _, value, smooth) in zip(axes, TRAIN_PANELS):
            ys = [value(r) for r in rows["train"]]
            if smooth:  # per-step batch means are noisy: the trend is the running mean
                ax.plot(steps, ys, color=color, alpha=0.25, lw=0.8)
                ys = running_mean(ys, window)
            ax.plot(steps, ys, color=color, lw=1.4)
        steps, acc, se = held_out_curve(rows["eval"])
        axes[6].errorbar(steps, acc, yerr=se, color=color, marker="o", ms=3, capsize=3)
        axes[7].plot([], [], color=color, lw=2, label=name)  # the legend's entry, drawn nowhere
    titles = [(t + (f" (running mean over {window})" if smooth else ""), y) for t, y, _, smooth in TRAIN_PANELS]
    for ax, (title, ylabel) in zip(axes, titles + [("held-out pass@1 (± SE), or the eval_data mean", "pass@1")]):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[7].axis("off")
    axes[7].legend(loc="center", title="run", fontsize=9)
    fig.tight_layout()
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    head, rest = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(prog="python -m dynamo.plot", description=head, epilog=rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="train.py output directories (each holds metrics.jsonl)")
    parser.add_argument("--out", default="", help="the PNG to write (default: plot.png in the folder that holds the "
                        "first run, e.g. runs/plot.png: never a file left in the repository)")
    parser.add_argument("--window", type=int, default=10, help="steps in the running mean (default: 10)")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error(f"--window must be >= 1, got {args.window}")
    try:
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.runs[0].rstrip("/"))), "plot.png")
        print(os.path.abspath(plot_runs(args.runs, out, args.window)))
    except (FileNotFoundError, ImportError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
