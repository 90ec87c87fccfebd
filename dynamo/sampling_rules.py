"""The field's prompt-allocation rules beside DynaMO's, as pure functions (no torch, no model): what to keep,
skip, or how many rollouts to give. dynamo/collect.py runs them round by round; docs/COMPARISON.md, "Prompt
allocation", writes each one down with its source and every difference from it.

  dapo           keep_group                       DAPO's dynamic sampling (verl recipe/dapo, filter_groups)
  greso          skip_probability, adapt          GRESO's pre-rollout skip (presampling_selector.py, ray_trainer.py)
  knapsack       knapsack_counts, solve_knapsack  Knapsack RL (exploration_utils.py: sampling_budget_by_knapsack)
                 KnapsackHistory                  its pass-rate estimate (rl_dataset.py: update_sample_state)
  reinforce_ada  has_exited, training_group,      Reinforce-Ada (ray_trainer.py: _generate_multi_round_adaptive_
                 pool_statistics                  downsampling; core_algos.py: the global statistics)
"""
from __future__ import annotations

import math
from collections.abc import Sequence


# ---------------------------------------------------------------------------------------------------- DAPO

def keep_group(rewards: Sequence[float]) -> bool:
    """DAPO keeps a group whose rewards are not all equal (population std > 0), or a group of one."""
    return len(rewards) == 1 or len(set(rewards)) > 1


# ---------------------------------------------------------------------------------------------------- GRESO

def streak(visits: Sequence[Sequence[int]], solved: bool) -> int:
    """Most recent consecutive groups (visits (n, k), oldest first) all correct (solved) or with no correct one."""
    z = 0
    for n, k in reversed(visits):
        if (k == n) if solved else (k == 0):
            z += 1
        else:
            break
    return z


def skip_probability(visits: Sequence[Sequence[int]], p_easy: float, p_hard: float, floor: float = 0.01) -> float:
    """GRESO: the probability that a prompt with these past groups (n, k), oldest first, is skipped before rollout.

    Easy first: z_e most recent all-correct groups skip it with 1 - max(p_easy^z_e, floor). Otherwise, if its
    last group had no correct answer, z_h most recent no-correct groups skip it with 1 - max(p_hard^z_h, floor).
    A prompt never seen is never skipped."""
    if not visits:
        return 0.0
    z_easy = streak(visits, solved=True)
    if z_easy:
        return 1.0 - max(p_easy ** z_easy, floor)
    z_hard = streak(visits, solved=False)
    return 1.0 - max(p_hard ** z_hard, floor) if z_hard else 0.0


def adapt(p: float, measured: float, target: float, step: float = 0.01, low: float = 0.05,
          high: float = 0.95) -> float:
    """GRESO's update of p_easy (or p_hard) after a step: a zero-variance fraction at or above its target lowers
    p (more skipping), below it raises p; clipped to [low, high]."""
    return max(p - step, low) if measured >= target else min(p + step, high)


# ---------------------------------------------------------------------------------------------------- Knapsack RL

def knapsack_value(N: int, p: float) -> float:
    """Knapsack RL's value of N rollouts for a prompt of pass rate p: the chance that the group is not all equal,
    times p (1 - p)^2, as the official objective codes it."""
    return (1.0 - p ** N - (1.0 - p) ** N) * p * (1.0 - p) ** 2


