# python -m pytest -q tests/test_allocator.py
"""Rollout allocation (docs/ALGORITHM.md §1-§3) and per-prompt statistics: hand-computed cases, the §3 table,
properties over random inputs, and a brute-force check of the water level."""

import itertools
import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynamo.allocator import (
    PromptStats, allocate, allocation_telemetry, priority, rollout_counts, water_level, water_level_continuous,
)

FAST = settings(max_examples=150, deadline=None)
PAPER = dict(n_min=8, n_max=24, exploration_budget=4)  # §3 reference setting

# ----------------------------------------------------------------------------------------------------------
# priority (§2)


def test_priority_rule():
    assert priority(3, 1) == -1.0  # fewer than 4 rollouts: unseen
    assert priority(0, 0) == -1.0
    assert priority(16, 14) == 0.01  # p = 0.875 >= 0.85: mastered
    assert priority(16, 0) == 0.01  # never solved: variance 0 (+1e-6 tie-break) -> floor
    assert priority(16, 8, tie_break=0) == pytest.approx(8 * 8 / (16 * 15))  # §2 formula exactly
    assert priority(16, 8) == 8 * 8 / (16 * 15) + 0.5e-6  # official adds (1 - p) * 1e-6
    assert priority(16, 1, tie_break=0) == max(15 / 240, 0.01)
    # official tie-break: equal variance (k = 4 and k = 12 of 16), the less-solved prompt ranks first
    assert priority(16, 4) > priority(16, 12)
    assert priority(16, 4, tie_break=0) == priority(16, 12, tie_break=0)


def test_priority_errors():
    with pytest.raises(ValueError, match="k <= G"):
        priority(4, 5)
    with pytest.raises(ValueError, match="min_samples"):
        priority(4, 1, min_samples=1)


# ----------------------------------------------------------------------------------------------------------
# official rule: §3 reference table, row by row

TABLE = [
    ([16, 16, 16, 16], [0.01, 0.25, 0.2667, 0.0625], 64, [9, 22, 22, 11]),
    ([16, 16, 16, 0], [0.01, 0.25, 0.2667, -1], 64, [9, 23, 24, 8]),
    ([0, 0, 0, 0], [-1, -1, -1, -1], 64, [16, 16, 16, 16]),
    ([16, 16, 16, 16], [0.5, 0.5, 0.01, 0.01], 64, [24, 24, 8, 8]),
    ([32, 16, 48, 16], [0.2, 0.1, 0.05, 0.26], 64, [18, 13, 11, 22]),
]


@pytest.mark.parametrize("G,rho,T,expected", TABLE)
def test_spec_table(G, rho, T, expected):
    assert allocate(G, rho, T, 8, 24, 4) == expected
    assert rollout_counts(G, rho, T, **PAPER) == expected  # default mode/weight/rule is the official one


def test_exploration_budget_is_max_of_n_min_and_argument():
    # b0 = max(n_min, 4) = 8: a prompt with G = 5 still gets exploration, but step 2 lifts it to n_min anyway,
    # so G only matters through rho. Same priorities, different G below 8: same counts.
    assert allocate([5, 16], [0.2, 0.2], 40, 8, 24, 4) == allocate([16, 16], [0.2, 0.2], 40, 8, 24, 4) == [20, 20]
    # with exploration_budget above n_min the unseen prompt is served first: e = 12 - 0 = 12
    assert allocate([0, 16], [-1, 0.2], 24, 8, 24, 12) == [12, 12]


def test_stays_in_bounds_where_official_does_not():
    # official: step 1 gives [20, 0], leaving 4, then the floor is scaled down -> [20, 4] (below n_min).
    # here: floor first, the excess is taken back from the largest exploration count.
    assert allocate([0, 16], [-1, 0.3], 24, 8, 24, 20) == [16, 8]
    # official round-robin over a fixed list would give [26, 22] (above n_max); here it skips full prompts.
    assert allocate([0, 3], [-1, -1], 48, 8, 24, 20) == [24, 24]


