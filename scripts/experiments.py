"""Experiment runner: GRPO against DynaMO and its ablations at equal rollout budget, several seeds.

    python scripts/experiments.py                       # 6 arms x 3 seeds x 80 steps, 2 runs at a time (CPU)
    python scripts/experiments.py --aggregate-only      # tables and plots from the runs already on disk
    python scripts/experiments.py --quick --out /tmp/q  # 2 arms x 1 seed x 3 tiny steps (a smoke test)
    python scripts/experiments.py --comparison --out runs/comparison   # the paper's table: 9 arms x 3 rl_seeds
    python scripts/experiments.py --allocation --out runs/allocation   # allocation methods at equal generated rollouts

Every arm is `python train.py --config configs/<arm>.yaml seed=S out_dir=<out>/<arm>/seed<S>` with the
same overrides, so learning rate, budget (prompts_per_step x rollouts_per_prompt rollouts per step),
data and evaluation are identical across arms; only the line that defines the arm differs:

    grpo                 uniform rollouts, no token modulation (the baseline)
    default              full DynaMO (allocation + compensation + stabilisation)
    no_modulation        allocation only
    uniform_allocation   modulation only (compensation + stabilisation, uniform rollouts)
    compensation_only    uniform rollouts + compensation
    stabilization_only   uniform rollouts + stabilisation

Seeds: `seed` drives everything in train.py (warm-up init and data, task split, prompt order, sampling,
evaluation), so seed S means a different warm-up per seed; each seed's warm-up is built once, before its
runs, and cached. Every arm sees the same seeds, so comparisons within a seed are paired. With an RL-only
seed in the config, `--seed-key <key>` sends the seeds there and keeps seed 0's warm-up for all runs.
(`--seed-key rl_seed` varies only the RL phase: prompt order, rollout and mini-batch sampling.)

Runs whose `summary.json` exists are skipped (rerun the command after an interruption); each run logs to
`<out>/<arm>/seed<S>/train.log`. Results: `<out>/results.json`, `<out>/results.md`, and PNG plots when
matplotlib is installed (optional: `pip install matplotlib`): held-out accuracy against rollouts and tokens,
and every finished run's training curves (`curves.png`, drawn by `python -m dynamo.plot`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dynamo.plot import plot_runs, pyplot  # noqa: E402
from dynamo.step_metrics import read_metrics  # noqa: E402

ARMS = ["grpo", "default", "no_modulation", "uniform_allocation", "compensation_only", "stabilization_only"]
# --comparison: the rows of the paper's main table, GRPO, the seven baselines (docs/COMPARISON.md) and DynaMO
PAPER_ARMS = ["grpo", "clip_higher", "entropy_loss", "fork_tokens", "entropy_adv", "clip_cov", "kl_cov",
              "w_reinforce", "default"]
# Four optimiser steps per RL step: with one, every update is on-policy (ratio 1), where Clip-Higher and KL-Cov
# are exactly GRPO; the paper's run takes 16. Same start for every run (the shipped one), seeds to rl_seed.
COMPARISON = ["mini_batches=4"]
# --allocation: the field's prompt-allocation methods against GRPO and DynaMO (docs/RESULTS.md §5), every run ending
# at the main job's 80 x 128 = 10,240 generated rollouts, evaluated every 2,048; seeds to rl_seed (one start).
ALLOCATION_ARMS = ["grpo", "default", "dapo", "greso", "knapsack", "reinforce_ada"]
ALLOCATION = ["rollout_budget=10240", "steps=400", "eval_every=0", "eval_every_rollouts=2048"]
ARM_LABELS = {"grpo": "GRPO", "default": "DynaMO (full)", "no_modulation": "allocation only",
              "uniform_allocation": "modulation only", "compensation_only": "compensation only",
              "stabilization_only": "stabilisation only", "clip_higher": "Clip-Higher",
              "entropy_loss": "Entropy Loss", "fork_tokens": "Fork Tokens", "entropy_adv": "Entropy Advantages",
              "clip_cov": "Clip-Cov", "kl_cov": "KL-Cov", "w_reinforce": "W-REINFORCE", "dapo": "DAPO (dynamic sampling)",
              "greso": "GRESO", "knapsack": "Knapsack RL", "reinforce_ada": "Reinforce-Ada"}
# --quick: tiny everything (as tests/test_train_smoke.py); train_pool 8 / 4 prompts per step makes step 3 the
# first step of epoch 2, so the allocation path runs too (n_min 2 below n = 4 leaves it room to move rollouts,
# though the quick warm-up solves so little that the priorities are mostly the floor).
QUICK = ["steps=3", "prompts_per_step=4", "rollouts_per_prompt=4", "allocator.n_min=2", "eval_prompts=14", "eval_samples=2",
         "eval_every=2", "train_pool=8", "warmup.steps=20", "warmup.check_every=20", "warmup.batch_size=16",
         "warmup.target_low=0", "rollout.max_new_tokens=40"]  # target_low 0: a weak start is fine for a smoke test
WARM_UP = ("import sys, torch; from dynamo.config import load_config; from dynamo.warmup import warm_up; "
           "warm_up(load_config(sys.argv[1:]), torch.device('cpu'))")


# ---------------------------------------------------------------------------------------------- launching


def run_dir(out: str, arm: str, seed: int) -> str:
    return os.path.join(out, arm, f"seed{seed}")


def launch(cmd: list[str], log_path: str) -> tuple[int, float]:
    """Run one subprocess from the repository root with one OpenMP thread; (return code, wall seconds)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return rc, time.time() - t0


