"""Step 8 of train.py, "log": one step's metrics by name, reduced over ranks once, written and printed.

Every rank adds its own share to a `StepSums` (named fields, all additive); `reduced()` sums all of them
over the ranks in one all-reduce; `train_row` turns the sums into the `metrics.jsonl` row, and
`console_line` prints the part of it that fits one line. The allocation's per-prompt lists travel
separately (`StepGather`), because every rank needs every response's pair to update the statistics.
The run's other outputs live here too: the JSONL logs and the start-against-end summary.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import torch

from dynamo import distributed as dist
from dynamo.allocator import allocation_telemetry
from dynamo.reward import rewards
from dynamo.trackers import open_trackers


@dataclasses.dataclass
class StepSums:
    """This rank's sums for one step; every field adds up over ranks."""
    rollouts: float = 0.0  # N, rollouts sampled
    correct: float = 0.0  # rollouts the verifier accepted
    zero_adv_groups: float = 0.0  # prompts whose rollouts all got the same reward (advantage 0)
    groups: float = 0.0  # prompts
    entropy: float = 0.0  # sum of the behaviour policy's entropy over response tokens
    tokens: float = 0.0  # response tokens (EOS included)
    truncated: float = 0.0  # rollouts without EOS within max_new_tokens
    clip: float = 0.0  # PPO-clipped fraction, times rollouts
    approx_kl: float = 0.0  # approximate KL to the behaviour policy, times rollouts
    loss: float = 0.0  # this rank's part of the mean mini-batch loss
    parse_failures: float = 0.0  # verifier counters
    timeouts: float = 0.0
    internal_errors: float = 0.0
    t_generate: float = 0.0  # seconds, summed over ranks (divided by the world size in the row)
    t_logprobs: float = 0.0
    t_update: float = 0.0
    rows_skipped: float = 0.0  # rows left out of the update (advantage 0, skip_zero_advantage)
    entropy_tokens: float = 0.0  # response tokens whose entropy was computed (rows skipped by the old pass are not)
    selected: float = 0.0  # tokens the switched-on selection baseline selected (docs/COMPARISON.md)
    psi: float = 0.0  # Entropy Advantages: sum of psi over valid tokens
    kl_abs: float = 0.0  # KL-Cov: sum of |log-ratio| over the penalised tokens

    def reduced(self) -> StepSums:
        """The same fields summed over all ranks (one all-reduce, in float64)."""
        values = torch.tensor(dataclasses.astuple(self), dtype=torch.float64)
        return StepSums(*dist.all_reduce_sum(values).tolist())


@dataclasses.dataclass
class StepGather:
    """This rank's per-prompt lists for the allocation telemetry, gathered (not summed) over ranks."""
    counts: list  # rollouts allocated to each prompt
    pass_rates: list  # the pass-rate estimates the allocation saw (None = unseen)
    levels: list  # difficulty level of each prompt
    group_rewards: list  # each prompt's rewards this step

    @classmethod
    def of(cls, problems, counts, prompt_stats, correct: torch.Tensor, prompt_index: torch.Tensor) -> StepGather:
        """This rank's lists, with the pass rates the allocation saw (before this step's update)."""
        reward = rewards(correct)  # (N,) +-1
        return cls(counts=counts, pass_rates=[prompt_stats.pass_rate(p.prompt_id) for p in problems],
                   levels=[p.level for p in problems],
                   group_rewards=[reward[prompt_index == j].tolist() for j in range(len(problems))])

    @staticmethod
    def telemetry(parts: list[StepGather]) -> dict:
        """`alloc/*` fields over the prompts of every rank."""
        return allocation_telemetry(*(sum((getattr(p, f.name) for p in parts), [])
                                      for f in dataclasses.fields(StepGather)))


