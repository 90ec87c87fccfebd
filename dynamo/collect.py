"""Phases 1-3 of a step, round by round: which prompts get how many rollouts, and which groups train.

`allocation` decides once, at the start, which `Method` collects a step's groups:

  uniform, dynamo, oracle, knapsack   one round: this step's prompts, rollouts per prompt from the rule
  dapo                                rounds of fresh prompts (dapo.gen_batch_size each), n rollouts apiece,
                                      until prompts_per_step groups whose rewards are not all equal are kept
  greso                               as dapo, but each drawn prompt may first be skipped (no rollout) when its
                                      recent groups were all correct or all wrong
  reinforce_ada                       rounds of M rollouts for each prompt still short of its exit rule, at most
                                      R rounds; each prompt trains on n of its samples, baseline over all of them

train.py runs the rounds (phase 1 is `next()`, phases 2 and 3 are its own lines):

    rounds = state.method.rounds(state, data, step)
    for r in rounds:                      # 1. allocate: r.problems on this rank, r.counts rollouts each
        ro = sample(..., r.prompts, r.counts, seeds=r.seeds)          # 2. sample
        correct, counters = verify(...)                              # 3. verify
        rounds.add(ro, texts, correct, counters)   # every rank's (prompt id, correct) pairs update the statistics
    got = rounds.batch()                  # the step's training groups on this rank, and the step's telemetry

Several ranks: rank r takes every world-th prompt of each draw; every rank sees every round's results (one
all-gather per round), so all decide alike and run the same number of rounds (forwards are collective under
FSDP2). A rank with nothing to draw in a round while others do samples one throwaway rollout. What then
differs from one process: docs/COMPARISON.md, "Prompt allocation".

The method's state across steps (rollouts generated so far, GRESO's p_easy and p_hard, Knapsack RL's reward
history) is in every checkpoint (`state_dict`), so resume is exact.
"""
from __future__ import annotations

import dataclasses

import torch

from dynamo import distributed as dist
from dynamo.allocator import step_counts
from dynamo.rollout import Rollouts, concat_rollouts, derive_seed
from dynamo.sampling_rules import (KnapsackHistory, adapt, has_exited, keep_group, knapsack_counts, pool_statistics,
                                   skip_probability, training_group)
from dynamo.step_metrics import StepGather

METHODS = ("uniform", "dynamo", "oracle", "knapsack", "dapo", "greso", "reinforce_ada")


@dataclasses.dataclass
class Round:
    """Phase 1's answer for one round on this rank: these problems, counts[i] rollouts each, seeded by seeds[i]."""
    problems: list
    prompts: list
    counts: list
    seeds: list
    pool: list  # pool indices of the problems
    idle: bool = False  # a throwaway rollout while other ranks still draw (results dropped)


@dataclasses.dataclass
class Collected:
    """What phases 1-3 hand to the update, on this rank: the training groups, their rows and the step's telemetry."""
    problems: list  # one per training group
    counts: list  # rows of each group
    ro: Rollouts  # the training rows; ro.prompt_index numbers the groups
    texts: list
    correct: torch.Tensor  # (N,) bool
    verifier: dict  # the verifier's counters over every round
    statistics: torch.Tensor | None  # (G, 2) each group's reward mean and std over every sample drawn, or None
    views: list  # every rank's StepGather of its training groups (the alloc/* telemetry)
    telemetry: dict  # rollouts/* and the method's own quantities, over all ranks


@dataclasses.dataclass
class _Result:  # one round on this rank, verified
    rnd: Round
    ro: Rollouts
    texts: list
    correct: torch.Tensor