def run_grid(args, overrides: list[str]) -> list[dict]:
    """Warm-ups first (one per seed), then every (arm, seed) run, at most args.jobs processes at a time."""
    manifest: list[dict] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        # The warm-up cache key does not depend on the arm: build each seed's once, before its runs race for it.
        warm_seeds = args.seeds if args.seed_key == "seed" else [0]  # an RL-only seed shares one warm-up
        warm = {s: pool.submit(launch, [sys.executable, "-c", WARM_UP, "--config", "configs/default.yaml",
                                        f"seed={s}", *overrides], os.path.join(args.out, "warmup", f"seed{s}.log"))
                for s in warm_seeds}
        for s, fut in warm.items():
            rc, wall = fut.result()
            print(f"[warm-up] seed {s}: rc {rc}, {wall:.0f}s", flush=True)
            if rc:
                sys.exit(f"warm-up for seed {s} failed: see {os.path.join(args.out, 'warmup', f'seed{s}.log')}")
        jobs = {}
        for s in args.seeds:  # seed-major: a partial grid has whole seeds, every arm in each
            for arm in args.arms:
                d = run_dir(args.out, arm, s)
                if os.path.exists(os.path.join(d, "summary.json")) and not args.force:
                    print(f"[skip] {arm} seed {s}: {d}/summary.json exists", flush=True)
                    continue
                cmd = [sys.executable, "train.py", "--config", f"configs/{arm}.yaml", f"{args.seed_key}={s}",
                       f"out_dir={d}", "overwrite=true", *overrides]  # a rerun replaces an unfinished or --force'd run
                jobs[(arm, s)] = pool.submit(launch, cmd, os.path.join(d, "train.log"))
        for (arm, s), fut in jobs.items():
            rc, wall = fut.result()
            print(f"[run] {arm:20s} seed {s}: rc {rc}, {wall:.0f}s", flush=True)
            manifest.append({"arm": arm, "seed": s, "rc": rc, "wall_s": round(wall, 1)})
    return manifest