def test_ties_go_to_lower_index():
    # 4 prompts at n_min = 8 leave 3 rollouts; equal shares 0.75 each, so the 3 go to the first three
    assert allocate([16] * 4, [0.1] * 4, 35, 8, 24, 4) == [9, 9, 9, 8]
    assert allocate([0] * 4, [-1] * 4, 35, 8, 24, 4) == [9, 9, 9, 8]  # round-robin from index 0


# ----------------------------------------------------------------------------------------------------------
# official rule: properties


@st.composite
def problems(draw, max_p=12, b0_le_n_min=False):
    P = draw(st.integers(1, max_p))
    n_min = draw(st.integers(1, 10))
    n_max = draw(st.integers(n_min, n_min + 20))
    eb = draw(st.integers(0, n_min)) if b0_le_n_min else draw(st.integers(0, 30))
    budget = draw(st.integers(P * n_min, P * n_max))
    G = draw(st.lists(st.integers(0, 40), min_size=P, max_size=P))
    rho = draw(st.lists(st.sampled_from([-1.0, 0.0, 0.01, 0.05, 0.1, 0.2, 0.25, 0.2667])
                        | st.floats(0.0, 0.3), min_size=P, max_size=P))
    return G, rho, budget, n_min, n_max, eb


@FAST
@given(problems(max_p=40))
def test_allocate_sum_bounds_deterministic(prob):
    G, rho, budget, n_min, n_max, eb = prob
    c = allocate(G, rho, budget, n_min, n_max, eb)
    assert sum(c) == budget
    assert all(n_min <= x <= n_max for x in c)
    assert allocate(G, rho, budget, n_min, n_max, eb) == c
    assert all(type(x) is int for x in c)