class Method:
    """One allocation method for the whole run: its rounds, and its state across steps."""

    def __init__(self, cfg):
        self.cfg, self.n, self.generated = cfg, cfg.rollouts_per_prompt, 0  # generated: rollouts so far, all ranks

    @staticmethod
    def of(cfg) -> Method:
        return {"dapo": Dapo, "greso": Greso, "knapsack": Knapsack, "reinforce_ada": ReinforceAda}.get(
            cfg.allocation, Method)(cfg)

    def rounds(self, state, data, step: int) -> Rounds:
        return Rounds(self, state, data, step)

    def spent(self) -> bool:
        """The run's rollout budget (rollout_budget; 0 = none) is used up."""
        return bool(self.cfg.rollout_budget) and self.generated >= self.cfg.rollout_budget

    # ---- what a method changes (the base class: one round, counts from the allocator, every group trains)
    def next_round(self, r: Rounds) -> Round | None:
        if r.results:
            return None
        pool = r.draw(self.cfg.prompts_per_step)
        problems = [r.data.pool[i] for i in pool]
        oracle = [r.state.oracle[i] for i in pool] if r.state.oracle else None
        counts = step_counts(self.cfg, r.state.prompt_stats, [p.prompt_id for p in problems], r.new_epoch, oracle)
        return r.make_round(pool, counts)

    def kept(self, r: Rounds) -> list[list[tuple[int, int]]]:
        """This rank's training groups, in order, each as its (round, row) pairs."""
        return [[(k, x) for x in rows] for k, res in enumerate(r.results) for rows in r.group_rows(res)]

    def seen(self, pairs: list) -> None:
        """Every rank's (prompt id, correct) pairs of a round, in rank order (Knapsack RL keeps its history)."""

    def statistics(self, r: Rounds) -> torch.Tensor | None:
        """(G, 2) reward mean and std of each training group over every sample drawn, or None: the group's own."""
        return None

    def end_step(self, r: Rounds) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"generated": self.generated}

    def load_state_dict(self, state: dict) -> None:
        self.generated = state["generated"]