def step_sums(ro, correct: torch.Tensor, adv: torch.Tensor, old, tally, *, groups: int, verifier: dict,
              times: dict) -> StepSums:
    """This rank's sums of one step, all gathered here: the rollouts `ro`, their verdicts `correct` (N,) and
    advantages `adv` (N,), the behaviour pass `old` and the update's `tally` (dynamo.objective), the verifier's
    counters during the step and the phases' times (seconds); `groups` is this rank's number of prompts."""
    n = len(correct)
    zero_adv = torch.zeros(groups).index_add_(0, ro.prompt_index, adv.abs()) == 0  # (P,) groups with no signal
    mask = old.mask  # (N, T)
    return StepSums(
        rollouts=n, correct=correct.sum().item(), zero_adv_groups=zero_adv.sum().item(), groups=groups,
        entropy=(old.entropy * mask).sum().item(), tokens=mask.sum().item(), truncated=ro.truncated.sum().item(),
        clip=tally.clip * n, approx_kl=tally.approx_kl * n, loss=tally.loss, **verifier,
        t_generate=times["generate"], t_logprobs=times["logprobs"], t_update=times["update"],
        rows_skipped=int((~old.live).sum()), entropy_tokens=mask[old.passed].sum().item(),
        selected=tally.selected, psi=tally.psi, kl_abs=tally.kl_abs)


def write_samples(file, step: int, count: int, problems, counts, prompt_index, texts, correct, adv) -> None:
    """The step's first `count` rollouts of this rank to samples.jsonl, with their prompt, reward and advantage."""
    seen, reward = [0] * len(problems), rewards(correct)  # seen: rows of each prompt so far (index in its group)
    for i in range(min(count, len(texts))):
        j = int(prompt_index[i])
        write_row(file, {"step": step, "prompt_id": problems[j].prompt_id, "level": problems[j].level,
                         "allocated": counts[j], "group": seen[j], "prompt": problems[j].prompt, "response": texts[i],
                         "reference": problems[j].answer, "reward": reward[i].item(),
                         "advantage": adv[i].item()})
        seen[j] += 1


def train_row(step: int, s: StepSums, *, world: int, grad_norm: float, skipped: int, lr: float,
              t_step: float) -> dict:
    """The `metrics.jsonl` row of one training step, from the reduced sums; `kind` tells it from eval rows."""
    return {"kind": "train", "step": step, "reward": (2 * s.correct - s.rollouts) / s.rollouts,
            "accuracy": s.correct / s.rollouts, "zero_adv_groups": s.zero_adv_groups / s.groups,
            "entropy": s.entropy / s.entropy_tokens if s.entropy_tokens else float("nan"),  # nan: every row skipped
            "response_length": s.tokens / s.rollouts, "truncated": s.truncated / s.rollouts,
            "grad_norm": grad_norm, "clip_frac": s.clip / s.rollouts, "approx_kl": s.approx_kl / s.rollouts,
            "loss": s.loss, "skipped_steps": skipped, "rows_skipped": s.rows_skipped / s.rollouts, "lr": lr,
            "time/generate": s.t_generate / world, "time/logprobs": s.t_logprobs / world,
            "time/update": s.t_update / world,
            "verifier/parse_failure_frac": s.parse_failures / s.rollouts, "verifier/timeouts": s.timeouts,
            "verifier/internal_errors": s.internal_errors, "time/step": t_step}


def console_line(row: dict, clip: bool = True) -> str:
    """One line of the row. `clip=False` leaves out the PPO clip fraction where it is always 0 (one mini-batch:
    the update starts from the policy that sampled, so every ratio is 1); metrics.jsonl keeps it."""
    return (f"step {row['step']:4d} | reward {row['reward']:+.3f} acc {row['accuracy']:.3f} "
            f"zero-adv {row['zero_adv_groups']:.2f} | ent {row['entropy']:.3f} len {row['response_length']:.1f} "
            f"trunc {row['truncated']:.2f} | gnorm {row['grad_norm']:.3f}"
            + (f" clip {row['clip_frac']:.3f}" if clip else "")
            + f" | gen {row['time/generate']:.2f}s logp {row['time/logprobs']:.2f}s upd {row['time/update']:.2f}s")


def open_log(out_dir: str, name: str, start: int):
    """Append to a JSONL log; on resume, first drop the rows of steps the checkpoint does not cover."""
    path = os.path.join(out_dir, name)
    if start > 1 and os.path.exists(path):
        with open(path) as f:
            rows = [line for line in f if line.strip() and json.loads(line)["step"] < start]
        with open(path, "w") as f:
            f.writelines(rows)
    elif start == 1 and os.path.exists(path):
        os.remove(path)  # a fresh run owns its directory's logs
    return open(path, "a")