@FAST
@given(problems(b0_le_n_min=True), st.sampled_from([-1.0, 0.01, 0.2]))
def test_allocate_uniform_when_priorities_equal(prob, r):
    # equal priorities (all seen, or all unseen): GRPO's counts, the remainder to the first prompts
    G, _, budget, n_min, n_max, eb = prob
    P = len(G)
    expected = [budget // P + (i < budget % P) for i in range(P)]
    assert allocate(G, [r] * P, budget, n_min, n_max, eb) == expected


@FAST
@given(problems(b0_le_n_min=True))
def test_allocate_monotone_in_priority(prob):
    # rho_i > rho_j => c_i >= c_j, for prompts with equal G (the official setting: exploration_budget <= n_min).
    # Priorities at or below 1e-8 (unseen -1, or 0) all mean "no share" and are tied: round-robin by index.
    G, rho, budget, n_min, n_max, eb = prob
    c = allocate(G, rho, budget, n_min, n_max, eb)
    for i, j in itertools.permutations(range(len(G)), 2):
        if G[i] == G[j] and rho[i] > rho[j] and rho[i] > 1e-8:
            assert c[i] >= c[j], (i, j)


# ----------------------------------------------------------------------------------------------------------
# water level against brute force


def _objective(w, n):
    return sum(wi * wi / ni for wi, ni in zip(w, n))  # §1: Var ∝ sum_i sigma_i^2 / n_i


def _brute_force(w, budget, lo, hi):
    feasible = (n for n in itertools.product(range(lo, hi + 1), repeat=len(w)) if sum(n) == budget)
    return min(_objective(w, n) for n in feasible)


def test_water_level_hand_cases():
    assert water_level([1, 2, 3], 60, 1, 100) == [10, 20, 30]  # interior: n ∝ w (Neyman)
    assert water_level([1, 1, 10], 30, 5, 15) == [8, 7, 15]  # 15 at n_max, 7.5 + 7.5: the tie goes to index 0
    assert water_level([0, 0, 0], 31, 8, 12) == [11, 10, 10]  # all zero: uniform split
    assert water_level([1, 0, 0], 30, 8, 12) == [12, 9, 9]  # zero weight: n_min, unless the rest spills over
    assert water_level([5, 5], 20, 8, 12) == [10, 10]
    assert water_level([1.0, 1e-300, 0.0], 36, 8, 16) == [16, 10, 10]  # below 1e-12 of the max: counts as zero


def test_water_level_against_brute_force():
    """What is asserted, for 200 seeded cases with P <= 4 and small bounds:
    (a) sum == budget and bounds; (b) each n_i is floor or ceil of the continuous optimum x_i;
    (c) f(x) <= f(n*) <= f(n), where n* is the brute-force integer optimum (so x really is the continuous optimum);
    (d) f(n) - f(n*) <= sum_i w_i^2 (1/floor(x_i) - 1/x_i), the rounding gap (follows from (b) and (c));
    (e) largest remainder reaches the integer optimum exactly in at least 97% of the cases."""
    rng = random.Random(0)
    exact = 0
    for _ in range(200):
        P = rng.randint(1, 4)
        lo = rng.randint(1, 5)
        hi = lo + rng.randint(0, 6)
        budget = rng.randint(P * lo, P * hi)
        w = [0.0 if rng.random() < 0.15 else rng.random() for _ in range(P)]
        x = water_level_continuous(w, budget, lo, hi)
        n = water_level(w, budget, lo, hi)
        assert sum(n) == budget and all(lo <= v <= hi for v in n)  # (a)
        assert sum(x) == pytest.approx(budget, abs=1e-9)
        assert all(math.floor(xi + 1e-9) <= ni <= math.ceil(xi - 1e-9) for xi, ni in zip(x, n))  # (b)
        f_x, f_n, f_star = _objective(w, x), _objective(w, n), _brute_force(w, budget, lo, hi)
        assert f_x <= f_star + 1e-12 and f_star <= f_n + 1e-12  # (c)
        gap = sum(wi * wi * (1 / math.floor(xi + 1e-9) - 1 / xi) for wi, xi in zip(w, x))
        assert f_n - f_star <= gap + 1e-12  # (d)
        exact += f_n <= f_star * (1 + 1e-12) + 1e-15
    assert exact >= 0.97 * 200  # (e)


@FAST
@given(st.integers(1, 30), st.integers(1, 10), st.integers(0, 20), st.data())
def test_water_level_sum_bounds_monotone(P, lo, width, data):
    hi = lo + width
    budget = data.draw(st.integers(P * lo, P * hi))
    w = data.draw(st.lists(st.floats(1e-6, 1) | st.just(0.0), min_size=P, max_size=P))
    n = water_level(w, budget, lo, hi)
    assert sum(n) == budget and all(lo <= v <= hi for v in n)
    for i, j in itertools.permutations(range(P), 2):
        if w[i] > w[j]:
            assert n[i] >= n[j]  # x is monotone in w, and largest remainder rounds the larger fraction up first


# ----------------------------------------------------------------------------------------------------------
# rollout_counts dispatch


def test_uniform_mode_is_grpo():
    assert rollout_counts([0, 5, 9], [-1, 0.1, 0.2], 48, mode="uniform", **PAPER) == [16, 16, 16]
    assert rollout_counts([0] * 3, [-1] * 3, 50, mode="uniform", **PAPER) == [17, 17, 16]


def test_dynamo_std_weight_and_water_level():
    G, rho = [16, 16, 16, 16], [0.01, 0.25, 0.2667, 0.0625]
    std = rollout_counts(G, rho, 64, weight="std", **PAPER)
    assert std == allocate(G, [math.sqrt(r) for r in rho], 64, 8, 24, 4)
    assert sum(std) == 64 and std[0] > 9  # the sqrt gives the floor prompt relatively more than variance does
    wl = rollout_counts(G, rho, 64, rule="water_level", **PAPER)
    assert wl == water_level(rho, 64, 8, 24)


def test_water_level_rule_unseen_get_nominal():
    # unseen prompts: budget // P = 16; seen prompts share the other 32 by the water level
    c = rollout_counts([16, 16, 16, 0], [0.01, 0.25, 0.2667, -1], 64, rule="water_level", **PAPER)
    assert c[3] == 16 and c[:3] == water_level([0.01, 0.25, 0.2667], 48, 8, 24)
    # seen prompts saturate at n_max: the leftover goes back to the unseen ones
    # (budget 71: nominal 23, the seen prompt could take 71 - 2 * 23 = 25 > 24, so 1 returns to index 1)
    c = rollout_counts([16, 0, 0], [0.2, -1, -1], 71, rule="water_level", **PAPER)
    assert c == [24, 24, 23]
    # nobody seen: uniform
    assert rollout_counts([0] * 3, [-1] * 3, 50, rule="water_level", **PAPER) == [17, 17, 16]


def test_oracle_mode():
    p = [0.0, 0.5, 0.9, 1.0]
    c = rollout_counts([0] * 4, [-1] * 4, 64, mode="oracle", oracle_pass_rates=p, **PAPER)
    assert c == allocate([8] * 4, [0.0, 0.25, 0.09, 0.0], 64, 8, 24, 4) == [8, 24, 24, 8]
    c = rollout_counts([0] * 4, [-1] * 4, 64, mode="oracle", rule="water_level", weight="std",
                       oracle_pass_rates=p, **PAPER)
    assert c == water_level([0.0, 0.5, 0.3, 0.0], 64, 8, 24)


@FAST
@given(problems(max_p=20), st.sampled_from(["dynamo", "oracle", "uniform"]), st.sampled_from(["variance", "std"]),
       st.sampled_from(["official", "water_level"]), st.data())
def test_rollout_counts_sum_and_bounds(prob, mode, weight, rule, data):
    G, rho, budget, n_min, n_max, eb = prob
    p = data.draw(st.lists(st.floats(0, 1), min_size=len(G), max_size=len(G)))
    c = rollout_counts(G, rho, budget, mode=mode, weight=weight, rule=rule, n_min=n_min, n_max=n_max,
                       exploration_budget=eb, oracle_pass_rates=p)
    assert sum(c) == budget
    if mode != "uniform":
        assert all(n_min <= x <= n_max for x in c)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="ppo"), "mode='ppo'"),
    (dict(weight="entropy"), "weight='entropy'"),
    (dict(rule="greedy"), "rule='greedy'"),
    (dict(n_min=25), "n_min=25 > n_max=24"),
    (dict(budget=31), r"budget=31 rollouts is outside.*\[32, 96\]"),
    (dict(budget=97), "outside"),
    (dict(G=[0, 0, 0]), "G has 3 entries but rho has 4"),
    (dict(mode="oracle"), "oracle_pass_rates"),
    (dict(mode="oracle", oracle_pass_rates=[0.1, 2.0, 0.3, 0.4]), r"\[0, 1\]"),
    (dict(rho=[-0.5, 0.1, 0.1, 0.1]), "rho must be -1"),
    (dict(mode="uniform", budget=3), "at least one rollout"),
])
def test_rollout_counts_errors(kwargs, match):
    args = dict(G=[0] * 4, rho=[-1.0] * 4, budget=64, **PAPER) | kwargs
    with pytest.raises(ValueError, match=match):
        rollout_counts(args.pop("G"), args.pop("rho"), args.pop("budget"), **args)