class Knapsack(Method):
    """Knapsack RL: one round; rollouts per prompt from an exact knapsack over estimated pass rates."""

    def __init__(self, cfg):
        super().__init__(cfg)
        k = cfg.knapsack
        self.history = KnapsackHistory(recent=k.recent, min_history=k.min_history)

    def next_round(self, r: Rounds) -> Round | None:
        if r.results:
            return None
        pool = r.draw(self.cfg.prompts_per_step)
        k = self.cfg.knapsack
        rates = [self.history.rate(r.data.pool[i].prompt_id) for i in pool]
        counts, info = knapsack_counts(rates, self.n, min_n=k.min_n, max_n=k.max_n, alpha=k.alpha)
        r.info["knapsack/fallback"] = r.info.get("knapsack/fallback", 0) + info["fallback"]
        return r.make_round(pool, counts)

    def seen(self, pairs: list) -> None:
        by_prompt: dict = {}
        for pid, ok in pairs:
            by_prompt.setdefault(pid, []).append(ok)
        for pid, oks in by_prompt.items():
            self.history.update(pid, oks)

    def state_dict(self) -> dict:
        return super().state_dict() | {"knapsack": self.history.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.history.load_state_dict(state["knapsack"])


class Dapo(Method):
    """DAPO's dynamic sampling: generation batches of fresh prompts until this rank keeps its share of groups
    whose rewards are not all equal (the first ones, in order); at most dapo.max_gen_batches batches."""

    def next_round(self, r: Rounds) -> Round | None:
        d = self.cfg.dapo
        short = [self._share() - n for n in r.kept_per_rank()]
        if r.results and max(short) <= 0:
            return None
        if d.max_gen_batches and len(r.results) >= d.max_gen_batches:
            r.info["dapo/cap_hit"] = 1
            if d.at_cap == "stop":
                raise SystemExit(f"step {r.step}: {len(r.results)} generation batches (dapo.max_gen_batches) kept "
                                 f"only {sum(r.kept_per_rank())} of {self.cfg.prompts_per_step} groups with unequal "
                                 "rewards: the data may be too hard or too easy; raise dapo.max_gen_batches, or set "
                                 "dapo.at_cap=train")
            return None
        pool = r.draw(self.cfg.dapo.gen_batch_size or self.cfg.prompts_per_step)
        pool = self.pre_skip(r, pool)
        return r.make_round(pool, [self.n] * len(pool))

    def pre_skip(self, r: Rounds, pool: list) -> list:
        return pool

    def end_step(self, r: Rounds) -> dict:
        return {"dapo/cap_hit": r.info.get("dapo/cap_hit", 0)}

    def _share(self) -> int:
        return self.cfg.prompts_per_step // dist.world_size()

    def kept(self, r: Rounds) -> list[list[tuple[int, int]]]:
        out = []
        for k, res in enumerate(r.results):
            rewards = res.correct.tolist()
            out += [[(k, x) for x in rows] for rows in r.group_rows(res) if keep_group([rewards[x] for x in rows])]
        drawn = [k for k, res in enumerate(r.results) if not res.rnd.idle]
        if not out and drawn:  # at the cap with no kept group on this rank: its last flat group (advantage 0)
            out = [[(drawn[-1], x) for x in r.group_rows(r.results[drawn[-1]])[-1]]]
        if not out:
            raise SystemExit(f"step {r.step}: every prompt drawn in {len(r.results)} generation batches was skipped "
                             "before rollout: nothing to train on (raise dapo.max_gen_batches or greso.floor)")
        return out[:self._share()]  # the first ones, in order; the surplus is dropped


class Greso(Dapo):
    """GRESO: DAPO's refill, where each drawn prompt is first skipped with a probability that grows with its
    streak of all-correct (or no-correct) groups; p_easy and p_hard move towards target zero-variance shares."""

    def __init__(self, cfg):
        super().__init__(cfg)
        g = cfg.greso
        self.p_easy, self.p_hard = g.p_easy, g.p_hard

    def pre_skip(self, r: Rounds, pool: list) -> list:
        g, out = self.cfg.greso, []
        for i in pool:  # the same draw on every rank: (rl_seed, step, round, prompt id) alone
            pid = r.data.pool[i].prompt_id
            p = skip_probability(r.state.prompt_stats.visits(pid), self.p_easy, self.p_hard, g.floor)
            u = torch.rand(1, generator=torch.Generator().manual_seed(
                derive_seed(r.rl_seed, "greso", r.step, len(r.results), pid))).item()
            if u < p:
                r.info["rollouts/prompts_skipped"] = r.info.get("rollouts/prompts_skipped", 0) + 1
            else:
                out.append(i)
        return out

    def end_step(self, r: Rounds) -> dict:
        g, groups = self.cfg.greso, r.global_groups()  # every group generated this step, all ranks: (n, k)
        easy = sum(k == n for n, k in groups) / max(len(groups), 1)
        hard = sum(k == 0 for n, k in groups) / max(len(groups), 1)
        if r.state.order.epoch > 0:  # from the second epoch on, once per step
            self.p_easy = adapt(self.p_easy, easy, g.target_zero_variance / 3, g.adapt_step, g.p_min, g.p_max)
            self.p_hard = adapt(self.p_hard, hard, g.target_zero_variance * 2 / 3, g.adapt_step, g.p_min, g.p_max)
        return {"greso/p_easy": self.p_easy, "greso/p_hard": self.p_hard, "greso/easy_frac": easy,
                "greso/hard_frac": hard, "greso/epoch": r.state.order.epoch,
                "rollouts/prompts_skipped": r.info.get("rollouts/prompts_skipped", 0), **super().end_step(r)}

    def state_dict(self) -> dict:
        return super().state_dict() | {"p_easy": self.p_easy, "p_hard": self.p_hard}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.p_easy, self.p_hard = state["p_easy"], state["p_hard"]


class ReinforceAda(Method):
    """Reinforce-Ada: this step's prompts get M rollouts per round while they are short of the exit rule, for at
    most R rounds; each trains on n of its samples (the first of each kind), baseline over all of them."""

    def next_round(self, r: Rounds) -> Round | None:
        a = self.cfg.reinforce_ada
        if not r.results:
            r.step_pool = r.draw(self.cfg.prompts_per_step)
        elif len(r.results) >= a.max_rounds:
            return None
        pool = [i for i in r.step_pool if not self._exited(r, i)]
        if not any(not self._exited(r, i) for i in r.global_step_pool):
            return None
        return r.make_round(pool, [a.round_rollouts] * len(pool))

    def _exited(self, r: Rounds, pool_index: int) -> bool:
        c = r.answers.get(pool_index, [])
        return has_exited(sum(c), len(c) - sum(c), self.n, self.cfg.reinforce_ada.exit)

    def kept(self, r: Rounds) -> list[list[tuple[int, int]]]:
        """One group per prompt of the step: n of its samples over the rounds (training_group's choice)."""
        a, out, drawn_of = self.cfg.reinforce_ada, [], {}  # drawn_of: pool index -> its (round, row)s, in order
        for k, res in enumerate(r.results):
            for x, j in enumerate([] if res.rnd.idle else res.ro.prompt_index.tolist()):
                drawn_of.setdefault(res.rnd.pool[j], []).append((k, x))
        for i in r.step_pool:
            drawn = drawn_of[i]
            correct = [bool(r.results[k].correct[x]) for k, x in drawn]
            out.append([drawn[c] for c in training_group(correct, self.n, self._exited(r, i), a.exit)])
        return out

    def statistics(self, r: Rounds) -> torch.Tensor:
        return torch.tensor([pool_statistics(r.answers[i]) for i in r.step_pool], dtype=torch.float32)

    def end_step(self, r: Rounds) -> dict:
        done = sum(self._exited(r, i) for i in r.global_step_pool)
        return {"reinforce_ada/exited_frac": done / max(len(r.global_step_pool), 1)}


class Rounds:
    """One step's rounds on this rank (an iterator of `Round`s); `add` after each, `batch` at the end."""

    def __init__(self, method: Method, state, data, step: int):
        self.method, self.state, self.data, self.step = method, state, data, step
        self.cfg, self.rank, self.world = method.cfg, dist.rank(), dist.world_size()
        self.rl_seed = self.cfg.rl_seed_resolved
        self.results: list[_Result] = []
        self.new_epoch = False
        self.info: dict = {}  # the method's counters this step
        self.verifier: dict = {}
        self.answers: dict = {}  # pool index -> every answer (correct?) this step, in order drawn, all ranks
        self.rank_groups: list = []  # per round: every rank's [(n, k) per group]
        self.step_pool: list = []  # reinforce_ada: this rank's prompts of the step
        self.global_step_pool: list = []
        self.pass_rates: dict = {}  # prompt id -> its pass rate before this step (telemetry)
        self.generated = 0

    def draw(self, count: int) -> list:
        """The next `count` prompts of the order (the same on every rank); this rank's share, as pool indices."""
        batch, new_epoch = self.state.order.next(count)
        self.new_epoch |= new_epoch
        if not self.results:
            self.global_step_pool = batch
        for i in batch:
            pid = self.data.pool[i].prompt_id
            self.pass_rates.setdefault(pid, self.state.prompt_stats.pass_rate(pid))
        return batch[self.rank::self.world]

    def make_round(self, pool: list, counts: list) -> Round:
        k = len(self.results)
        problems = [self.data.pool[i] for i in pool]
        seeds = [derive_seed(self.rl_seed, "rollout", self.step, p.prompt_id, *((k,) if k else ()))
                 for p in problems]  # round 0's seed is the one every method shares
        if not pool:  # other ranks still draw: one throwaway rollout (generation is collective under FSDP2)
            p = self.data.pool[0]
            return Round([p], [self.data.pool_prompts[0]], [1], [derive_seed(self.rl_seed, "idle", self.step, k)],
                         [0], idle=True)
        return Round(problems, [self.data.pool_prompts[i] for i in pool], counts, seeds, pool)

    def __iter__(self):
        return self

    def __next__(self) -> Round:
        rnd = self.method.next_round(self)
        if rnd is None:
            raise StopIteration
        self.current = rnd
        return rnd

    def add(self, ro: Rollouts, texts: list, correct: torch.Tensor, verifier: dict) -> None:
        """This round's verified rows: every rank's (prompt id, correct) pairs update the statistics."""
        rnd = self.current
        for key, v in verifier.items():
            self.verifier[key] = self.verifier.get(key, 0) + v
        idx = ro.prompt_index.tolist()
        mine = [] if rnd.idle else [(rnd.pool[j], rnd.problems[j].prompt_id, bool(c))
                                    for j, c in zip(idx, correct.tolist())]
        parts = dist.all_gather_objects(mine)
        groups = []
        for part in parts:  # every rank's responses, in rank order
            self.state.prompt_stats.update([pid for _, pid, _ in part], [c for _, _, c in part])
            self.method.seen([(pid, c) for _, pid, c in part])
            per: dict = {}
            for i, _, c in part:
                per.setdefault(i, []).append(c)
                self.answers.setdefault(i, []).append(c)
            groups.append([(len(v), sum(v)) for v in per.values()])
            self.generated += len(part)
        self.rank_groups.append(groups)
        self.results.append(_Result(rnd, ro, texts, correct))

    def group_rows(self, res: _Result) -> list[list[int]]:
        """Rows of each group of a round, in order ([] for an idle round)."""
        if res.rnd.idle:
            return []
        idx = res.ro.prompt_index.tolist()
        rows: list[list[int]] = [[] for _ in res.rnd.problems]
        for x, j in enumerate(idx):
            rows[j].append(x)
        return rows

    def kept_per_rank(self) -> list[int]:
        """Groups with unequal rewards each rank holds so far (DAPO's test), up to its share."""
        out = [0] * self.world
        for groups in self.rank_groups:
            for q, gs in enumerate(groups):
                out[q] += sum(0 < k < n or n == 1 for n, k in gs)
        return out

    def global_groups(self) -> list[tuple[int, int]]:
        return [g for groups in self.rank_groups for gs in groups for g in gs]

    def batch(self) -> Collected:
        """The step's training groups on this rank, their rows as one batch, and the step's telemetry."""
        m = self.method
        groups = m.kept(self)  # [[(round, row), ...] per group]
        problems, parts = [], []
        for g, pairs in enumerate(groups):
            k, x = pairs[0]
            problems.append(self.results[k].rnd.problems[int(self.results[k].ro.prompt_index[x])])
            parts += [(k, x, g) for k, x in pairs]
        counts = [len(pairs) for pairs in groups]
        texts = [self.results[k].texts[x] for k, x, _ in parts]
        correct = torch.tensor([bool(self.results[k].correct[x]) for k, x, _ in parts], dtype=torch.bool)
        ro = self._rows(parts)
        rates = [self.pass_rates.get(p.prompt_id) for p in problems]
        group_rewards = [[1.0 if c else -1.0 for c in correct[ro.prompt_index == g].tolist()] for g in range(len(groups))]
        view = StepGather(counts, rates, [p.level for p in problems], group_rewards)
        views = dist.all_gather_objects(view)
        m.generated += self.generated
        informative = sum(n for groups_ in self.rank_groups for gs in groups_ for n, k in gs if 0 < k < n)
        per_prompt = [len(a) for a in self.answers.values()]  # rollouts generated per prompt drawn, all rounds
        telemetry = {"rollouts/generated": self.generated, "rollouts/generated_total": m.generated,
                     "rollouts/trained": sum(sum(v.counts) for v in views), "rollouts/rounds": len(self.results),
                     "rollouts/per_prompt_min": min(per_prompt, default=0),
                     "rollouts/per_prompt_max": max(per_prompt, default=0),
                     "rollouts/informative_frac": informative / max(self.generated, 1), **self.info, **m.end_step(self)}
        return Collected(problems, counts, ro, texts, correct, self.verifier, m.statistics(self), views, telemetry)

    def _rows(self, parts: list[tuple[int, int, int]]) -> Rollouts:
        """The chosen rows (round, row, group) as one Rollouts, groups numbered in order; one round whose every
        row trains in order is that round's Rollouts itself (nothing copied)."""
        if len(self.results) == 1 and [x for _, x, _ in parts] == list(range(len(self.results[0].texts))):
            return self.results[0].ro
        by_round: dict[int, list] = {}
        for k, x, g in parts:
            by_round.setdefault(k, []).append((x, g))
        pieces, at = [], {}  # at: (round, row) -> its row in the concatenation
        for k, xs in sorted(by_round.items()):
            for x, _ in xs:
                at[(k, x)] = len(at)
            pieces.append(self.results[k].ro.select(torch.tensor([x for x, _ in xs], dtype=torch.long),
                                                    torch.tensor([g for _, g in xs], dtype=torch.long)))
        ro = concat_rollouts(pieces, self.state.tokenizer.pad_token_id)
        order = torch.tensor([at[(k, x)] for k, x, _ in parts], dtype=torch.long)  # back to the groups' order
        return ro.select(order, ro.prompt_index[order])
