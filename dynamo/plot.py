"""Curves of several train.py runs side by side, in one PNG.

    python -m dynamo.plot runs/default runs/grpo                  # -> runs/default/plot.png, in the first run
    python -m dynamo.plot runs/exp/*/seed0 --out runs/exp/curves.png --window 20

Panels, against the rollouts generated so far (or the RL step: --x step), from each run's metrics.jsonl:
training reward and accuracy (each step faint, the running mean over --window steps on top), entropy,
response length, the fraction of zero-advantage groups, the allocation spread (most minus fewest rollouts any
prompt got that step), how the step's groups were collected (rollouts generated and trained on, the
informative share, generation rounds), the allocation methods' own quantities (GRESO's skips, p_easy and
p_hard; Reinforce-Ada's exits; drawn only when a run logged them) and the held-out pass@1 of the evaluation
rows with its standard error. Training reward and accuracy are over the rows a run trained on: dapo, greso and
reinforce_ada choose those from what they generate, and the legend says so when they sit beside other runs.
Each run has its own colour, dash pattern and markers,
so a run whose curve coincides with another's stays visible, and the legend names the runs that coincide.
The entropy panel says which rows each run's entropy is a mean over: a run that skips zero-advantage rows
(skip_zero_advantage, read from its config.yaml) averages over the other rows only, which is not comparable
with a run that averages over every row. matplotlib is optional: only plotting needs it.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

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
    ("allocation spread", "max − min rollouts generated per prompt", lambda r: (
        r["rollouts/per_prompt_max"] - r["rollouts/per_prompt_min"] if "rollouts/per_prompt_max" in r
        else r.get("alloc/count_max", float("nan")) - r.get("alloc/count_min", float("nan"))), False),
    # how the step's groups were collected (dynamo/collect.py): every allocation method logs these
    ("rollouts generated per step", "rollouts (all ranks)", _field("rollouts/generated"), False),
    ("rollouts trained on per step", "rollouts (all ranks)", _field("rollouts/trained"), False),
    ("informative rollouts", "share of generated in groups not all equal", _field("rollouts/informative_frac"), True),
    ("generation rounds per step", "rounds", _field("rollouts/rounds"), False),
    # the methods' own quantities: a gap for the runs of other methods
    ("prompts skipped before rollout (greso)", "prompts", _field("rollouts/prompts_skipped"), False),
    ("p_easy (greso)", "keep-probability base", _field("greso/p_easy"), False),
    ("p_hard (greso)", "keep-probability base", _field("greso/p_hard"), False),
    ("prompts that met the exit rule (reinforce_ada)", "share of the step's prompts",
     _field("reinforce_ada/exited_frac"), False),
]
X_AXES = {"step": "RL step", "rollouts": "rollouts generated so far (all ranks)"}
OPTIONAL = {t for t, *_ in TRAIN_PANELS[10:]}  # drawn only when some run logged them
SELECTS_ROWS = ("dapo", "greso", "reinforce_ada")  # methods that train on chosen rows of what they generate


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


DASHES = ["-", "--", ":", "-."]  # run i: colour C{i}, dash DASHES[i % 4], marker MARKERS[i % 8]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def style(i: int, points: int) -> dict:
    """Run i's line style: its colour, dash pattern and markers (about 8 along a curve, each run's shifted along
    the curve), so that two runs drawing the same curve both stay visible."""
    every = max(1, points // 8)
    return {"color": f"C{i % 10}", "linestyle": DASHES[i % len(DASHES)], "marker": MARKERS[i % len(MARKERS)],
            "ms": 4, "markevery": (i * every // 3 % every, every)}


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x == y or (x != x and y != y) for x, y in zip(a, b))  # nan equals nan here


def coinciding(curves: dict[str, list[tuple[list, list]]], panels: list | None = None) -> list[str]:
    """'a = b: reward, entropy' for each pair of runs whose curves are identical in some panels ({run: [(steps,
    values) per panel]}, panels in `panels` (default TRAIN_PANELS) order, then held-out pass@1)."""
    titles = [t for t, *_ in (panels or TRAIN_PANELS)] + ["held-out pass@1"]
    names, notes = list(curves), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            same = [t for t, (sa, ya), (sb, yb) in zip(titles, curves[a], curves[b])
                    if sa and sa == sb and _same(ya, yb)]
            if same:
                notes.append(f"{a} = {b}: " + (", ".join(same) if len(same) < len(titles) else "every panel"))
    return notes


def entropy_rows(run_dir: str, train_rows: list[dict]) -> str:
    """Which rows a run's logged entropy is a mean over: 'advantage ≠ 0' when it skipped zero-advantage rows
    (objective.skips_zero_advantage of its config.yaml; without one, any train row with rows_skipped > 0), else
    'every row'."""
    from dynamo.config import ConfigError, load_config
    from dynamo.objective import skips_zero_advantage
    path = os.path.join(run_dir, "config.yaml")
    try:
        skips = skips_zero_advantage(load_config(["--config", path]))
    except (ConfigError, OSError):  # no config.yaml, or one from another version of this code: the rows tell
        skips = any(r.get("rows_skipped", 0) > 0 for r in train_rows)
    return "advantage ≠ 0" if skips else "every row"


def entropy_note(bases: dict[str, str]) -> tuple[str, str]:
    """(the entropy panel's title, a note for the legend, "" when every run averages over the same rows)."""
    kinds = sorted(set(bases.values()))
    if len(kinds) == 1:
        return f"entropy (mean over rows with {kinds[0]})" if kinds[0] != "every row" else "entropy (every row)", ""
    groups = "; ".join(f"{kind}: {', '.join(n for n, k in bases.items() if k == kind)}" for kind in kinds)
    return ("entropy: NOT like with like (see the note)",
            f"entropy averages over other rows per run ({groups}); runs that skip zero-advantage rows "
            "(skip_zero_advantage) leave them out, so the gap between the groups is partly an artefact")


def allocation_of(run_dir: str) -> str:
    """The run's `allocation` (its config.yaml), or '' when it cannot be read."""
    from dynamo.config import ConfigError, load_config
    try:
        return load_config(["--config", os.path.join(run_dir, "config.yaml")]).allocation
    except (ConfigError, OSError):
        return ""


def reward_note(methods: dict[str, str]) -> str:
    """A note when some runs' training reward and accuracy are over rows their allocation chose (dapo, greso and
    reinforce_ada train on chosen groups or rows of what they generate) and others' over every rollout."""
    chosen = [n for n, m in methods.items() if m in SELECTS_ROWS]
    if not chosen or len(chosen) == len(methods) and len({methods[n] for n in chosen}) == 1:
        return ""
    return (f"training reward, accuracy, zero-advantage groups and entropy are over the rows each run trained on, "
            f"which {', '.join(chosen)} chose from what they generated: not comparable across these methods; "
            "compare held-out pass@1")


def x_of(rows: dict, x: str) -> dict:
    """{step: x value}: the step itself, or the rollouts generated up to and including it (0 at step 0)."""
    if x == "step":
        return {r["step"]: r["step"] for r in rows["train"]} | {0: 0}
    return {r["step"]: r["rollouts/generated_total"] for r in rows["train"]} | {0: 0}


def plot_runs(dirs: list[str], out: str = "plot.png", window: int = 10, x: str = "auto") -> str:
    """Draw the runs in `dirs` into the PNG `out`; returns its path. x: 'step', 'rollouts' (generated so far) or
    'auto' (rollouts when every run logged them: methods that generate more per step compare at equal cost).
    FileNotFoundError names a directory without metrics.jsonl, ImportError says matplotlib is missing."""
    runs = {name: read_metrics(d) for name, d in zip(run_names(dirs), dirs)}  # every directory checked first
    bases = {name: entropy_rows(d, runs[name]["train"]) for name, d in zip(runs, dirs)}
    logged = all(rows["train"] and all("rollouts/generated_total" in r for r in rows["train"])
                 for rows in runs.values())
    if x == "rollouts" and not logged:
        raise ValueError("--x rollouts: a run here has no rollouts/generated_total in its metrics.jsonl (an older "
                         "run): use --x step")
    x = ("rollouts" if logged else "step") if x == "auto" else x
    panels = [p for p in TRAIN_PANELS if p[0] not in OPTIONAL or any(
        p[2](r) == p[2](r) for rows in runs.values() for r in rows["train"])]  # a method's own panels if logged
    plt = pyplot()
    cols = 4
    n_rows = (len(panels) + 2 + cols - 1) // cols
    fig, axes = plt.subplots(n_rows, cols, figsize=(17, 3.75 * n_rows), squeeze=False)
    axes = list(axes.flat)  # the training panels, held-out accuracy, the legend
    for ax in axes[len(panels) + 2:]:
        ax.axis("off")
    at, legend = len(panels), len(panels) + 1
    curves: dict[str, list] = {}
    for i, (name, rows) in enumerate(runs.items()):
        to_x = x_of(rows, x)
        steps = [to_x[r["step"]] for r in rows["train"]]
        look, curves[name] = style(i, len(steps)), []
        for ax, (_, _, value, smooth) in zip(axes, panels):
            ys = [value(r) for r in rows["train"]]
            if smooth:  # per-step batch means are noisy: the trend is the running mean
                ax.plot(steps, ys, color=look["color"], alpha=0.25, lw=0.8)
                ys = running_mean(ys, window)
            ax.plot(steps, ys, lw=1.4, **look)
            curves[name].append((steps, ys))
        steps, acc, se = held_out_curve(rows["eval"])
        steps = [to_x.get(s, float("nan")) for s in steps]
        curves[name].append((steps, acc))
        axes[at].errorbar(steps, acc, yerr=se, capsize=3, **{**look, "markevery": None})
        axes[legend].plot([], [], lw=1.4, label=name, **{**look, "markevery": None})  # the legend's entry only
    entropy_title, entropy_warning = entropy_note(bases)
    titles = [((entropy_title if t == "entropy" else t) + (f" (running mean over {window})" if smooth else ""), y)
              for t, y, _, smooth in panels]
    for ax, (title, ylabel) in zip(axes, titles + [("held-out pass@1 (± SE), or the eval_data mean", "pass@1")]):
        ax.set_title(title, fontsize=10, color="C3" if title.startswith("entropy: NOT") else "black")
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[legend].axis("off")
    axes[legend].legend(loc="upper center", title="run", fontsize=9)
    same = coinciding(curves, panels)
    notes = (["identical curves (drawn one over the other, told apart by dash and marker):"] + same if same else [])
    notes += [entropy_warning] if entropy_warning else []
    rewards = reward_note({name: allocation_of(d) for name, d in zip(runs, dirs)})
    notes += [rewards] if rewards else []
    if notes:
        axes[legend].text(0.0, 0.0, "\n".join(textwrap.fill(n, 60) for n in notes), transform=axes[legend].transAxes,
                     fontsize=7.5, va="bottom", ha="left")
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
    parser.add_argument("--out", default="", help="the PNG to write (default: plot.png in the first run's directory, "
                        "e.g. runs/default/plot.png: never a file left in the checkout)")
    parser.add_argument("--window", type=int, default=10, help="steps in the running mean (default: 10)")
    parser.add_argument("--x", choices=["auto", "step", "rollouts"], default="auto", help="the x axis: RL step, or "
                        "rollouts generated so far (every allocation method at equal cost); auto (default): rollouts "
                        "when every run logged them")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error(f"--window must be >= 1, got {args.window}")
    try:
        out = args.out or os.path.join(args.runs[0], "plot.png")
        print(os.path.abspath(plot_runs(args.runs, out, args.window, args.x)))
    except (FileNotFoundError, ImportError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