def test_allocate_errors():
    with pytest.raises(ValueError, match="entries"):
        allocate([0, 0], [1.0], 16, 8, 24, 4)
    with pytest.raises(ValueError, match="n_min=0"):
        allocate([0], [1.0], 16, 0, 24, 4)
    with pytest.raises(ValueError, match="exploration_budget"):
        allocate([0], [1.0], 16, 8, 24, -1)
    with pytest.raises(ValueError, match="weights"):
        water_level([1.0, -1.0], 16, 8, 24)


# ----------------------------------------------------------------------------------------------------------
# PromptStats


def test_prompt_stats_update_and_pass_rate():
    s = PromptStats()
    s.update([7, 7, 7, "q", 7], [True, False, True, 1, np.bool_(False)])
    assert s.counts(7) == (4, 2) and s.counts("q") == (1, 1) and s.counts("never") == (0, 0)
    assert s.pass_rate(7) == 0.5 and s.pass_rate("never") is None
    s.update([np.int64(7)], [True])  # numpy ids are the same key as Python ints
    assert s.counts(7) == (5, 3) and len(s) == 2


def test_prompt_stats_each_response_keeps_its_own_pair():
    # §8 bug 2: variable group sizes; the pairs arrive interleaved, as after a rebalancing shuffle
    ids = [1, 2, 1, 2, 2, 3, 1]
    ok = [True, False, True, False, True, False, False]
    s = PromptStats()
    s.update(ids, ok)
    assert [s.counts(i) for i in (1, 2, 3)] == [(3, 2), (3, 1), (1, 0)]


