"""Evaluation estimators: avg@k, unbiased pass@k, verl's bootstrap best@k, bootstrap confidence intervals.

Pure functions of per-problem verdicts (one list of bools per problem, n samples each) or of (n, c)
counts; everything random takes a seed. A benchmark's score is the unweighted mean over its problems;
the paper's Avg column is the unweighted mean over benchmarks (docs/ALGORITHM.md §7: 29.0 is the mean of the six
P@1 of 1.5B GRPO), so every benchmark weighs the same whatever its size.
"""
from __future__ import annotations

import numpy as np


def ks_up_to(k_max: int) -> list[int]:
    """1, 2, 4, ... up to k_max, plus k_max itself when it is not a power of two."""
    ks, k = [], 1
    while k < k_max:
        ks.append(k)
        k *= 2
    return ks + [k_max]


def avg_at_k(verdicts) -> float:
    """Mean over problems of each problem's fraction of correct samples: the paper's P@1 (avg@k).

    It equals the unbiased pass@1, c / n per problem.
    """
    return float(np.mean([np.mean(v) for v in verdicts]))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct of n samples: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1..n} (1 - k / i) (Chen et al. 2021, the Codex paper): the same
    number with no huge binomials, so nothing overflows and only float rounding is lost.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k samples contains a correct one
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def best_at_k(verdicts, k: int, *, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """verl's bootstrap best@k of each problem (`bootstrap_metric` with np.max in verl's metric_utils).

    Draw k of the n responses *with replacement*, take the best, average over `resamples` draws. The
    paper's P@32 is most likely this (§7). Drawing with replacement repeats responses, so its
    expectation 1 - (1 - c/n)^k is below the unbiased pass@k: it understates pass@k (one correct of
    32 gives 1 - (31/32)^32 = 0.64 at k = 32, where pass@32 is 1). Like verl, which reseeds before
    every prompt, the same index draws serve every problem. Returns a (P,) array.
    """
    v = np.asarray(verdicts, dtype=bool)  # (P, n) every problem has the same n samples
    idx = np.random.default_rng(seed).integers(0, v.shape[1], size=(resamples, k))  # (B, k)
    return v[:, idx].max(axis=2).mean(axis=1)  # (P, B, k) -> (P,)


def per_problem_scores(verdicts, *, resamples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Each metric's per-problem value, (P,) arrays keyed 'avg@K', 'pass@j' and 'best@j' for j in ks_up_to(K)."""
    n = len(verdicts[0])
    if any(len(v) != n for v in verdicts):
        raise ValueError("every problem needs the same number of samples")
    counts = [int(sum(v)) for v in verdicts]
    scores = {f"avg@{n}": np.array([c / n for c in counts])}
    for k in ks_up_to(n):
        scores[f"pass@{k}"] = np.array([pass_at_k(n, c, k) for c in counts])
    for k in ks_up_to(n):
        scores[f"best@{k}"] = best_at_k(verdicts, k, resamples=resamples, seed=seed)
    return scores


def bootstrap_ci(groups, *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the unweighted mean over groups of each group's mean.

    Problems are the unit that was sampled, so they are resampled with replacement within each group
    (benchmark); the set of benchmarks is fixed. One group gives the CI of one benchmark's score.
    """
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)  # (B,)
    for values in groups:
        x = np.asarray(values, dtype=float)  # (P,)
        means += x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1) / len(groups)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def summarize(verdicts_by_benchmark: dict[str, list], *, resamples: int = 1000, seed: int = 0) -> dict:
    """{benchmark: {metric: mean, metric_ci95: [lo, hi]}} plus 'Avg' over benchmarks, as fractions."""
    scores = {name: per_problem_scores(v, resamples=resamples, seed=seed)
              for name, v in verdicts_by_benchmark.items()}
    out: dict[str, dict] = {name: {} for name in scores}
    out["Avg"] = {}
    for key in next(iter(scores.values())):
        for name, s in scores.items():
            out[name][key] = float(s[key].mean())
            out[name][f"{key}_ci95"] = bootstrap_ci([s[key]], resamples=resamples, seed=seed)
        out["Avg"][key] = float(np.mean([s[key].mean() for s in scores.values()]))
        out["Avg"][f"{key}_ci95"] = bootstrap_ci([s[key] for s in scores.values()], resamples=resamples, seed=seed)
    return out