# ---------------------------------------------------------------------------------------------- aggregation


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error across seeds (nan SE with one seed)."""
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def load_run(d: str) -> dict | None:
    """One finished run: its config, step rows, eval rows and summary; None if it did not finish."""
    if not os.path.exists(os.path.join(d, "summary.json")):
        return None
    rows = read_metrics(d)
    with open(os.path.join(d, "summary.json")) as f:
        summary = json.load(f)
    import yaml
    with open(os.path.join(d, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    return {"cfg": cfg, "steps": rows["train"], "evals": rows["eval"], "summary": summary}


def run_curves(run: dict) -> dict:
    """Held-out accuracy against step, cumulative rollouts and cumulative generated tokens, plus telemetry."""
    cfg = run["cfg"]
    per_step = cfg["prompts_per_step"] * cfg["rollouts_per_prompt"]  # every arm's budget: sum of counts
    epoch_steps = math.ceil(cfg["train_pool"] / cfg["prompts_per_step"]) if cfg["data"] == "arithmetic" else 0
    tokens, cum = {0: 0.0}, 0.0
    for r in run["steps"]:
        cum += r["response_length"] * per_step  # response_length: mean valid tokens (EOS included) per rollout
        tokens[r["step"]] = cum
    evals = sorted(run["evals"], key=lambda r: r["step"])
    later = [r for r in run["steps"] if r["step"] > epoch_steps] or run["steps"]  # allocation acts after epoch 1
    by_level: dict[str, float] = {}
    for r in later:
        for lv, n in r.get("alloc/budget_by_level", {}).items():
            by_level[lv] = by_level.get(lv, 0) + n
    total = sum(by_level.values()) or 1
    return {
        "eval_steps": [r["step"] for r in evals],
        "eval_acc": [r["eval/accuracy"] for r in evals],
        "rollouts": [r["step"] * per_step for r in evals],
        "tokens": [tokens.get(r["step"], float("nan")) for r in evals],
        "levels_end": {k[5:]: v for k, v in evals[-1].items() if k.startswith("eval/") and k not in
                       ("eval/accuracy", "eval/se")} if evals else {},
        "zero_adv_all": sum(r["zero_adv_groups"] for r in run["steps"]) / len(run["steps"]),
        "zero_adv_after_epoch1": sum(r["zero_adv_groups"] for r in later) / len(later),
        "informative_after_epoch1": sum(r.get("alloc/informative_rollout_frac", float("nan")) for r in later) / len(later),
        "budget_share_after_epoch1": {k: v / total for k, v in sorted(by_level.items())},
        "train_reward": sum(r["reward"] for r in run["steps"]) / len(run["steps"]),
        # how strongly the token factors act (absent when a factor is off): mean beta_comp, share damped < 0.95
        "comp_mean": _mean([r["modulation/comp_mean"] for r in run["steps"] if "modulation/comp_mean" in r]),
        "damped_frac": _mean([r["modulation/damped_frac"] for r in run["steps"] if "modulation/damped_frac" in r]),
        "response_length": sum(r["response_length"] for r in run["steps"]) / len(run["steps"]),
        "rl_seconds": sum(r.get("time/step", 0.0) for r in run["steps"]),
        "epoch_steps": epoch_steps,
        "auc": area_under_curve([r["step"] for r in evals], [r["eval/accuracy"] for r in evals]),
    }


def area_under_curve(steps: list[int], acc: list[float]) -> float:
    """Trapezoid area under held-out accuracy against step, divided by the steps covered: the run's mean
    accuracy over training (so a method that learns earlier scores higher at the same final accuracy)."""
    if len(steps) < 2:
        return acc[0] if acc else float("nan")
    area = sum((b - a) * (x + y) / 2 for a, b, x, y in zip(steps, steps[1:], acc, acc[1:]))
    return area / (steps[-1] - steps[0])


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def aggregate(out: str, arms: list[str], seeds: list[int], reference: str = "grpo") -> dict:
    """Per arm: mean +- SE across seeds of every number, and the per-seed paired difference to the reference arm."""
    runs = {(a, s): load_run(run_dir(out, a, s)) for a in arms for s in seeds}
    done = {k: run_curves(v) | {"summary": v["summary"]} for k, v in runs.items() if v is not None}
    result = {"out": out, "arms": {}, "missing": [f"{a}/seed{s}" for (a, s), v in runs.items() if v is None],
              "reference": reference}
    base = reference if reference in arms else None
    for a in arms:
        ss = [s for s in seeds if (a, s) in done]
        if not ss:
            continue
        c = [done[(a, s)] for s in ss]
        end = [x["summary"]["end"] for x in c]
        gain = [x["summary"]["gain"] for x in c]
        entry = {"seeds": ss, "start": mean_se([x["summary"]["start"] for x in c]), "end": mean_se(end),
                 "end_per_seed": end, "gain": mean_se(gain), "gain_per_seed": gain,
                 "zero_adv_all": mean_se([x["zero_adv_all"] for x in c]),
                 "zero_adv_after_epoch1": mean_se([x["zero_adv_after_epoch1"] for x in c]),
                 "informative_after_epoch1": mean_se([x["informative_after_epoch1"] for x in c]),
                 "train_reward": mean_se([x["train_reward"] for x in c]),
                 "comp_mean": mean_se([x["comp_mean"] for x in c]), "damped_frac": mean_se([x["damped_frac"] for x in c]),
                 "response_length": mean_se([x["response_length"] for x in c]),
                 "rl_seconds": mean_se([x["rl_seconds"] for x in c]), "epoch_steps": c[0]["epoch_steps"],
                 "auc": mean_se([x["auc"] for x in c])}
        # curves: mean +- SE at each evaluated step (all seeds share the eval steps and per-step budget)
        steps = c[0]["eval_steps"]
        entry["curve"] = {"step": steps, "rollouts": c[0]["rollouts"],
                          "tokens": [mean_se([x["tokens"][i] for x in c])[0] for i in range(len(steps))],
                          "acc": [mean_se([x["eval_acc"][i] for x in c]) for i in range(len(steps))]}
        levels = sorted(c[0]["budget_share_after_epoch1"])
        entry["budget_share_after_epoch1"] = {lv: mean_se([x["budget_share_after_epoch1"].get(lv, 0.0) for x in c])
                                              for lv in levels}
        entry["levels_end"] = {lv: mean_se([x["levels_end"].get(lv, float("nan")) for x in c])
                               for lv in sorted(c[0]["levels_end"])}
        if base and a != base:  # paired by seed: same warm-up, task split and held-out problems
            paired = [s for s in ss if (base, s) in done]
            entry["end_minus_ref"] = mean_se([done[(a, s)]["summary"]["end"] - done[(base, s)]["summary"]["end"]
                                               for s in paired])
            entry["gain_minus_ref"] = mean_se([done[(a, s)]["summary"]["gain"] - done[(base, s)]["summary"]["gain"]
                                                for s in paired])
            entry["auc_minus_ref"] = mean_se([done[(a, s)]["auc"] - done[(base, s)]["auc"] for s in paired])
            entry["paired_seeds"] = paired
            entry["curve"]["acc_minus_ref"] = [mean_se([done[(a, s)]["eval_acc"][i] - done[(base, s)]["eval_acc"][i]
                                                         for s in paired]) for i in range(len(steps))]
        result["arms"][a] = entry
    return result


# ---------------------------------------------------------------------------------------------- --allocation

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t(0.975, df)


def ci95(xs: list[float]) -> tuple[float, float, float]:
    """Mean and a 95% t-interval (lower, upper) across seeds; nan bounds with one seed."""
    m, se = mean_se(xs)
    half = T95.get(len(xs) - 1, 1.96) * se if len(xs) > 1 else float("nan")
    return m, m - half, m + half


def rollout_curve(run: dict) -> dict:
    """Held-out pass@1 against rollouts generated so far (0 at the start), and the run's rollout telemetry."""
    total = {r["step"]: r["rollouts/generated_total"] for r in run["steps"]} | {0: 0}
    evals = sorted(run["evals"], key=lambda r: r["step"])
    x, acc = [total[r["step"]] for r in evals], [r["eval/accuracy"] for r in evals]
    generated = sum(r["rollouts/generated"] for r in run["steps"])
    informative = sum(r["rollouts/informative_frac"] * r["rollouts/generated"] for r in run["steps"])
    return {"x": x, "acc": acc, "final": acc[-1], "auc": area_under_curve(x, acc), "generated": generated,
            "trained": sum(r["rollouts/trained"] for r in run["steps"]), "informative": informative / generated,
            "steps": len(run["steps"]), "rounds": _mean([r["rollouts/rounds"] for r in run["steps"]]),
            "wall_s": run["summary"].get("wall_seconds", float("nan"))}