def test_prompt_stats_snapshot_semantics():
    s = PromptStats()
    assert s.view([1, 2]) == ([0, 0], [-1.0, -1.0])  # before any refresh: never seen
    s.update([1] * 16, [True] * 8 + [False] * 8)
    assert s.view([1]) == ([0], [-1.0])  # live counts changed, the snapshot did not
    s.refresh()
    assert s.view([1, 2]) == ([16, 0], [priority(16, 8), -1.0])
    s.update([1] * 16, [True] * 16)  # mid-epoch updates stay invisible until the next refresh
    assert s.view([1])[1] == [priority(16, 8)]
    s.refresh()
    assert s.view([1]) == ([32], [priority(32, 24)])


def test_prompt_stats_priority_settings():
    s = PromptStats(min_samples=2, floor=0.05, tie_break=0.0)
    s.update([1, 1], [True, False])
    s.refresh()
    assert s.view([1])[1] == [max(1 * 1 / 2, 0.05)]


def test_prompt_stats_order_independent_and_round_trip():
    pairs = [(i % 5, (i * 7) % 3 == 0) for i in range(40)] + [("a", True), ("b", False), ("a", False)]
    a, b = PromptStats(), PromptStats()
    a.update([p for p, _ in pairs], [c for _, c in pairs])
    random.Random(0).shuffle(pairs)
    b.update([p for p, _ in pairs], [c for _, c in pairs])
    a.refresh()
    b.refresh()
    assert a.state_dict() == b.state_dict()

    a.update([0, 0], [True, True])  # live counts now differ from the snapshot; both must survive
    restored = PromptStats()
    restored.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert restored.state_dict() == a.state_dict()
    ids = [0, 1, 2, 3, 4, "a", "b", "c"]
    assert restored.view(ids) == a.view(ids)
    assert [restored.counts(i) for i in ids] == [a.counts(i) for i in ids]
    assert restored.counts(0) == a.counts(0) and restored.counts("0") == (0, 0)  # int ids stay ints


def test_prompt_stats_errors():
    s = PromptStats()
    with pytest.raises(ValueError, match="2 prompt ids but 1 correctness"):
        s.update([1, 2], [True])
    with pytest.raises(ValueError, match="boolean"):
        s.update([1], [0.5])  # a shaped reward, not the verifier's boolean
    with pytest.raises(TypeError, match="int or a str"):
        s.update([1.0], [True])


# ----------------------------------------------------------------------------------------------------------
# telemetry


def test_allocation_telemetry():
    t = allocation_telemetry(
        counts=[8, 24, 16, 8],
        pass_rate_estimates=[0.95, 0.5, None, 0.1],
        levels=[1, 3, 3, 5],
        rewards_by_group=[[1] * 8, [1, -1] * 12, [-1] * 16, [1] + [-1] * 7],
    )
    assert (t["alloc/count_min"], t["alloc/count_mean"], t["alloc/count_max"]) == (8, 14.0, 24)
    assert t["alloc/count_hist"] == {"8": 2, "16": 1, "24": 1}
    assert t["alloc/mean_count_by_pass_rate"] == {"0.0-0.2": 8.0, "0.4-0.6": 24.0, "0.8-1.0": 8.0, "unseen": 16.0}
    assert t["alloc/budget_by_level"] == {"1": 8, "3": 40, "5": 8}
    assert t["alloc/zero_adv_group_frac"] == 0.5  # groups 0 and 2 are all-equal
    assert t["alloc/informative_rollout_frac"] == (24 + 8) / 56
    json.dumps(t)  # goes straight into the JSONL log