def solve_knapsack(rates: Sequence[float], capacity: int, min_n: int, max_n: int) -> list[int]:
    """Extra rollouts k_i in [0, max_n - min_n] for prompts of pass rates `rates`, with sum k_i <= capacity, that
    maximise sum V(min_n + k_i, p_i): an exact dynamic programme over (prompts, rollouts used). As the official
    solver: it fills as much of the capacity as the bounds allow, ties go to the earlier (smaller) choice, and
    what the bounds leave over is spread evenly (the first prompts one more), which may exceed max_n."""
    m, K = len(rates), max_n - min_n
    if capacity <= 0 or m == 0:
        return [0] * m
    NEG = float("-inf")
    best = [0.0] + [NEG] * capacity  # best[w]: the highest value with exactly w extra rollouts so far
    choice = []  # choice[i][w]: k of prompt i on the best path to w
    for p in rates:
        new, pick = [NEG] * (capacity + 1), [0] * (capacity + 1)
        for w in range(capacity + 1):
            if best[w] > new[w]:
                new[w], pick[w] = best[w], 0
            for k in range(1, min(K, w) + 1):
                if best[w - k] == NEG:
                    continue
                v = best[w - k] + knapsack_value(k + min_n, p)
                if v > new[w]:
                    new[w], pick[w] = v, k
        best = new
        choice.append(pick)
    w = max(x for x in range(capacity + 1) if best[x] > NEG)  # = min(capacity, m K)
    extra = [0] * m
    for i in range(m - 1, -1, -1):
        extra[i] = choice[i][w]
        w -= extra[i]
    left = capacity - sum(extra)
    for i in range(m):
        extra[i] += left // m + (i < left % m)
    return extra


def knapsack_cost(p: float, alpha: float = 0.9) -> float:
    """Rollouts a prompt of pass rate p needs for a group that is not all equal with probability alpha."""
    return math.log(1.0 - alpha) / math.log(max(p, 1.0 - p))


def _spread(counts: list[int], who: list[int], amount: int) -> None:
    for j, i in enumerate(who):
        counts[i] += amount // len(who) + (j < amount % len(who))


def knapsack_counts(rates: Sequence[float | None], n: int, *, min_n: int = 2, max_n: int = 128,
                    alpha: float = 0.9) -> tuple[list[int], dict]:
    """Knapsack RL's rollouts per prompt; their total is exactly len(rates) * n. rates[i] is prompt i's estimated
    pass rate, None with too little history. Returns (counts, what happened: the remainder, whether the fallback
    fired, and the capacity the programme filled).

    None -> n. 0 < p < 1 ("effective") -> min_n plus a share found by `solve_knapsack`. p = 0 or 1 -> min_n.
    The remainder R = budget - the counts so far: without effective prompts it goes evenly to the prompts whose
    rate reads 0 (the official code's zero-initialised rates: too little history reads 0 too), or everyone gets
    n; with them, if their estimated need sum(int(min(max_n, cost_i))) is below R (the fallback), the excess goes
    to those same rate-0 prompts (or, if none, to every non-effective prompt) and the programme fills the need."""
    P = len(rates)
    budget = P * n
    counts = [n if p is None else min_n for p in rates]
    zero_read = [i for i, p in enumerate(rates) if p is None or p == 0]  # the official success rate is 0 for both
    effective = [i for i, p in enumerate(rates) if p is not None and 0 < p < 1]
    remainder = budget - sum(counts)
    info = {"remainder": remainder, "fallback": 0, "capacity": 0}
    if remainder > 0 and not effective:
        if zero_read:
            _spread(counts, zero_read, remainder)
        else:
            counts = [n] * P
        return counts, info
    if remainder <= 0:  # (never below 0: min_n <= n, checked with the config)
        return counts, info
    need = sum(int(min(max_n, knapsack_cost(rates[i], alpha))) for i in effective)
    capacity = remainder
    if need < remainder:
        others = zero_read or [i for i in range(P) if i not in effective]
        if others:  # the official code divides by an empty list here (all prompts effective): no fallback then
            _spread(counts, others, remainder - need)
            capacity, info["fallback"] = need, 1
    extra = solve_knapsack([rates[i] for i in effective], capacity, min_n, max_n)
    for i, k in zip(effective, extra):
        counts[i] += k
    info["capacity"] = capacity
    return counts, info