def allocation_aggregate(out: str, arms: list[str], seeds: list[int], refs=("grpo", "default")) -> dict:
    """Per arm: mean +- SE across seeds; paired (same rl_seed) differences of the final pass@1 and of the area
    under pass@1 against generated rollouts, to GRPO and to DynaMO, with 95% t-intervals."""
    runs = {(a, s): load_run(run_dir(out, a, s)) for a in arms for s in seeds}
    done = {k: rollout_curve(v) for k, v in runs.items() if v is not None}
    res = {"out": out, "arms": {}, "missing": [f"{a}/seed{s}" for (a, s), v in runs.items() if v is None]}
    for a in arms:
        ss = [s for s in seeds if (a, s) in done]
        if not ss:
            continue
        c = [done[(a, s)] for s in ss]
        e = {"seeds": ss, **{k: mean_se([x[k] for x in c]) for k in ("final", "auc", "generated", "trained",
                                                                      "informative", "steps", "rounds", "wall_s")}}
        points = min(len(x["x"]) for x in c)  # the evaluations every seed has: start, each 2,048, the end
        e["curve"] = {"x": [_mean([x["x"][i] for x in c]) for i in range(points)],
                      "acc": [mean_se([x["acc"][i] for x in c]) for i in range(points)]}
        for ref in refs:
            paired = [s for s in ss if (ref, s) in done and ref != a]
            if paired:
                e[f"final_minus_{ref}"] = ci95([done[(a, s)]["final"] - done[(ref, s)]["final"] for s in paired])
                e[f"auc_minus_{ref}"] = ci95([done[(a, s)]["auc"] - done[(ref, s)]["auc"] for s in paired])
        res["arms"][a] = e
    return res