def open_logs(cfg, start: int, argv: list[str] = ()):
    """(metrics.jsonl, samples.jsonl) opened for appending from step `start` on rank 0; (None, None) elsewhere. With
    `loggers` in the config, the first is a MetricsLog that hands each row to those trackers too (dynamo/trackers.py;
    `argv` names the run there)."""
    found = open_trackers(cfg, list(argv), start)  # rank 0: the run's id fixed, the named trackers opened
    if not dist.is_main():
        return None, None
    metrics = open_log(cfg.out_dir, "metrics.jsonl", start)
    return MetricsLog(metrics, found) if found else metrics, open_log(cfg.out_dir, "samples.jsonl", start)


class MetricsLog:
    """metrics.jsonl and the experiment trackers that get each of its rows as well (write_row forwards them)."""

    def __init__(self, file, trackers: list):
        self.file, self.trackers = file, trackers

    def write(self, text: str) -> None:
        self.file.write(text)

    def flush(self) -> None:
        self.file.flush()


def read_metrics(run_dir: str) -> dict[str, list[dict]]:
    """A run's metrics.jsonl rows by their `kind`: {"train": [...], "eval": [...]}, each in file order."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl (not a train.py output directory?)")
    rows: dict[str, list[dict]] = {"train": [], "eval": []}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.setdefault(row.get("kind"), []).append(row)  # logs older than `kind`: under None
    return rows


def write_row(file, row: dict) -> None:
    """One JSONL row; a MetricsLog also hands it to its trackers."""
    if file:
        file.write(json.dumps(row) + "\n")
        file.flush()
        for tracker in getattr(file, "trackers", ()):
            tracker.log(row)


def paired(first: dict, last: dict) -> dict:
    """Start and end accuracy of one evaluation set, and their difference with the standard error of the
    difference paired over problems (the same problems, evaluated twice)."""
    diff = [b - a for a, b in zip(first["per_problem"], last["per_problem"])]
    d = sum(diff) / len(diff)
    se = math.sqrt(sum((x - d) ** 2 for x in diff) / (len(diff) - 1) / len(diff)) if len(diff) > 1 else float("nan")
    return {"start": first["accuracy"], "start_se": first["se"], "end": last["accuracy"], "end_se": last["se"],
            "gain": d, "gain_se": se, "problems": len(diff)}


def summarise(first: dict | None, last: dict | None, out_dir: str, identity: dict,
              benchmarks: dict[str, tuple[dict, dict]] | None = None) -> None:
    """summary.json: start vs end of the held-out split (top-level keys) and of each eval_data benchmark
    (`benchmarks`, with their unweighted mean in `benchmarks_mean`), and the run's identity."""
    summary = {}
    if first and last:
        summary = paired(first, last)
        summary.pop("problems")
        summary.update(levels_start=first["levels"], levels_end=last["levels"])
        print(f"held-out pass@1: {first['accuracy']:.4f} -> {last['accuracy']:.4f} (gain {summary['gain']:+.4f} "
              f"+- {summary['gain_se']:.4f} SE, paired over {len(first['per_problem'])} problems)", flush=True)
    if benchmarks:
        per = {name: paired(a, b) for name, (a, b) in benchmarks.items()}
        n = len(per)
        summary["benchmarks"] = per
        summary["benchmarks_mean"] = {  # the benchmarks are independent samples: their SEs add in quadrature
            key: sum(p[key] for p in per.values()) / n for key in ("start", "end", "gain")} | {
            key: math.sqrt(sum(p[key] ** 2 for p in per.values())) / n for key in ("start_se", "end_se", "gain_se")}
        for name, p in per.items():
            print(f"{name}: {p['start']:.4f} -> {p['end']:.4f} (gain {p['gain']:+.4f} +- {p['gain_se']:.4f} SE, "
                  f"paired over {p['problems']} problems)", flush=True)
    summary.update(identity)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)