class KnapsackHistory:
    """Knapsack RL's pass-rate estimate per prompt: the mean reward of its latest visit, or of its `recent` most
    recent rewards when that visit had fewer; None until `min_history` rollouts were seen. Its state (the latest
    visit and the recent rewards of every prompt) goes into checkpoints."""

    def __init__(self, recent: int = 16, min_history: int = 8):
        self.recent, self.min_history = recent, min_history
        self._seen: dict = {}  # id -> rollouts ever seen
        self._last: dict = {}  # id -> (n, k) of its latest visit
        self._recent: dict = {}  # id -> its `recent` latest rewards (0/1), oldest first

    def update(self, prompt_id, correct: Sequence[bool]) -> None:
        """One visit: this prompt's responses in order."""
        c = [int(x) for x in correct]
        self._seen[prompt_id] = self._seen.get(prompt_id, 0) + len(c)
        self._last[prompt_id] = (len(c), sum(c))
        self._recent[prompt_id] = (self._recent.get(prompt_id, []) + c)[-self.recent:]

    def rate(self, prompt_id) -> float | None:
        if self._seen.get(prompt_id, 0) < self.min_history:
            return None
        n, k = self._last[prompt_id]
        if n >= self.recent:
            return k / n
        r = self._recent[prompt_id]
        return sum(r) / len(r)

    def state_dict(self) -> dict:
        return {"rows": [[pid, self._seen[pid], list(self._last[pid]), self._recent[pid]] for pid in self._seen]}

    def load_state_dict(self, state: dict) -> None:
        self._seen = {pid: seen for pid, seen, _, _ in state["rows"]}
        self._last = {pid: tuple(last) for pid, _, last, _ in state["rows"]}
        self._recent = {pid: list(r) for pid, _, _, r in state["rows"]}


# ---------------------------------------------------------------------------------------------------- Reinforce-Ada

def has_exited(n_correct: int, n_wrong: int, n: int, exit_rule: str) -> bool:
    """Reinforce-Ada: does a prompt with these answers so far leave the rounds? `balanced`: at least n/2 correct
    and n - n/2 wrong; `positive_focused`: at least one correct."""
    if exit_rule == "balanced":
        return n_correct >= n // 2 and n_wrong >= n - n // 2
    return n_correct >= 1


def training_group(correct: Sequence[bool], n: int, exited: bool, exit_rule: str) -> list[int]:
    """Reinforce-Ada: which of a prompt's samples (in the order drawn) form its training group of n rows, as the
    official code forms it: the first ones of each kind, correct rows first.

    Exited (either rule): n/2 correct and n - n/2 wrong where there are that many, the shortfall of one kind
    filled from the other (from the correct ones first). Still active after the last round: `balanced` does the
    same; `positive_focused` takes max(min(ceil(n * correct share), n - 1), 1) correct and the rest wrong."""
    pos = [i for i, c in enumerate(correct) if c]
    neg = [i for i, c in enumerate(correct) if not c]
    take = min(n, len(correct))
    if exited or exit_rule == "balanced":
        want_pos, want_neg = n // 2, n - n // 2
    else:
        want_pos = max(min(math.ceil(len(pos) / len(correct) * n), take - 1), 1)
        want_neg = take - want_pos
    n_pos, n_neg = min(want_pos, len(pos)), min(want_neg, len(neg))
    short = take - n_pos - n_neg
    if short > 0:  # the official fill: from the correct ones first, else from the wrong ones
        if len(pos) - n_pos > 0:
            n_pos += min(short, len(pos) - n_pos)
        else:
            n_neg += min(short, len(neg) - n_neg)
    return pos[:n_pos] + neg[:n_neg]


def pool_statistics(correct: Sequence[bool]) -> tuple[float, float]:
    """Reinforce-Ada's global statistics of a prompt: mean and unbiased std of the rewards (+-1) of every sample
    drawn for it, not only of those kept; (0, 1) for a single sample, as the official code has it."""
    if len(correct) <= 1:
        return 0.0, 1.0
    r = [1.0 if c else -1.0 for c in correct]
    mean = sum(r) / len(r)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