def test_mastered_threshold_and_floor_are_config_keys():
    from dynamo.config import ConfigError, load_config
    official = PromptStats.from_config(load_config(["--config", "configs/default.yaml"]).allocator)
    no_rule = PromptStats.from_config(load_config(["--config", "configs/default.yaml", "allocator.mastered=1.01",
                                                   "allocator.floor=0.02"]).allocator)
    for s in (official, no_rule):
        s.update([1] * 8 + [2] * 8, [True] * 7 + [False] + [False] * 8)  # prompt 1: 7/8 solved; prompt 2: 0/8
        s.refresh()
    assert official.view([1, 2])[1] == [0.01, 0.01]  # 7/8 >= 0.85: mastered, the floor; 0/8: the floor too
    variance = 7 * 1 / (8 * 7)  # unbiased Bernoulli variance of 7 of 8
    assert no_rule.view([1, 2])[1] == [pytest.approx(variance + 1e-6 * (1 - 7 / 8)), 0.02]
    for bad in ("allocator.mastered=0", "allocator.floor=0"):
        with pytest.raises(ConfigError, match="must be > 0"):
            load_config(["--config", "configs/default.yaml", bad])


# ----------------------------------------------------------------------------------------------------------
# memory and prior options (docs/ALGORITHM.md §2.1): the official statistics stay the default


def _visit(s: PromptStats, pid, n: int, k: int) -> None:
    s.update([pid] * n, [True] * k + [False] * (n - k))  # one call = one visit of the prompt


def test_cumulative_memory_is_the_official_priority():
    rng = random.Random(0)
    s = PromptStats()
    totals: dict[int, list[int]] = {}
    for _ in range(60):
        pid, n = rng.randrange(6), rng.randrange(1, 17)
        k = rng.randrange(n + 1)
        _visit(s, pid, n, k)
        totals.setdefault(pid, [0, 0])[0] += n
        totals[pid][1] += k
    s.refresh()
    for pid, (G, k) in totals.items():
        assert s.remembered(pid) == s.counts(pid) == (G, k)
        assert s.view([pid]) == ([G], [priority(G, k)])  # bit for bit: the same float operations


def test_memories_follow_a_prompt_that_got_solved():
    # the case: 0/8 in the first epoch, 8/8 in each of the two since
    stats = {m: PromptStats(memory=m, window=8, decay=0.5, groups=1) for m in ("cumulative", "window", "decay", "groups")}
    for s in stats.values():
        for k in (0, 8, 8):
            _visit(s, "p", 8, k)
        s.refresh()
    assert stats["cumulative"].remembered("p") == (24, 16)  # p = 2/3: still reads as a useful prompt
    assert stats["cumulative"].view(["p"])[1][0] == priority(24, 16)
    assert stats["window"].remembered("p") == (8.0, 8.0)
    assert stats["groups"].remembered("p") == (8, 8)
    assert stats["decay"].remembered("p") == (8 + 4 + 2, 8 + 4)  # weights 1, 1/2, 1/4, newest first
    for m in ("window", "groups"):  # p = 1: mastered, the floor; the snapshot's G still counts every rollout
        assert stats[m].view(["p"]) == ([24], [0.01])
    assert stats["decay"].view(["p"]) == ([24], [0.01])  # 12/14 = 0.857 >= 0.85
    assert [stats[m].pass_rate("p") for m in stats] == [16 / 24] * 4  # telemetry stays cumulative


def test_window_counts_the_oldest_visit_in_proportion():
    s = PromptStats(memory="window", window=12)
    _visit(s, 1, 8, 4)
    _visit(s, 1, 8, 8)
    assert s.remembered(1) == (12.0, 8.0 + 4 * 4 / 8)  # all of the newest visit, 4 of the 8 before it
    s.refresh()
    G, k = 12.0, 10.0
    assert s.view([1])[1] == [priority(G, k, seen=16)]
    assert s.view([1])[1][0] == pytest.approx(k * (G - k) / (G * (G - 1)) + 1e-6 * (1 - k / G))


