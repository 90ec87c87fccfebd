"""Sequence-level DynaMO: how many rollouts each prompt gets, and the per-prompt counts it needs.

The theory is docs/ALGORITHM.md §1, the statistics §2, the allocation rule §3; step 1 of train.py.

Pure Python/numpy, no torch. The training loop uses two names, and the log a third:

    stats = PromptStats.from_config(cfg.allocator)   # (n, k) of every visit per prompt id; in every checkpoint
    counts = step_counts(cfg, stats, prompt_ids, new_epoch)   # stats.refresh() at each epoch start (or step),
                                                # stats.view(prompt_ids) -> (G, rho), rollout_counts(G, rho, ...)
    ...                                         # sample, verify
    stats.update(response_prompt_ids, response_correct)   # one (id, correct) pair per response
    allocation_telemetry(counts, [stats.pass_rate(i) for i in prompt_ids], ...)   # the alloc/* metrics

Official behaviour was read from GithubX-F/DynaMO-RL @ 496c27f:
  - `priority`  <- verl/utils/dataset/rl_dataset.py `update_rank` (lines 168-199). This is the dataset class
    the DynaMO recipe actually builds (recipe/dynamo/rl_dataset.py has an older, unused `update_rank`).
  - `allocate`  <- recipe/dynamo/dynamo_ray_trainer.py `get_rollout_n_per_prompt` (lines 140-264), called in
    `fit` (the `rollout_allocation` branch) with initial_budget=4 and n_low/n_high from the config (8/24 in
    examples/dynamo_trainer/run_qwen2.5-math-7b.sh).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

UNSEEN = -1.0  # priority of a prompt with fewer than `min_samples` rollouts: it gets no priority share
_POSITIVE = 1e-8  # official threshold: a priority at or below this gets no share (dynamo_ray_trainer.py:210,213)


# ----------------------------------------------------------------------------------------------------------
# (a) priority of one prompt (§2)


def priority(G: float, k: float, *, min_samples: int = 4, mastered: float = 0.85, floor: float = 0.01,
             tie_break: float = 1e-6, prior: Sequence[float] = (), seen: int | None = None) -> float:
    """Official `update_rank` priority of a prompt with G rollouts so far, k of them correct.

    tie_break: the official code adds (1 - k/G) * 1e-6 to the variance (rl_dataset.py:195) so that, at equal
    variance, the less-solved prompt ranks first (Eq. 7). The official value is the default; 0
    gives the plain variance (Eq. 4). It can move one rollout between two prompts with equal variance.

    Options (none of them official; docs/ALGORITHM.md §2.1):
    G, k may be weighted counts (floats) from a memory that forgets (`PromptStats`' window, decay, groups); then
    `seen` is the number of rollouts ever drawn, which decides whether the prompt has a priority at all.
    prior (a, b): a Beta(a, b) prior on the pass rate. The weight becomes the posterior mean of p (1 - p),
    (k + a)(G - k + b) / ((G + a + b)(G + a + b + 1)), and the mastered test uses the posterior mean of p, so a
    prompt never solved in G tries keeps a weight that shrinks with G instead of dropping to the floor.
    """
    if min_samples < 2:
        raise ValueError(f"min_samples={min_samples}: must be >= 2 (the unbiased variance divides by G-1)")
    if not 0 <= k <= G:
        raise ValueError(f"need 0 <= k <= G, got G={G}, k={k}")
    if (G if seen is None else seen) < min_samples or G <= 0:
        return UNSEEN  # "not enough samples to compete" (rl_dataset.py:185-186)
    if prior:
        alpha, beta = k + prior[0], G - k + prior[1]  # Beta posterior
        p = alpha / (alpha + beta)
        variance = alpha * beta / ((alpha + beta) * (alpha + beta + 1))  # E[p (1 - p)] under the posterior
    else:
        p = k / G
        # unbiased Bernoulli variance, Eq. 4; weighted counts below 2 take the correction at 2
        variance = k * (G - k) / (G * (G - 1)) if G >= 2 else 2 * p * (1 - p)
    if p >= mastered:
        return floor  # mastered: lowest priority (rl_dataset.py:189-190)
    return max(variance + tie_break * (1.0 - p), floor)  # never-solved prompts land on the floor too


# ----------------------------------------------------------------------------------------------------------
# (b) official allocation rule (§3)


def _check_box(P: int, budget: int, n_min: int, n_max: int) -> None:
    if n_min < 1:
        raise ValueError(f"n_min={n_min}: every prompt in the batch needs at least one rollout")
    if n_min > n_max:
        raise ValueError(f"n_min={n_min} > n_max={n_max}")
    if not P * n_min <= budget <= P * n_max:
        raise ValueError(f"budget={budget} rollouts is outside [P*n_min, P*n_max] = [{P * n_min}, {P * n_max}] "
                         f"for P={P} prompts (the official code silently clips it; we refuse)")


def _trim_largest(c: np.ndarray, excess: int, n_min: int) -> None:
    """Take `excess` rollouts back one at a time from the largest count above n_min (lowest index on ties)."""
    for _ in range(excess):
        above = np.flatnonzero(c > n_min)
        c[above[np.argmax(c[above])]] -= 1  # np.argmax picks the first maximum, as the official loop does


def _round_robin(c: np.ndarray, amount: int, n_max: int) -> None:
    """Hand out `amount` rollouts one at a time, cycling in index order over prompts below n_max.

    The official loop cycles over a list fixed in advance and can push a prompt past n_max when capacities
    differ; re-reading who is still below n_max each pass gives the same result whenever the official one
    stays in bounds.
    """
    while amount > 0:
        below = np.flatnonzero(c < n_max)[:amount]
        if below.size == 0:
            return
        c[below] += 1
        amount -= below.size


def allocate(sample_counts: Sequence[int], priorities: Sequence[float], budget: int, n_min: int, n_max: int,
             exploration_budget: int) -> list[int]:
    """Official `get_rollout_n_per_prompt`: rollouts per prompt, summing to `budget`, each in [n_min, n_max].

    sample_counts: G_i (rollouts seen so far); priorities: rho_i (<= 1e-8, e.g. -1 for unseen, means no share).
    Deterministic: ties go to the lower index. Matches the official function on every input where the official
    one keeps its own bounds; the two places that differ are marked "deviation" below and need
    exploration_budget > n_min, which the official script never uses (initial_budget 4 <= n_low 8).
    """
    P = len(priorities)
    if len(sample_counts) != P:
        raise ValueError(f"sample_counts has {len(sample_counts)} entries but priorities has {P}")
    if P == 0:
        return []
    _check_box(P, budget, n_min, n_max)
    if exploration_budget < 0:
        raise ValueError(f"exploration_budget={exploration_budget} must be >= 0")
    G = np.asarray(sample_counts, dtype=np.int64)  # (P,)
    if (G < 0).any():
        raise ValueError("sample_counts must be >= 0")
    w = np.asarray(priorities, dtype=np.float64)  # (P,)
    if not np.isfinite(w).all():
        raise ValueError("priorities must be finite")

    # 1. exploration: prompts seen fewer than b0 times first get the difference (§3, stage 1).
    #    b0 = max(n_min, exploration_budget) as in the code (dynamo_ray_trainer.py:161); with n_min 8 and the
    #    official argument 4 this is 8, and step 2 lifts everyone to n_min anyway, so step 1 is then a no-op.
    b0 = max(n_min, exploration_budget)
    explore = np.minimum(np.maximum(b0 - G, 0), n_max)  # (P,) e_i = min(max(0, b0 - G_i), n_max)
    if explore.sum() <= budget:
        c = explore.copy()
    else:  # scale down (floor), keep >= n_min, then trim the largest back to the budget
        c = np.maximum(np.floor(explore * (budget / explore.sum())).astype(np.int64), n_min)
        _trim_largest(c, int(c.sum()) - budget, n_min)

    # 2. floor: raise every prompt to n_min (§3, stage 2).
    shortfall = np.maximum(n_min - c, 0)  # (P,)
    if shortfall.sum() <= budget - c.sum():
        c += shortfall
    else:  # deviation: the official code scales the floor down (or returns early) and leaves prompts below
        #    n_min; we keep the floor and take the difference back from the largest exploration counts instead.
        c = np.maximum(c, n_min)
        _trim_largest(c, int(c.sum()) - budget, n_min)

    # 3. water-filling by priority (§3, stage 3): share what is left in proportion to rho among prompts below
    #    n_max with rho > 1e-8, integerised by largest remainder, capped at n_max; leftover goes round again.
    #    Effective form once all prompts are seen: c_i ~ min(n_max, n_min + lambda * rho_i).
    left = budget - int(c.sum())
    while left > 0:
        open_ = np.flatnonzero((c < n_max) & (w > _POSITIVE))  # (E,) eligible prompt indices
        if open_.size == 0:  # nobody has a positive priority (first epoch: all -1): round-robin from index 0
            _round_robin(c, left, n_max)
            break
        share = left * (w[open_] / w[open_].sum())  # (E,) same float operations as the official code
        add = np.floor(share).astype(np.int64)
        # Stable sort: equal fractional parts go to the lower index (§3). The official np.argsort(-frac)
        # uses numpy's default, unstable sort, whose tie order depends on the numpy build and CPU (with
        # numpy 2.4 on an AVX-512 machine it differs from index order even for a handful of tied prompts).
        order = np.argsort(-(share - add), kind="stable")
        add[order[: left - int(add.sum())]] += 1
        add = np.minimum(add, n_max - c[open_])  # cap; the overflow re-enters the loop
        assert add.sum() > 0, "no progress (priorities too large to normalise?)"  # rather than spin forever
        c[open_] += add
        left -= int(add.sum())

    # 4. the official fix-up (round-robin +-1 to hit the budget exactly) is unreachable: steps 1-3 never
    #    overshoot the budget and only stop early when every prompt is at n_max (then the sum is P*n_max).
    assert int(c.sum()) == budget and c.min() >= n_min and c.max() <= n_max, (c.tolist(), budget)
    return [int(x) for x in c]


# ----------------------------------------------------------------------------------------------------------
# (c) exact box-constrained Neyman optimum (§1.1 Eq. 3, the paper's reading)


def _largest_remainder(x: np.ndarray, budget: int, n_min: int, n_max: int) -> np.ndarray:
    """Round x (which sums to `budget` up to float error) to integers in [n_min, n_max] with sum == budget.

    floor, then +1 to the largest fractional parts (lowest index on ties). The 1e-9 absorbs float error of the
    continuous solve so that 8.999999999 counts as 9.
    """
    c = np.clip(np.floor(x + 1e-9), n_min, n_max).astype(np.int64)
    frac = x - c
    diff = budget - int(c.sum())
    while diff > 0:  # one pass normally suffices; the loop only guards against float error
        can = np.flatnonzero(c < n_max)
        assert can.size, "budget above P * n_max"  # excluded by _check_box; guards against a silent spin
        pick = can[np.argsort(-frac[can], kind="stable")][:diff]
        c[pick] += 1
        frac[pick] -= 1.0
        diff -= pick.size
    while diff < 0:
        can = np.flatnonzero(c > n_min)
        assert can.size, "budget below P * n_min"
        pick = can[np.argsort(frac[can], kind="stable")][:-diff]
        c[pick] -= 1
        frac[pick] += 1.0
        diff += pick.size
    return c


def water_level_continuous(weights: Sequence[float], budget: int, n_min: int, n_max: int) -> list[float]:
    """Continuous minimiser of sum_i w_i^2 / n_i s.t. sum_i n_i = budget, n_min <= n_i <= n_max (Eq. 3).

    KKT gives n_i = clip(w_i * s, n_min, n_max) with one level s = 1/sqrt(nu), found here by bisection
    (the sum is monotone in s). Zero weights sit at n_min; if the positive weights all saturate at n_max the
    rest is split evenly over the zero-weight prompts (they add no variance, so any split is optimal).
    All weights zero: uniform split. Only ratios matter, so w is divided by its maximum, and weights below
    1e-12 of the largest count as zero (else n_max / w_min overflows in the level search).
    """
    w = np.asarray(weights, dtype=np.float64)  # (P,)
    P = w.size
    if P == 0:
        return []
    _check_box(P, budget, n_min, n_max)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    if w.max() > 0:
        w = w / w.max()
    pos = w > 1e-12
    if not pos.any():
        return [budget / P] * P
    saturated = int(pos.sum()) * n_max + int((~pos).sum()) * n_min  # sum with every positive weight at n_max
    if budget >= saturated:
        spill = (budget - saturated) / max(int((~pos).sum()), 1)
        return np.where(pos, float(n_max), n_min + spill).tolist()
    lo, hi = 0.0, float(n_max / w[pos].min())  # sum at lo is P*n_min <= budget < sum at hi = saturated
    for _ in range(200):  # bisection down to adjacent floats
        mid = 0.5 * (lo + hi)
        if np.clip(w * mid, n_min, n_max).sum() < budget:
            lo = mid
        else:
            hi = mid
        if hi <= np.nextafter(lo, np.inf):
            break
    return np.clip(w * hi, n_min, n_max).tolist()  # sum == budget up to float error (~1e-12)


def water_level(weights: Sequence[float], budget: int, n_min: int, n_max: int) -> list[int]:
    """Integer box-constrained Neyman allocation: `water_level_continuous`, then largest-remainder rounding.

    weights are sigma-like (pass std for the literal Neyman rule n ~ sigma, variance for the official
    weighting). Each n_i is the floor or the ceil of its continuous value and the sum is exactly the budget.
    Largest remainder is not always the integer optimum (the exact one would rank round-ups by
    w_i^2 / (n_i (n_i + 1))): on 3000 random cases with P <= 4 it reached the brute-force integer optimum
    in 99.7% of them and was within 0.6% of it otherwise.
    """
    x = np.asarray(water_level_continuous(weights, budget, n_min, n_max), dtype=np.float64)
    return [int(v) for v in _largest_remainder(x, budget, n_min, n_max)]


# ----------------------------------------------------------------------------------------------------------
# (d) rollouts per prompt from a snapshot (`rollout_counts`), and the loop's call (`step_counts`, further down,
#     since it takes the PromptStats of (e))


MODES = ("uniform", "dynamo", "oracle")
WEIGHTS = ("variance", "std")
RULES = ("official", "water_level")


def rollout_counts(G: Sequence[int], rho: Sequence[float], budget: int, *, mode: str = "dynamo",
                   weight: str = "variance", rule: str = "official", n_min: int, n_max: int,
                   exploration_budget: int, oracle_pass_rates: Sequence[float] | None = None) -> list[int]:
    """Rollouts per prompt for this step.

    mode    uniform: GRPO, budget // P each, the remainder +1 to the first prompts (n_min/n_max unused).
            dynamo:  weights from the snapshot (G, rho) of PromptStats.view().
            oracle:  weights from the true pass rates p, w = p(1-p) (no floor, no "mastered" cut); measurement only.
    weight  variance: w = rho (official). std: w = sqrt(rho) for seen prompts (literal Neyman n ~ sigma); the
            0.01 floor becomes a 0.1 std floor and unseen prompts keep -1 (no share), so std gives easy and
            never-solved prompts relatively more than variance does.
    rule    official: `allocate` (n_min floor + share in proportion to w). water_level: `water_level`; there an
            unseen prompt (rho = -1) gets the nominal budget // P (no information, so the GRPO count) and
            the seen prompts share the rest; if they all reach n_max the leftover goes back to the unseen ones.
    """
    P = len(G)
    if len(rho) != P:
        raise ValueError(f"G has {P} entries but rho has {len(rho)}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if weight not in WEIGHTS:
        raise ValueError(f"weight={weight!r}: expected one of {WEIGHTS}")
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: expected one of {RULES}")
    if P == 0:
        return []

    if mode == "uniform":
        if budget < P:
            raise ValueError(f"budget={budget} < P={P} prompts: every prompt needs at least one rollout")
        n, extra = divmod(budget, P)
        return [n + (i < extra) for i in range(P)]

    _check_box(P, budget, n_min, n_max)
    if mode == "oracle":
        if oracle_pass_rates is None or len(oracle_pass_rates) != P:
            raise ValueError(f"mode='oracle' needs oracle_pass_rates with one entry per prompt ({P})")
        p = np.asarray(oracle_pass_rates, dtype=np.float64)
        if not ((p >= 0) & (p <= 1)).all():
            raise ValueError("oracle_pass_rates must lie in [0, 1]")
        w = p * (1 - p)  # (P,) Bernoulli variance
        if weight == "std":
            w = np.sqrt(w)
        if rule == "official":
            # every prompt counts as seen (G = b0, so no exploration); zero-variance prompts get n_min
            return allocate([max(n_min, exploration_budget)] * P, w.tolist(), budget, n_min, n_max,
                            exploration_budget)
        return water_level(w.tolist(), budget, n_min, n_max)

    # mode == "dynamo"
    r = np.asarray(rho, dtype=np.float64)  # (P,)
    seen = r != UNSEEN
    if not np.isfinite(r).all() or (r[seen] < 0).any():
        raise ValueError("rho must be -1 (unseen) or >= 0")
    w = np.where(seen, np.sqrt(np.where(seen, r, 0.0)), UNSEEN) if weight == "std" else r
    if rule == "official":
        return allocate(list(G), w.tolist(), budget, n_min, n_max, exploration_budget)

    # water level: unseen prompts are pinned at the nominal count, seen prompts share the rest
    nominal = budget // P  # in [n_min, n_max] because budget is
    counts = np.full(P, nominal, dtype=np.int64)  # (P,)
    unseen = np.flatnonzero(~seen)
    rest = budget - nominal * unseen.size  # >= n_seen * n_min since rest >= n_seen * budget / P
    n_seen = P - unseen.size
    if n_seen > 0:
        take = min(rest, n_seen * n_max)
        counts[seen] = water_level(w[seen].tolist(), take, n_min, n_max)
        rest -= take
    # leftover: the division remainder when nobody is seen, or what saturated seen prompts could not take;
    # it fits because budget <= P * n_max
    sub = counts[unseen]
    _round_robin(sub, rest, n_max)
    counts[unseen] = sub
    return [int(x) for x in counts]


# ----------------------------------------------------------------------------------------------------------
# (e) per-prompt statistics: the only persistent allocator state (§2); the loop's call, step_counts


def _key(prompt_id) -> int | str:
    """Prompt ids are ints or strings; numpy/torch integer scalars are turned into int so keys compare equal."""
    if hasattr(prompt_id, "item") and not isinstance(prompt_id, (int, str)):
        prompt_id = prompt_id.item()
    if isinstance(prompt_id, bool) or not isinstance(prompt_id, (int, str)):
        raise TypeError(f"prompt id {prompt_id!r} must be an int or a str")
    return prompt_id


def _sort_key(prompt_id: int | str) -> tuple:
    return (isinstance(prompt_id, str), prompt_id)  # ints first, then strings: a total, stable order


MEMORIES = ("cumulative", "window", "decay", "groups")


class PromptStats:
    """Every group of rollouts each prompt id has had, (n, k) per visit, plus the priority snapshot.

    Memory: what the priority is computed from. `cumulative` (official) sums every visit: G, k over the whole run.
    The other memories follow a moving policy (docs/ALGORITHM.md §2.1): `window` keeps the last `window` rollouts
    (the oldest visit inside it counts in proportion, n' of its n rollouts and k n'/n of its correct ones),
    `decay` weights a visit v visits old by decay**v, `groups` keeps the last `groups` visits (1: the rewards'
    variance measured in the prompt's latest group, which with +-1 rewards is its unbiased Bernoulli variance).
    A visit is one `update` call's responses of that prompt: the loop calls `update` once per step and rank.

    Refresh: allocation reads a snapshot of (G, rho) taken by `refresh()`. Official behaviour is one snapshot
    per epoch: `update_rank` runs after each epoch (dynamo_ray_trainer.py, last line of `fit`) and the
    dataloader workers read G from a copy of the dataset taken when the epoch's iterator starts. The loop calls
    `refresh()` at each epoch start (`refresh: epoch`) or before every step (`refresh: step`). Before the first
    refresh every prompt reads as never seen (G = 0, rho = -1), so the first epoch is uniform. The snapshot's G
    is the number of rollouts ever drawn (what exploration asks), whatever the memory.

    Several ranks: the loop all-gathers the (prompt id, correct) pairs and every rank calls `update` with the
    same lists in the same order, so every rank holds the same history.
    """

    def __init__(self, *, memory: str = "cumulative", window: int = 16, decay: float = 0.5, groups: int = 1,
                 prior: Sequence[float] = (), min_samples: int = 4, mastered: float = 0.85, floor: float = 0.01,
                 tie_break: float = 1e-6):
        if memory not in MEMORIES:
            raise ValueError(f"memory={memory!r}: expected one of {MEMORIES}")
        if window < 2 or groups < 1 or not 0 < decay < 1:
            raise ValueError(f"need window >= 2, groups >= 1, 0 < decay < 1; got {window}, {groups}, {decay}")
        if prior and (len(prior) != 2 or min(prior) <= 0):
            raise ValueError(f"prior={list(prior)}: give two pseudo-counts [a, b], both > 0 (or none)")
        self.memory, self.window, self.decay, self.groups = memory, window, decay, groups
        self.priority_kwargs = dict(min_samples=min_samples, mastered=mastered, floor=floor, tie_break=tie_break,
                                    prior=tuple(float(x) for x in prior))
        self._visits: dict[int | str, list[list[int]]] = {}  # id -> [[n, k], ...] oldest first, live
        self._snapshot: dict[int | str, tuple[int, float]] = {}  # id -> (G, rho) at the last refresh()

    @classmethod
    def from_config(cls, allocator_cfg) -> "PromptStats":
        """The statistics a run's `allocator:` section asks for (memory, prior, `mastered` threshold, `floor`)."""
        a = allocator_cfg
        return cls(memory=a.memory, window=a.window, decay=a.decay, groups=a.groups, prior=a.prior,
                   mastered=a.mastered, floor=a.floor)

    def update(self, prompt_ids: Sequence, correct: Sequence[bool]) -> None:
        """Add one visit per prompt id present: response j belongs to prompt_ids[j] and was correct iff correct[j].

        Pass each response's own pair (§8 bug 2: never a reordered id list next to an unreordered
        correctness list). "correct" is the verifier's boolean, not the shaped reward.
        """
        if len(prompt_ids) != len(correct):
            raise ValueError(f"{len(prompt_ids)} prompt ids but {len(correct)} correctness flags: "
                             "pass one (prompt id, correct) pair per response")
        group: dict[int | str, list[int]] = {}  # this call's (n, k) per prompt, in first-seen order
        for pid, ok in zip(prompt_ids, correct):
            if hasattr(ok, "item"):
                ok = ok.item()
            if ok not in (0, 1):  # True/False/0/1 only: a shaped reward here would be a silent bug
                raise ValueError(f"correct must be boolean, got {ok!r} for prompt {pid!r}")
            entry = group.setdefault(_key(pid), [0, 0])
            entry[0] += 1
            entry[1] += int(ok)
        for pid, nk in group.items():
            self._visits.setdefault(pid, []).append(nk)

    def counts(self, prompt_id) -> tuple[int, int]:
        """Live cumulative (G, k) of a prompt over the whole run; (0, 0) if never sampled."""
        visits = self._visits.get(_key(prompt_id), ())
        return sum(n for n, _ in visits), sum(k for _, k in visits)

    def remembered(self, prompt_id) -> tuple[float, float]:
        """Live (G, k) as the memory weighs them: ints for `cumulative` and `groups`, floats otherwise."""
        visits = self._visits.get(_key(prompt_id), [])
        if self.memory == "cumulative":
            return self.counts(prompt_id)
        if self.memory == "groups":
            last = visits[-self.groups:]
            return sum(n for n, _ in last), sum(k for _, k in last)
        G = k = 0.0
        if self.memory == "decay":
            for age, (n_v, k_v) in enumerate(reversed(visits)):
                G += self.decay ** age * n_v
                k += self.decay ** age * k_v
            return G, k
        room = float(self.window)  # window: newest first until `window` rollouts are counted
        for n_v, k_v in reversed(visits):
            take = min(n_v, room)
            G, k, room = G + take, k + k_v * take / n_v, room - take
            if room <= 0:
                break
        return G, k

    def visits(self, prompt_id) -> list[list[int]]:
        """Every group (n, k) this prompt has had, oldest first (GRESO's streaks read them)."""
        return self._visits.get(_key(prompt_id), [])

    def pass_rate(self, prompt_id) -> float | None:
        """Live cumulative estimate k / G, or None for a prompt never sampled (telemetry; the memory does not
        change it, so logged pass-rate bins mean the same under every memory)."""
        G, k = self.counts(prompt_id)
        return k / G if G else None

    def refresh(self) -> None:
        """Take the snapshot that `view` returns: (G, rho) of every prompt sampled so far."""
        snap = {}
        for pid in self._visits:
            G_seen = self.counts(pid)[0]
            G, k = self.remembered(pid)
            snap[pid] = (G_seen, priority(G, k, seen=G_seen, **self.priority_kwargs))
        self._snapshot = snap

    def view(self, prompt_ids: Sequence) -> tuple[list[int], list[float]]:
        """Snapshot (G list, rho list) for these prompts, as `rollout_counts` takes them."""
        pairs = [self._snapshot.get(_key(pid), (0, UNSEEN)) for pid in prompt_ids]
        return [G for G, _ in pairs], [rho for _, rho in pairs]

    def __len__(self) -> int:
        return len(self._visits)

    def state_dict(self) -> dict:
        """Plain JSON-serialisable state. Lists of [id, ...] rows, not dicts, so int ids survive JSON."""
        ordered = sorted(self._visits.items(), key=lambda t: _sort_key(t[0]))
        return {
            "visits": [[pid, [list(v) for v in visits]] for pid, visits in ordered],
            "snapshot": [[pid, G, rho] for pid, (G, rho) in
                         sorted(self._snapshot.items(), key=lambda t: _sort_key(t[0]))],
        }

    def load_state_dict(self, state: dict) -> None:
        # the memory and priority settings are not stored: they come from the run's config, saved with the checkpoint
        if "visits" in state:
            self._visits = {_key(pid): [[int(n), int(k)] for n, k in visits] for pid, visits in state["visits"]}
        else:  # a checkpoint from before the per-visit history: its cumulative counts become one visit
            self._visits = {_key(pid): [[int(G), int(k)]] for pid, G, k in state["counts"] if G}
        self._snapshot = {_key(pid): (int(G), float(rho)) for pid, G, rho in state["snapshot"]}


# ----------------------------------------------------------------------------------------------------------
# (f) telemetry (logged into the JSONL metrics each step)

PASS_RATE_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # right-closed last bin: [0.8, 1.0]


def step_counts(cfg, stats: PromptStats, prompt_ids: Sequence, new_epoch: bool,
                oracle_pass_rates: Sequence[float] | None = None) -> list[int]:
    """Step 1 of train.py: this rank's rollouts per prompt. Their total is the rank's share of the step's budget,
    len(prompt_ids) * rollouts_per_prompt, the same on every rank (§3). The priorities are a snapshot, taken
    when an epoch starts (official) or before every step (allocator.refresh)."""
    a = cfg.allocator
    if new_epoch or a.refresh == "step":
        stats.refresh()
    G, rho = stats.view(prompt_ids)
    return rollout_counts(G, rho, len(prompt_ids) * cfg.rollouts_per_prompt, mode=cfg.allocation, weight=a.weight,
                          rule=a.rule, n_min=a.n_min, n_max=a.n_max, exploration_budget=a.exploration_budget,
                          oracle_pass_rates=oracle_pass_rates)


def allocation_telemetry(counts: Sequence[int], pass_rate_estimates: Sequence[float | None],
                         levels: Sequence | None = None,
                         rewards_by_group: Sequence[Sequence[float]] | None = None) -> dict:
    """Small JSON-ready summary of one step's allocation.

    counts[i] and pass_rate_estimates[i] (None = never seen) describe prompt i; levels[i] is its difficulty
    level if known; rewards_by_group[i] are the rewards of prompt i's rollouts this step.
    """
    P = len(counts)
    if len(pass_rate_estimates) != P or (levels is not None and len(levels) != P):
        raise ValueError("counts, pass_rate_estimates and levels need one entry per prompt")
    c = np.asarray(counts, dtype=np.int64)
    out: dict = {}
    if P:
        out.update({"alloc/count_min": int(c.min()), "alloc/count_mean": float(c.mean()),
                    "alloc/count_max": int(c.max())})
    values, freq = np.unique(c, return_counts=True)
    out["alloc/count_hist"] = {str(int(v)): int(f) for v, f in zip(values, freq)}

    # mean rollouts per estimated-pass-rate bin: does the allocator favour the middle of the difficulty range?
    by_bin: dict[str, list[int]] = {}
    for n, p in zip(counts, pass_rate_estimates):
        if p is None or (isinstance(p, float) and math.isnan(p)):
            label = "unseen"
        else:
            b = min(int(np.searchsorted(PASS_RATE_BINS, p, side="right")) - 1, len(PASS_RATE_BINS) - 2)
            label = f"{PASS_RATE_BINS[b]:.1f}-{PASS_RATE_BINS[b + 1]:.1f}"
        by_bin.setdefault(label, []).append(int(n))
    out["alloc/mean_count_by_pass_rate"] = {k: sum(v) / len(v) for k, v in sorted(by_bin.items())}

    if levels is not None:
        budget_by_level: dict[str, int] = {}
        for n, lv in zip(counts, levels):
            budget_by_level[str(lv)] = budget_by_level.get(str(lv), 0) + int(n)
        out["alloc/budget_by_level"] = dict(sorted(budget_by_level.items()))

    if rewards_by_group is not None:
        # a group whose rewards are all equal has zero GRPO advantage (§4): its rollouts teach nothing
        flat = [len(set(g)) <= 1 for g in rewards_by_group]
        n_roll = sum(len(g) for g in rewards_by_group)
        informative = sum(len(g) for g, z in zip(rewards_by_group, flat) if not z)
        out["alloc/zero_adv_group_frac"] = sum(flat) / len(flat) if flat else 0.0
        out["alloc/informative_rollout_frac"] = informative / n_roll if n_roll else 0.0
    return out