def allocation_markdown(res: dict) -> str:
    def ci(t):
        return "—" if t is None else f"{t[0] * 100:+.1f} [{t[1] * 100:+.1f}, {t[2] * 100:+.1f}]"
    lines = [f"Command: `{res['command']}`" + (f" (tables: `{res['aggregated_by']}`)" if "aggregated_by" in res else ""),
             "", "| method | seeds | steps | generated | trained on | informative share of generated | rounds per step "
             "| final pass@1 | − GRPO (paired, 95% CI) | − DynaMO | AUC | AUC − GRPO | AUC − DynaMO | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a, e in res["arms"].items():
        lines.append(f"| {ARM_LABELS.get(a, a)} | {len(e['seeds'])} | {e['steps'][0]:.1f} | {e['generated'][0]:.0f} | "
                     f"{e['trained'][0]:.0f} | {pm(e['informative'])} | {e['rounds'][0]:.2f} | **{pm(e['final'])}** | "
                     f"{ci(e.get('final_minus_grpo'))} | {ci(e.get('final_minus_default'))} | {pm(e['auc'])} | "
                     f"{ci(e.get('auc_minus_grpo'))} | {ci(e.get('auc_minus_default'))} | {e['wall_s'][0]:.0f} |")
    lines += ["", "Mean ± SE across rl_seeds (same start, same held-out problems and evaluation seeds); differences in "
              "points, each seed paired with the reference's run of the same seed, mean [95% t-interval]. AUC: held-out "
              "pass@1 averaged over the generated rollouts (trapezoid over the evaluations, divided by the rollouts "
              "covered). Informative: share of the generated rollouts in groups whose rewards were not all equal.", "",
              "Held-out pass@1 against rollouts generated (mean across seeds; x: mean rollouts at that evaluation):", ""]
    first = next(iter(res["arms"].values()), None)
    if first:
        lines.append("| method | " + " | ".join(f"eval {i}" for i in range(len(first["curve"]["x"]))) + " |")
        lines.append("|---|" + "---|" * len(first["curve"]["x"]))
        for a, e in res["arms"].items():
            lines.append(f"| {ARM_LABELS.get(a, a)} | " + " | ".join(f"{pm(acc)} @ {x:.0f}" for x, acc in
                                                                     zip(e["curve"]["x"], e["curve"]["acc"])) + " |")
    if res["missing"]:
        lines += ["", f"Missing (not finished): {', '.join(res['missing'])}"]
    return "\n".join(lines) + "\n"


def allocation_plot(res: dict, out: str) -> list[str]:
    try:
        plt = pyplot()
    except ImportError as e:
        print(f"[plots] {e}: no PNG plots", flush=True)
        return []
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for i, (a, e) in enumerate(res["arms"].items()):
        m = [v[0] for v in e["curve"]["acc"]]
        se = [0.0 if math.isnan(v[1]) else v[1] for v in e["curve"]["acc"]]
        ax.errorbar(e["curve"]["x"], m, yerr=se, marker="os^vDP"[i % 6], ms=4, capsize=2,
                    ls=["-", "--", "-.", ":"][i % 4], label=ARM_LABELS.get(a, a))
    ax.set_xlabel("rollouts generated (all rounds, discarded ones included)")
    ax.set_ylabel("held-out pass@1 (mean ± SE over rl_seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "acc_vs_generated.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# ---------------------------------------------------------------------------------------------- reporting


def pm(x: tuple[float, float], scale: float = 1.0, digits: int = 3) -> str:
    m, se = x
    if math.isnan(se):
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {se * scale:.{digits}f}"


def paper_table(res: dict) -> list[str]:
    """The paper's main-table layout: one row per method, the end accuracy per difficulty level (the paper's
    benchmarks), their mean, the paired difference to GRPO and the area under the accuracy curve."""
    arms, ref = res["arms"], ARM_LABELS.get(res["reference"], res["reference"])
    first = next(iter(arms.values()), None)
    if not first:
        return []
    levels = list(first["levels_end"])
    lines = ["| method | " + " | ".join(levels) + f" | held-out (all) | − {ref} (paired) | AUC | AUC − {ref} |",
             "|---|" + "---|" * (len(levels) + 4)]
    for a, e in arms.items():
        cells = [pm(e["levels_end"][lv]) for lv in levels]
        lines.append(f"| {ARM_LABELS.get(a, a)} | " + " | ".join(cells) + f" | **{pm(e['end'])}** | "
                     + (pm(e["end_minus_ref"]) if "end_minus_ref" in e else "—") + f" | {pm(e['auc'])} | "
                     + (pm(e["auc_minus_ref"]) if "auc_minus_ref" in e else "—") + " |")
    return lines + ["", "Final held-out pass@1 per level and over all held-out problems, mean ± SE across seeds; "
                    f"`− {ref}` pairs each seed with {ref}'s run of the same seed; AUC is the mean held-out accuracy over "
                    "the run (trapezoid over the evaluations, divided by the steps).", ""]


def markdown(res: dict) -> str:
    arms, ref = res["arms"], ARM_LABELS.get(res["reference"], res["reference"])
    lines = [f"Command: `{res['command']}`" + (f" (tables: `{res['aggregated_by']}`)" if "aggregated_by" in res else ""), ""]
    lines += paper_table(res)
    lines += [f"| arm | seeds | held-out start | held-out end | gain | end − {ref} (paired) | zero-adv groups "
              "(after epoch 1) | informative rollouts (after epoch 1) | mean response tokens |",
              "|---|---|---|---|---|---|---|---|---|"]
    for a, e in arms.items():
        diff = pm(e["end_minus_ref"]) if "end_minus_ref" in e else "—"
        lines.append(f"| {ARM_LABELS.get(a, a)} (`{a}`) | {len(e['seeds'])} | {pm(e['start'])} | {pm(e['end'])} | "
                     f"{pm(e['gain'])} | {diff} | {pm(e['zero_adv_after_epoch1'], digits=3)} | "
                     f"{pm(e['informative_after_epoch1'])} | {pm(e['response_length'], digits=1)} |")
    lines += ["", "Mean ± standard error across seeds (n = seeds). Held-out pass@1 = avg@k over the held-out problems "
              f"at temperature 1. `end − {ref}` is the per-seed difference to the {ref} run of the same seed.", ""]
    # accuracy against rollouts and tokens
    first = next(iter(arms.values()), None)
    if first:
        steps = first["curve"]["step"]
        lines += ["Held-out accuracy against cumulative rollouts (the budget is the same for every arm) and "
                  "cumulative generated tokens (mean across seeds, in thousands):", ""]
        lines.append("| arm | " + " | ".join(f"step {s} ({first['curve']['rollouts'][i]} rollouts)"
                                             for i, s in enumerate(steps)) + " |")
        lines.append("|---|" + "---|" * len(steps))
        for a, e in arms.items():
            cells = [f"{pm(acc)} @ {tok / 1e3:.0f}k tok" for acc, tok in zip(e["curve"]["acc"], e["curve"]["tokens"])]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines += ["", f"Paired difference to {ref} at each evaluation (same seed: same warm-up, held-out problems and "
                  "evaluation sampling seeds; mean ± SE across seeds):", ""]
        lines.append("| arm | " + " | ".join(f"step {s}" for s in steps) + " |")
        lines.append("|---|" + "---|" * len(steps))
        for a, e in arms.items():
            if "acc_minus_ref" in e["curve"]:
                lines.append(f"| {a} | " + " | ".join(f"{v[0]:+.4f} ± {v[1]:.4f}" for v in e["curve"]["acc_minus_ref"])
                             + " |")
        levels = list(first["budget_share_after_epoch1"])
        lines += ["", "Share of the rollout budget per difficulty level after epoch 1 (the allocation acts from "
                  "epoch 2 on; mean across seeds):", ""]
        lines.append("| arm | " + " | ".join(levels) + " |")
        lines.append("|---|" + "---|" * len(levels))
        for a, e in arms.items():
            lines.append(f"| {a} | " + " | ".join(f"{e['budget_share_after_epoch1'].get(lv, (0, 0))[0]:.3f}"
                                                   for lv in levels) + " |")
        end_levels = list(first["levels_end"])
        lines += ["", "Held-out accuracy per level at the end (mean across seeds):", ""]
        lines.append("| arm | " + " | ".join(end_levels) + " |")
        lines.append("|---|" + "---|" * len(end_levels))
        for a, e in arms.items():
            lines.append(f"| {a} | " + " | ".join(f"{e['levels_end'][lv][0]:.3f}" for lv in end_levels) + " |")
        lines += ["", "Training-side telemetry (mean over steps, then mean ± SE across seeds): batch reward (±1), "
                  "mean beta_comp over valid tokens, fraction of tokens damped below 0.95 by beta_stab, seconds of RL:",
                  "", "| arm | train reward | mean beta_comp | damped fraction | RL seconds |", "|---|---|---|---|---|"]
        for a, e in arms.items():
            na = lambda x, d=3: "—" if math.isnan(x[0]) else pm(x, digits=d)  # noqa: E731
            lines.append(f"| {a} | {pm(e['train_reward'])} | {na(e['comp_mean'])} | {na(e['damped_frac'], 4)} | "
                         f"{pm(e['rl_seconds'], digits=0)} |")
    if res["missing"]:
        lines += ["", f"Missing (not finished): {', '.join(res['missing'])}"]
    return "\n".join(lines) + "\n"


def plots(res: dict, out: str, run_dirs: list[str]) -> list[str]:
    """Accuracy against rollouts and against tokens (mean over seeds), and every run's training curves
    (dynamo.plot); needs matplotlib (optional)."""
    try:
        plt = pyplot()
    except ImportError as e:
        print(f"[plots] {e}: no PNG plots", flush=True)
        return []
    paths = [plot_runs(run_dirs, os.path.join(out, "curves.png"))] if run_dirs else []
    for x_key, x_label, name in (("rollouts", "cumulative rollouts", "acc_vs_rollouts.png"),
                                 ("tokens", "cumulative generated tokens", "acc_vs_tokens.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for a, e in res["arms"].items():
            x = e["curve"][x_key]
            m = [v[0] for v in e["curve"]["acc"]]
            se = [0.0 if math.isnan(v[1]) else v[1] for v in e["curve"]["acc"]]
            ax.errorbar(x, m, yerr=se, marker="o", ms=3, capsize=2, label=ARM_LABELS.get(a, a))
        ax.set_xlabel(x_label)
        ax.set_ylabel("held-out pass@1 (mean ± SE over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=ARMS, help="config names under configs/")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--seed-key", default="seed", help="config key the seeds go to: 'seed' (everything, "
                        "warm-up included) or an RL-only seed key if train.py has one")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each with OMP_NUM_THREADS=1)")
    parser.add_argument("--out", default="runs/exp", help="one directory per arm and seed under it")
    parser.add_argument("--quick", action="store_true", help="grpo and default, seed 0, 3 tiny steps (a test)")
    parser.add_argument("--comparison", action="store_true", help="the paper's table: GRPO, the seven baselines and "
                        "DynaMO (" + " ".join(COMPARISON) + ", seeds to rl_seed: one shared start)")
    parser.add_argument("--allocation", action="store_true", help="the allocation methods: GRPO, DynaMO, DAPO, GRESO, "
                        "Knapsack RL and Reinforce-Ada at equal generated rollouts (" + " ".join(ALLOCATION) + ")")
    parser.add_argument("--reference", help="the arm every other arm is paired with, seed by seed; it must be one of "
                        "--arms (default: grpo when it is; e.g. uniform_allocation for allocation options)")
    parser.add_argument("--aggregate-only", action="store_true", help="no training: tables from the runs on disk")
    parser.add_argument("--force", action="store_true", help="rerun runs that already have summary.json")
    parser.add_argument("overrides", nargs="*", help="key=value passed to every run (e.g. steps=40 eval_every=20)")
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    overrides = list(args.overrides)
    for on, arms, settings in ((args.comparison, PAPER_ARMS, COMPARISON), (args.allocation, ALLOCATION_ARMS, ALLOCATION)):
        if on:  # a grid of its own arms, seeds to rl_seed, its settings unless the command line gives them
            if args.arms == ARMS:
                args.arms = arms
            args.seed_key = "rl_seed"
            given = {o.split("=", 1)[0] for o in overrides}
            overrides = [o for o in settings if o.split("=", 1)[0] not in given] + overrides
    if args.quick:
        if args.arms == ARMS:
            args.arms = ["grpo", "default"]
        if args.seeds == [0, 1, 2]:
            args.seeds = [0]
        given = {o.split("=", 1)[0] for o in overrides}  # the user's keys replace the quick ones (never twice)
        overrides = [o for o in QUICK + [f"warmup.cache_dir={os.path.join(args.out, 'cache')}"]
                     if o.split("=", 1)[0] not in given] + overrides
    elif not any(o.startswith("eval_every=") for o in overrides) and not args.allocation:
        overrides.append("eval_every=20")  # 5 points per curve at 80 steps; evaluation never changes training
    if args.reference is not None and args.reference not in args.arms:
        sys.exit(f"--reference {args.reference} is not one of --arms ({' '.join(args.arms)}): add it there")
    args.reference = args.reference or "grpo"
    for arm in args.arms:
        if not os.path.exists(os.path.join(ROOT, "configs", f"{arm}.yaml")):
            sys.exit(f"unknown arm {arm!r}: configs/{arm}.yaml does not exist")
    os.makedirs(args.out, exist_ok=True)
    command = "python scripts/experiments.py " + " ".join(sys.argv[1:])

    t0 = time.time()
    manifest = [] if args.aggregate_only else run_grid(args, overrides)
    wall = time.time() - t0
    res = (allocation_aggregate(args.out, args.arms, args.seeds) if args.allocation
           else aggregate(args.out, args.arms, args.seeds, args.reference))
    res.update({"command": command, "overrides": overrides, "seeds": args.seeds})
    if manifest:  # keep the wall time of the launch that trained the runs; --aggregate-only reuses it
        res.update({"runs": manifest, "grid_wall_s": round(wall, 1)})
    elif os.path.exists(os.path.join(args.out, "results.json")):
        with open(os.path.join(args.out, "results.json")) as f:
            old = json.load(f)
        res.update({k: old[k] for k in ("runs", "grid_wall_s") if k in old})
        if "--aggregate-only" not in old.get("command", "--aggregate-only"):
            res.update({"command": old["command"], "aggregated_by": command})  # the command that trained the runs
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = allocation_markdown(res) if args.allocation else markdown(res)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    finished = [run_dir(args.out, a, s) for s in args.seeds for a in args.arms
                if os.path.exists(os.path.join(run_dir(args.out, a, s), "summary.json"))]
    res_plots = allocation_plot(res, args.out) if args.allocation else plots(res, args.out, finished)
    print(md)
    print(f"wrote {args.out}/results.json, results.md" + "".join(f", {os.path.basename(p)}" for p in res_plots)
          + f" ({wall:.0f}s)")
    failed = [m for m in manifest if m["rc"]]
    if failed:
        sys.exit(f"{len(failed)} runs failed: " + ", ".join(f"{m['arm']}/seed{m['seed']}" for m in failed))


if __name__ == "__main__":
    main()