def test_groups_memory_gate_and_small_weighted_counts():
    s = PromptStats(memory="groups", groups=1)
    _visit(s, 1, 2, 1)
    s.refresh()
    assert s.view([1]) == ([2], [-1.0])  # 2 rollouts ever < min_samples 4: no priority yet
    _visit(s, 1, 2, 1)
    s.refresh()
    # 4 rollouts ever: a priority from the latest group (n = 2, k = 1): unbiased variance 1/2
    assert s.view([1]) == ([4], [priority(2, 1, seen=4)])
    assert priority(2, 1, seen=4, tie_break=0) == 0.5 and priority(2, 1) == -1.0
    assert priority(1.5, 0.75, seen=8, tie_break=0) == 2 * 0.5 * 0.5  # weighted counts below 2: the correction at 2


def test_beta_prior_keeps_never_solved_prompts_off_the_floor():
    s = PromptStats(prior=(1, 1))
    _visit(s, "never", 8, 0)
    _visit(s, "half", 8, 4)
    s.refresh()
    rho = s.view(["never", "half"])[1]
    a, b = 1, 1 + 8  # posterior Beta(1, 9)
    assert rho[0] == pytest.approx(a * b / ((a + b) * (a + b + 1)) + 1e-6 * (1 - a / (a + b)))  # 0.0818 > 0.01
    assert rho[0] > 0.01 and rho[1] > rho[0]
    _visit(s, "never", 8, 0)
    s.refresh()
    assert s.view(["never"])[1][0] < rho[0]  # more failures: a smaller weight (Beta(1, 17) -> 0.050)
    assert priority(16, 0, prior=(1, 1)) == pytest.approx(17 / (18 * 19) + 1e-6 * (1 - 1 / 18))
    # the mastered test reads the posterior mean: 8/8 -> 9/10 >= 0.85
    assert priority(8, 8, prior=(1, 1)) == 0.01 and priority(8, 7, prior=(1, 1)) > 0.01  # 8/10 < 0.85


def test_history_round_trip_and_old_checkpoints():
    s = PromptStats(memory="decay", decay=0.25)
    for k in (1, 5, 3):
        _visit(s, 3, 6, k)
    _visit(s, "x", 4, 4)
    s.refresh()
    restored = PromptStats(memory="decay", decay=0.25)
    restored.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert restored.state_dict() == s.state_dict() and restored.remembered(3) == s.remembered(3)
    old = PromptStats()  # a checkpoint written before the per-visit history: cumulative counts only
    old.load_state_dict({"counts": [[3, 18, 9], ["x", 4, 4]], "snapshot": [[3, 18, 0.2]]})
    assert old.counts(3) == (18, 9) and old.view([3]) == ([18], [0.2])


def test_memory_and_prior_config_keys():
    from dynamo.config import ConfigError, load_config
    cfg = load_config(["--config", "configs/default.yaml", "allocator.memory=window", "allocator.window=12",
                       "allocator.prior=[1, 2]"]).allocator
    s = PromptStats.from_config(cfg)
    assert (s.memory, s.window, s.priority_kwargs["prior"]) == ("window", 12, (1.0, 2.0))
    default = PromptStats.from_config(load_config(["--config", "configs/default.yaml"]).allocator)
    assert default.memory == "cumulative" and default.priority_kwargs["prior"] == ()
    for bad, match in (("allocator.memory=forever", "choose one of"), ("allocator.window=1", "'allocator.window' = 1 must be >= 2"),
                       ("allocator.decay=1", "'allocator.decay' = 1.0 must be strictly between"),
                       ("allocator.groups=0", "'allocator.groups' = 0 must be >= 1"),
                       ("allocator.prior=[1]", "two pseudo-counts"), ("allocator.prior=[0, 1]", "two pseudo-counts"),
                       ("allocator.prior=1", r"expected a list in brackets, e.g. allocator.prior=\[a, b\]"),
                       ("allocator.window=32", "acts only with allocator.memory=window"),
                       ("allocator.decay=0.8", "acts only with allocator.memory=decay")):
        with pytest.raises(ConfigError, match=match):
            load_config(["--config", "configs/default.yaml", bad])
    with pytest.raises(ValueError, match="memory="):
        PromptStats(memory="forever")
