# python -m pytest -q tests/test_collect.py  — the field's allocation methods (dynamo/sampling_rules.py, dynamo/collect.py)
# against cases worked by hand from their definitions, and each config end to end (resume, budget, several ranks).
import itertools
import os
import types

import pytest
import torch

import train
from dynamo import checkpoint
from dynamo.allocator import PromptStats
from dynamo.collect import Method
from dynamo.config import load_config
from dynamo.data import PromptOrder
from dynamo.rollout import Rollouts
from dynamo.sampling_rules import (KnapsackHistory, adapt, has_exited, keep_group, knapsack_counts, knapsack_value,
                                   pool_statistics, skip_probability, solve_knapsack, streak, training_group)
from dynamo.task import Problem
from tests.helpers import SHIPPED_START, merged, step_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------- Knapsack RL

@pytest.mark.parametrize("rates,capacity,min_n,max_n", [
    ([0.5, 0.1, 0.9], 6, 2, 6), ([0.3, 0.3], 5, 2, 8), ([0.05, 0.5, 0.7, 0.2], 9, 1, 5), ([0.6], 3, 2, 4),
    ([0.25, 0.75, 0.5], 20, 2, 6)])  # the last: the bounds hold at most 12 of the 20
def test_knapsack_programme_equals_brute_force(rates, capacity, min_n, max_n):
    K = max_n - min_n
    extra = solve_knapsack(rates, capacity, min_n, max_n)
    value = sum(knapsack_value(min_n + min(k, K), p) for k, p in zip(extra, rates))  # the programme's part
    fits = [ks for ks in itertools.product(range(K + 1), repeat=len(rates)) if sum(ks) <= capacity]
    most = max(sum(ks) for ks in fits)  # the programme fills as much of the capacity as the bounds allow
    best = max(sum(knapsack_value(min_n + k, p) for k, p in zip(ks, rates)) for ks in fits if sum(ks) == most)
    assert value == pytest.approx(best, rel=1e-12)
    assert sum(extra) == capacity  # what the bounds leave over is spread (past max_n where it must)
    if capacity > len(rates) * K:
        left = capacity - len(rates) * K
        assert extra == [K + left // len(rates) + (i < left % len(rates)) for i in range(len(rates))]


def test_knapsack_value_by_hand():
    # V(N, p) = (1 - p^N - (1-p)^N) p (1-p)^2: N = 2, p = 0.5 -> (1 - 0.25 - 0.25) * 0.5 * 0.25
    assert knapsack_value(2, 0.5) == pytest.approx(0.0625)
    assert knapsack_value(4, 0.0) == 0 and knapsack_value(4, 1.0) == 0


def test_knapsack_counts_by_hand():
    # too little history -> n; every prompt: total exactly P * n
    assert knapsack_counts([None] * 4, 8)[0] == [8] * 4
    # p = 0 and p = 1 get min_n = 2; no effective prompt: the remainder 32 - 4 = 28 goes to the rate-0 prompt
    assert knapsack_counts([0.0, 1.0, 1.0, 1.0], 8)[0] == [2 + 24, 2, 2, 2]
    counts, info = knapsack_counts([0.0, 1.0], 8)
    assert counts == [14, 2] and info["fallback"] == 0  # 16 - 4 = 12 more to the p = 0 prompt
    counts, _ = knapsack_counts([1.0, 1.0], 8)
    assert counts == [8, 8]  # no effective prompt and no rate-0 prompt: everyone gets n
    # fallback: p = 0.5 needs int(ln 0.1 / ln 0.5) = 3 rollouts, the remainder is 16 - 4 = 12 > 3: the excess
    # 9 goes to the p = 0 prompt, the programme shares the 3 (at most max_n - min_n extra each)
    counts, info = knapsack_counts([0.5, 0.0], 8)
    assert info["fallback"] == 1 and info["capacity"] == 3 and counts == [2 + 3, 2 + 9]
    # under-history prompts read as rate 0 in the fallback, as in the official code
    counts, info = knapsack_counts([0.5, None, 1.0], 8)
    assert counts == [5, 8 + 9, 2] and sum(counts) == 24
    # no fallback when the effective prompts need more than the remainder: the programme shares all of it
    counts, info = knapsack_counts([0.5, 0.4, 0.0], 4, max_n=6)
    assert info["fallback"] == 0 and sum(counts) == 12 and counts[2] == 2


def test_knapsack_history_estimate():
    h = KnapsackHistory(recent=16, min_history=8)
    h.update("a", [1, 0, 0, 0])
    assert h.rate("a") is None  # 4 < 8 rollouts seen
    h.update("a", [1, 1, 1, 1])
    assert h.rate("a") == pytest.approx(5 / 8)  # latest visit has 4 < 16: the 8 most recent rewards
    h.update("a", [1] * 16)
    assert h.rate("a") == 1.0  # a visit of 16: its own mean
    h.update("a", [0, 0])
    assert h.rate("a") == pytest.approx(14 / 16)  # 2 + the 14 newest before
    again = KnapsackHistory()
    again.load_state_dict(h.state_dict())
    assert again.rate("a") == h.rate("a")


# ------------------------------------------------------------------------------------------- GRESO

def test_greso_skip_probability_by_hand():
    assert skip_probability([], 0.5, 0.5) == 0  # never seen: never skipped
    assert skip_probability([[8, 8]], 0.5, 0.5) == pytest.approx(0.5)  # one all-correct group: 1 - 0.5
    assert skip_probability([[8, 3], [8, 8], [8, 8]], 0.5, 0.5) == pytest.approx(0.75)  # streak 2: 1 - 0.25
    assert skip_probability([[8, 8]] * 10, 0.5, 0.5) == pytest.approx(0.99)  # floor 0.01
    assert skip_probability([[8, 0], [8, 0]], 0.5, 0.3) == pytest.approx(1 - 0.09)  # hard streak 2 with p_hard
    assert skip_probability([[8, 0], [8, 4]], 0.5, 0.5) == 0  # last group mixed: kept
    assert streak([[4, 4], [4, 0], [4, 4], [4, 4]], solved=True) == 2


def test_greso_adapt_by_hand():
    assert adapt(0.5, 0.1, 0.25 / 3) == pytest.approx(0.49)  # above target: p down, more skipping
    assert adapt(0.5, 0.0, 0.25 / 3) == pytest.approx(0.51)
    assert adapt(0.05, 0.9, 0.1) == 0.05 and adapt(0.95, 0.0, 0.1) == 0.95  # clipped to [0.05, 0.95]


# ------------------------------------------------------------------------------------------- Reinforce-Ada

def test_reinforce_ada_exit_and_groups_by_hand():
    assert has_exited(4, 4, 8, "balanced") and not has_exited(4, 3, 8, "balanced")
    assert has_exited(1, 20, 8, "positive_focused") and not has_exited(0, 8, 8, "positive_focused")
    T, F = True, False
    # n = 4: the first 2 correct and first 2 wrong, correct rows first
    assert training_group([F, T, F, T, T, F], 4, True, "balanced") == [1, 3, 0, 2]
    # 1 correct, 7 wrong -> 1 correct + 3 wrong; 7 correct, 1 wrong -> 3 + 1; 8 correct -> 4 correct
    assert training_group([T] + [F] * 7, 4, True, "positive_focused") == [0, 1, 2, 3]
    assert training_group([T] * 7 + [F], 4, True, "positive_focused") == [0, 1, 2, 7]
    assert training_group([T] * 8, 4, True, "positive_focused") == [0, 1, 2, 3]
    # still active after the last round: balanced the same; positive_focused with no correct -> 4 wrong
    assert training_group([F] * 32, 4, False, "balanced") == [0, 1, 2, 3]
    assert training_group([F] * 32, 4, False, "positive_focused") == [0, 1, 2, 3]
    mean, std = pool_statistics([T, F, F, F])  # rewards +1, -1, -1, -1
    assert mean == pytest.approx(-0.5) and std == pytest.approx(1.0)  # unbiased: sqrt(3 / 3)
    assert pool_statistics([T]) == (0.0, 1.0)


def test_dapo_keeps_unequal_groups():
    assert keep_group([1, -1]) and not keep_group([1, 1, 1]) and keep_group([-1])


# ------------------------------------------------------------------------------------------- the rounds

class FakeTokenizer:
    pad_token_id = 0


def fake_run(cfg, answers, steps=1):
    """Run `steps` steps of the method's rounds with a sampler whose j-th rollout of a prompt is correct iff
    answers(prompt id, round, j): returns each step's Collected and every round's (prompt ids, counts)."""
    pool = [Problem(f"p{i}", f"q{i}", "1", "add1") for i in range(cfg.train_pool)]
    data = types.SimpleNamespace(pool=pool, pool_prompts=[p.prompt for p in pool])
    state = types.SimpleNamespace(order=PromptOrder(len(pool), 0), prompt_stats=PromptStats(), oracle=None,
                                  tokenizer=FakeTokenizer(), method=Method.of(cfg))
    out, seen = [], []
    for step in range(1, steps + 1):
        rounds = state.method.rounds(state, data, step)
        for k, r in enumerate(rounds):
            seen.append(([p.prompt_id for p in r.problems], list(r.counts)))
            idx = torch.repeat_interleave(torch.arange(len(r.counts)), torch.tensor(r.counts))
            n = len(idx)
            ro = Rollouts(torch.arange(n * 5).reshape(n, 5), torch.ones(n, 5, dtype=torch.long),
                          torch.ones(n, 3, dtype=torch.long), idx, torch.zeros(n, dtype=torch.bool), 2)
            j_of = [int((idx[:x] == idx[x]).sum()) for x in range(n)]
            correct = torch.tensor([answers(r.problems[int(idx[x])].prompt_id, k, j_of[x]) for x in range(n)])
            rounds.add(ro, [f"t{x}" for x in range(n)], correct, {"parse_failures": 0})
        out.append(rounds.batch())
    return out, seen, state


def cfg_of(*overrides):
    return load_config(["--config", os.path.join(ROOT, "configs", "default.yaml"),
                        *merged(["train_pool=64", "prompts_per_step=4", "rollouts_per_prompt=4"], overrides)])


def drawn(count: int, pool: int = 64) -> list[str]:
    """The prompt ids the run's order draws first (rl_seed 0)."""
    return [f"p{i}" for i in PromptOrder(pool, 0).next(count)[0]]


def test_dapo_refills_until_the_share_is_kept():
    # every second prompt drawn is all wrong (flat), the others mixed: 4 kept need 8 drawn = 2 batches of 4
    mixed = drawn(8)[1::2]
    got, seen, _ = fake_run(cfg_of("allocation=dapo"), lambda pid, k, j: pid in mixed and j == 0)
    g = got[0]
    assert len(seen) == 2 and all(c == [4] * 4 for _, c in seen)
    assert g.telemetry["rollouts/generated"] == 32 and g.telemetry["rollouts/trained"] == 16
    assert [p.prompt_id for p in g.problems] == mixed
    assert g.counts == [4] * 4 and g.ro.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    for i in range(4):  # each group's rows keep their own verdicts: one correct, three wrong
        assert g.correct[g.ro.prompt_index == i].tolist() == [True, False, False, False]


def test_dapo_drops_the_surplus_and_stops_at_the_cap():
    # gen_batch_size 8: all mixed -> the first 4 kept of one batch, the other 4 dropped
    got, seen, _ = fake_run(cfg_of("allocation=dapo", "dapo.gen_batch_size=8"), lambda pid, k, j: j == 0)
    assert len(seen) == 1 and [p.prompt_id for p in got[0].problems] == seen[0][0][:4]
    # everything flat: the cap (3 batches) ends the step; at_cap=train keeps what there is (one flat group)
    got, seen, _ = fake_run(cfg_of("allocation=dapo", "dapo.max_gen_batches=3"), lambda pid, k, j: False)
    assert len(seen) == 3 and got[0].telemetry["dapo/cap_hit"] == 1 and got[0].telemetry["rollouts/generated"] == 48
    with pytest.raises(SystemExit, match="max_gen_batches"):
        fake_run(cfg_of("allocation=dapo", "dapo.max_gen_batches=3", "dapo.at_cap=stop"), lambda pid, k, j: False)


def test_greso_skips_solved_prompts_and_adapts():
    # 8 prompts, 6 always solved and 2 mixed: only the mixed ones can be kept, so steps draw on and on; from the
    # second visit on a solved prompt is skipped with probability 1 - 0.5^streak, never-seen ones never are
    mixed = drawn(2, pool=8)
    cfg = cfg_of("allocation=greso", "train_pool=8", "dapo.max_gen_batches=0")
    got, seen, state = fake_run(cfg, lambda pid, k, j: True if pid not in mixed else j == 0, steps=4)
    assert seen[0][1] == [4] * 4  # the first draw: nothing seen, nothing skipped
    assert sum(g.telemetry.get("rollouts/prompts_skipped", 0) for g in got) > 0
    # after each step in the second epoch or later, p_easy moves 0.01 down when the step's share of all-correct
    # groups reached 0.25/3, else up (skipping then leaves few solved groups: it can come back up)
    t = [g.telemetry for g in got]
    p = 0.5
    for row in t:
        if row["greso/epoch"] > 0:
            p = p - 0.01 if row["greso/easy_frac"] >= 0.25 / 3 else p + 0.01
        assert row["greso/p_easy"] == pytest.approx(p)
    p_easy = [row["greso/p_easy"] for row in t]
    assert min(p_easy) < 0.5
    assert state.method.state_dict()["p_easy"] == p_easy[-1]


def test_reinforce_ada_rounds_and_baseline():
    # n = 4, M = 4, R = 3. p0: one correct per round -> 2 correct after round 2: exits balanced (>= 2 and >= 2)
    # p1: always wrong -> active to the end (3 rounds, 12 samples); p2, p3: half correct -> exit in round 1
    cfg = cfg_of("allocation=reinforce_ada", "reinforce_ada.round_rollouts=4", "reinforce_ada.max_rounds=3")
    p0, p1 = drawn(2)
    got, seen, _ = fake_run(cfg, lambda pid, k, j: j == 0 if pid == p0 else False if pid == p1 else j < 2)
    g = got[0]
    assert [len(c) for _, c in seen] == [4, 2, 1]  # active prompts per round
    assert g.telemetry["rollouts/generated"] == 16 + 8 + 4 and g.counts == [4] * 4
    a = g.correct[g.ro.prompt_index == 0].tolist()
    assert a == [True, True, False, False]  # p0: first two correct (rounds 1, 2), first two wrong
    assert g.statistics[0, 0].item() == pytest.approx((2 - 6) / 8)  # mean over all 8 drawn, +-1 rewards
    assert g.statistics[1, 0].item() == -1.0 and g.correct[g.ro.prompt_index == 1].tolist() == [False] * 4


# ------------------------------------------------------------------------------------------- end to end

SMALL = ["prompts_per_step=4", "rollouts_per_prompt=4", "eval_prompts=8", "eval_samples=1", "train_pool=8",
         f"model={SHIPPED_START}", "task_levels=[add2, add3]", "rollout.max_new_tokens=40", "eval_every=0",
         "eval_every_rollouts=0", "sample_every=0", "optim.lr=1e-4", "optim.warmup_steps=1", "rollout_budget=0",
         "steps=4"]


@pytest.mark.parametrize("method", ["dapo", "greso", "knapsack", "reinforce_ada"])
def test_each_config_resumes_exactly(method, tmp_path, capsys):
    cfg = os.path.join(ROOT, "configs", f"{method}.yaml")
    # knapsack: estimates from the second epoch (4 rollouts seen); the other methods leave that section alone
    args = SMALL + (["knapsack.min_history=4"] if method == "knapsack" else [])
    train.main(["--config", cfg, *args, f"out_dir={tmp_path / 'full'}"])
    train.main(["--config", cfg, *merged(args, ["steps=2"]), f"out_dir={tmp_path / 'split'}"])
    train.main(["--config", cfg, *args, f"out_dir={tmp_path / 'split'}", "resume=auto"])
    capsys.readouterr()
    a, b = step_rows(tmp_path / "full"), step_rows(tmp_path / "split")
    assert sorted(b) == [1, 2, 3, 4] and all(a[s] == b[s] for s in a)
    state = [checkpoint.load_state(str(tmp_path / d / "final")) for d in ("full", "split")]
    assert state[0]["method"] == state[1]["method"] and state[0]["method"]["generated"] > 0
    assert a[4]["rollouts/generated_total"] == state[0]["method"]["generated"]


def test_rollout_budget_ends_the_run_and_evaluates_on_rollouts(tmp_path, capsys):
    cfg = os.path.join(ROOT, "configs", "knapsack.yaml")  # 16 rollouts a step: the budget of 60 ends step 4
    out = tmp_path / "out"
    train.main(["--config", cfg, *merged(SMALL, ["steps=50", "rollout_budget=60", "eval_every_rollouts=32"]),
                f"out_dir={out}"])
    rows = step_rows(out)
    last = max(rows)
    assert rows[last]["rollouts/generated_total"] >= 60 > rows[last - 1]["rollouts/generated_total"]
    from dynamo.step_metrics import read_metrics
    evals = [r["step"] for r in read_metrics(out)["eval"]]
    crossed = [s for s in rows if rows[s]["rollouts/generated_total"] // 32
               > (rows[s]["rollouts/generated_total"] - rows[s]["rollouts/generated"]) // 32]
    assert evals == sorted({0, *crossed, last}) == [0, 2, 4]
    capsys.readouterr()
    train.main(["--config", cfg, *merged(SMALL, ["steps=50", "rollout_budget=60", "eval_every_rollouts=32"]),
                f"out_dir={out}", "resume=auto"])
    assert "already generated" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["reinforce_ada", "dapo"])
def test_two_ranks_run_the_same_rounds(method, tmp_path):
    """Each rank draws its own share and waits for no one: every rank runs as many rounds (idle ones included),
    so the collective calls match and the run ends; each rank trains on its share of the groups."""
    import subprocess
    import sys
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", f"{method}.yaml"),
           *merged(SMALL, ["steps=2"]), f"out_dir={out}"]
    res = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = step_rows(out)
    assert sorted(rows) == [1, 2] and all(r["rollouts/trained"] == 16 for r in rows.values())
    assert all(r["rollouts/generated"] >= 16 for r in rows.values())


def test_rows_of_several_rounds_keep_their_tokens_and_log_probs():
    """Rows from two sample() calls (other prompt and response lengths), re-padded into one batch by
    concat_rollouts, keep their tokens, masks and log-probs (padding has attention 0, positions skip it)."""
    from dynamo.logprobs import response_token_stats
    from dynamo.rollout import concat_rollouts, sample
    from tests.helpers import tiny
    model, tok = tiny()
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=6)
    a = sample(model, tok, ["1 + 1 =", "23 + 45 + 6 ="], [2, 1], seeds=[1, 2], **kw)
    b = sample(model, tok, ["7 ="], [2], seeds=[3], **kw)
    pieces = [a.select(torch.tensor([2, 0]), torch.tensor([0, 1])), b.select(torch.tensor([1]), torch.tensor([2]))]
    ro = concat_rollouts(pieces, tok.pad_token_id)
    assert ro.prompt_index.tolist() == [0, 1, 2]
    with torch.no_grad():
        whole = response_token_stats(model, ro.input_ids, ro.attention_mask, ro.prompt_length)["logp"]
        for row, (part, x) in enumerate([(a, 2), (a, 0), (b, 1)]):
            own = response_token_stats(model, part.input_ids[x:x + 1], part.attention_mask[x:x + 1],
                                       part.prompt_length)["logp"][0]
            t = part.response_mask.shape[1]
            assert torch.equal(ro.response_mask[row, :t], part.response_mask[x])
            assert not ro.response_mask[row, t:].any()
            assert torch.equal(ro.responses[row, :t], part.responses[x])
            m = part.response_mask[x].bool()
            assert torch.allclose(whole[row, :t][m], own[m], atol=1e-5)
