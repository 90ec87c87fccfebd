"""The loss side of a run, decided once from the config (steps 4, 5 and 7 of train.py; docs/ALGORITHM.md §4-§6).

`Objective(cfg, model, device)` settles, when the run starts, everything the config fixes for the whole run: the
advantage (GRPO's group normalisation or W-REINFORCE's fixed weights), which rows go through the old-log-prob
pass and the update (`skips_zero_advantage`), the row padding a sharded model needs, the token-selection unit
and which baselines' switches are on (docs/COMPARISON.md). The loop then calls it without re-testing any of it:

    adv = objective.advantages(correct, prompt_index)             # 4. (N,)
    old = objective.behaviour(model, ro, adv, step)               # 5. old log-probs, entropies (no grad)
    for mini in objective.mini_batches(model, ro, old, step=step, rank=rank, prompt_index=prompt_index):
        for micro in mini:                                        # 6-7. one optimiser step per mini-batch
            cur = objective.current_stats(model, ro, micro.rows)  #      current log-probs (with grad)
            a_tok = modulate(...)                                 # 6. DynaMO's factors (dynamo/modulator.py)
            objective.loss(cur, a_tok, micro, old, tally).backward()   # 7.

With every baseline switch off the loss is GRPO's PPO dual-clip loss (dynamo/grpo.py:ppo_loss). A new loss switch
is one config field, one function (dynamo/baselines.py) and one branch in `Objective.loss`, or, for a term or a
mask inside the clipped loss itself, in `grpo.ppo_loss` (docs/EXTENDING.md).

Shapes: N rollouts of this rank, T response tokens.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from dynamo import distributed as dist
from dynamo.baselines import (Selection, entropy_advantages, needs_every_row, select_tokens, selects_tokens,
                              w_reinforce_advantages)
from dynamo.grpo import group_advantages, ppo_loss, token_weights
from dynamo.logprobs import response_token_stats
from dynamo.reward import rewards
from dynamo.rollout import Rollouts, derive_seed


def skips_zero_advantage(cfg) -> bool:
    """Whether rows whose advantage is 0 stay out of the old-log-prob pass and the update (config key
    skip_zero_advantage). GRPO's loss is proportional to the advantage, so such a row adds exactly 0 to the
    gradient. 'auto' skips only where that stays exact: not under a method that needs every row
    (baselines.needs_every_row: a loss term that does not vanish with A, or a quantile or covariance over every
    token), and only where the token factors stay the same: with no modulation, or with step-scope normalisers
    (computed from every row). Under micro-batch scope the factors' normalisers would cover only the updated rows
    of each micro-batch, another grouping of the rows."""
    if cfg.skip_zero_advantage != "auto":
        return cfg.skip_zero_advantage == "true"
    if needs_every_row(cfg.loss):
        return False
    m = cfg.modulation
    return m.scope == "step" or not (m.compensation or m.stabilization)


def rows_to_run(live: Tensor, sharded: bool) -> Tensor:
    """Positions of the rows a pass runs on: those with a gradient (`live`, (n,) bool), in order. A sharded
    model runs as many rows on every rank (each forward is collective), filled up with rows whose
    contribution is 0."""
    order = torch.cat([live.nonzero(), (~live).nonzero()]).squeeze(1)  # (n,)
    todo = int(live.sum())
    if sharded:
        todo = int(dist.all_reduce_max(torch.tensor(todo)))
    return order[:todo]


def trim_padding(ro: Rollouts, rows: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """(input_ids, attention_mask, prompt_length, response width) of `rows` without the columns all of them pad:
    on the left up to the longest of their prompts, on the right past the longest of their responses. Positions
    come from the attention mask and padded keys weigh 0, so each real token's log-prob is unchanged (up to float
    rounding: the matrices have other shapes); the work and the attention's quadratic cost shrink to the rows'."""
    mask = ro.attention_mask[rows]  # (n, Lp + T)
    lp = ro.prompt_length
    start = int(mask[:, :lp].int().argmax(1).min())  # the first column any of the rows' prompts uses
    t = max(1, int(ro.response_mask[rows].sum(1).max()))  # the longest response (EOS included)
    return ro.input_ids[rows][:, start:lp + t], mask[:, start:lp + t], lp - start, t


@dataclasses.dataclass
class Behaviour:
    """Step 5's result: the behaviour policy on this rank's rows, and which rows the passes run on."""
    mask: Tensor  # (N, T) 1 on valid response tokens
    adv_tok: Tensor  # (N, T) each row's sequence advantage on every token
    logp: Tensor  # (N, T) old log-probs, 0 on rows not passed
    entropy: Tensor  # (N, T) full-vocabulary entropy, 0 on rows not passed
    expected_u: Tensor | None  # (N, T) E[u] for modulation.estimate: exact, else None
    live: Tensor  # (N,) bool: rows with a gradient (all of them unless zero-advantage rows are skipped)
    passed: Tensor  # (N',) the rows this pass ran on
    micro: list  # `passed` in micro-batches, as the pass ran them (the diagnostic re-runs the same grouping)
    diagnose: bool  # this step measures the entropy change (modulation.diagnose_every): every row was passed

    @property
    def n_run(self) -> int:
        """Rows with a gradient (at least 1): the clip and KL fractions are means over them."""
        return max(1, int(self.live.sum()))


@dataclasses.dataclass
class Micro:
    """One micro-batch of a mini-batch: its rows, their loss weights and (mini-batch scope) their selection."""
    rows: Tensor  # (n,) row indices into the step's N rows
    weights: Tensor  # (n, T) loss weights (dynamo.grpo.token_weights: the mini-batch's denominator)
    select: Selection | None  # precomputed over the mini-batch, or None (computed per micro-batch, or off)
    generator: torch.Generator  # the step's selection generator (Clip-Cov's random pick), one per step and rank


@dataclasses.dataclass
class UpdateTally:
    """What the update adds to the step's metrics (this rank): filled by `Objective.loss` and the optimiser
    steps, read once by step_metrics.step_sums."""
    n_run: int  # rows with a gradient: the clip and KL fractions are means over them
    loss: float = 0.0  # mean mini-batch loss (this rank's part)
    clip: float = 0.0  # PPO-clipped fraction, mean over the rows run
    approx_kl: float = 0.0
    grad_norm: float = 0.0  # mean over the mini-batches
    selected: float = 0.0  # tokens the selection baseline selected
    psi: float = 0.0  # Entropy Advantages: sum of psi over valid tokens
    kl_abs: float = 0.0  # KL-Cov: sum of |log-ratio| over the penalised tokens
    factors: dict = dataclasses.field(default_factory=lambda: {"comp": [], "stab": []})  # DynaMO's factor values


class Objective:
    """The run's loss and the rows it needs, built once from the config (see the module docstring)."""

    def __init__(self, cfg, model, device: torch.device):
        self.cfg, lc, mod = cfg, cfg.loss, cfg.modulation
        self.device, self.rl_seed = device, cfg.rl_seed_resolved
        self.skip = skips_zero_advantage(cfg)  # rows with advantage 0 stay out of both passes
        self.sharded = dist.is_sharded(model)  # every rank then runs as many rows (collective forwards)
        self.need_u = mod.stabilization and mod.estimate == "exact"  # the exact entropy-change estimate's E[u]
        self.entropy_grad = lc.entropy_coef > 0  # Entropy Loss differentiates the entropy
        self.selects = selects_tokens(lc)  # Fork Tokens, Clip-Cov or KL-Cov on
        self.select_mini_batch = self.selects and lc.select_scope == "mini_batch"
        self.w_reinforce = lc.advantage == "w_reinforce"
        self.shape = lc.entropy_adv_alpha > 0  # Entropy Advantages
        # Rows sorted by length before they are cut into micro-batches (each then runs at its own width: less
        # padding), only where the grouping changes nothing but float rounding: not with micro-batch-scope
        # factors (their normalisers are per micro-batch) nor with token selection (per micro-batch at micro scope;
        # at mini-batch scope its quantile and top-k are decided at ties, which rounding moves).
        self.sort_rows = not ((mod.compensation or mod.stabilization) and mod.scope == "micro_batch") and not self.selects

    def describe(self) -> str:
        """The start-of-run line saying what happens to rows with advantage 0, and why."""
        cfg = self.cfg
        return f"skip_zero_advantage={cfg.skip_zero_advantage}: rows whose advantage is 0 (no gradient) " + (
            "are left out of the old-log-prob pass and the update" if self.skip else
            "go through the old-log-prob pass and the update" + (
                "" if cfg.skip_zero_advantage == "false" else
                " (skipping them would not be exact here: a loss term or token selection needs every row, or the "
                "token factors are normalised per micro-batch)"))

    # ---------------------------------------------------------------- 4. advantages (§4)
    def advantages(self, correct: Tensor, prompt_index: Tensor, statistics: Tensor | None = None) -> Tensor:
        """(N,): normalised within each prompt's rollouts, any group size; or W-REINFORCE's fixed weights.
        `statistics` (G, 2): each group's reward mean and std over every sample drawn for it, where the training
        group is a subset (allocation: reinforce_ada): A = r - mean, divided by std + 1e-6 with std_normalise."""
        if self.w_reinforce:
            return w_reinforce_advantages(correct, self.cfg.loss.w_reinforce_lambda)
        if statistics is not None:
            mean, std = statistics[prompt_index, 0], statistics[prompt_index, 1].clamp(min=1e-6)  # (N,)
            adv = rewards(correct).float() - mean
            return adv / (std + 1e-6) if self.cfg.reinforce_ada.std_normalise else adv
        return group_advantages(rewards(correct), prompt_index)

    # ---------------------------------------------------------------- 5. the behaviour policy (no grad)
    @torch.no_grad()
    def behaviour(self, model, ro: Rollouts, adv: Tensor, step: int) -> Behaviour:
        """Old log-probs and entropies in micro-batches. A row whose advantage is 0 adds exactly 0 to the
        gradient: with `skip` it is left out here (unless the step-scope normalisers or the diagnostic need every
        row) and in the update; the loss denominator still counts its tokens."""
        cfg, mod = self.cfg, self.cfg.modulation
        mask = ro.response_mask.to(self.device).float()  # (N, T)
        n = mask.shape[0]
        live = adv != 0 if self.skip else torch.ones(n, dtype=torch.bool)  # (N,)
        diagnose = bool(mod.diagnose_every) and step % mod.diagnose_every == 0
        passed = torch.arange(n) if mod.scope == "step" or diagnose else rows_to_run(live, self.sharded)
        passed = self._by_length(ro, passed)
        micro = [passed[s:s + cfg.micro_batch_size] for s in range(0, len(passed), cfg.micro_batch_size)]
        logp, entropy = mask.new_zeros(mask.shape), mask.new_zeros(mask.shape)  # (N, T)
        expected_u = mask.new_zeros(mask.shape) if self.need_u else None  # (N, T)
        for m in micro:
            o = self._stats(model, ro, m)
            logp[m], entropy[m] = o["logp"], o["entropy"]
            if self.need_u:
                expected_u[m] = o["expected_u"]
        adv_tok = adv.to(mask.device)[:, None].expand_as(mask)  # (N, T)
        return Behaviour(mask, adv_tok, logp, entropy, expected_u, live, passed, micro, diagnose)

    def _stats(self, model, ro: Rollouts, rows: Tensor, *, entropy_grad: bool = False) -> dict:
        """response_token_stats of `rows`, run at the rows' own width: the columns every one of them pads (left of
        the longest prompt, right of the longest response) are cut off, and the results padded back with 0."""
        ids, mask, lp, t = trim_padding(ro, rows)
        out = response_token_stats(model, ids, mask, lp, temperature=self.cfg.rollout.temperature,
                                   chunk=self.cfg.logprob_chunk, with_expected_u=self.need_u, entropy_grad=entropy_grad)
        width = ro.response_mask.shape[1]
        return {k: torch.nn.functional.pad(v, (0, width - t)) for k, v in out.items()}  # (n, T), 0 past the longest

    # ---------------------------------------------------------------- 6-7. the update's rows
    def mini_batches(self, model, ro: Rollouts, old: Behaviour, *, step: int, rank: int, prompt_index: Tensor):
        """Yield each mini-batch as its list of `Micro`s, lazily: a mini-batch-scope selection needs the policy
        as the previous optimiser step left it (hence `model`: a no-grad pre-pass). The rows are shuffled by
        (rl_seed, step, rank); `prompt_index` (N,) groups rows by prompt for loss.aggregation: prompt_mean."""
        cfg, seed = self.cfg, self.rl_seed
        n = old.mask.shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "minibatch", step, rank)))
        select_gen = torch.Generator().manual_seed(derive_seed(seed, "select", step, rank))  # Clip-Cov's pick
        for k, rows in enumerate(torch.tensor_split(perm, cfg.mini_batches)):  # equal parts (a step that kept
            # fewer groups, allocation: dapo at its cap, splits into parts one row apart)
            weights = token_weights(old.mask[rows], prompt_index[rows], cfg.loss.aggregation,
                                    dist.all_reduce_sum)  # (n_mb, T) the mini-batch's denominator, all ranks
            at = rows_to_run(old.live[rows], self.sharded)  # positions in `rows`
            at = at[self._by_length(ro, rows[at], positions=True)] if self.sort_rows else at
            select = self._mini_batch_selection(model, ro, old, rows, k, select_gen) if self.select_mini_batch else None
            yield [Micro(rows[a], weights[a], None if select is None else select.rows(a), select_gen)
                   for a in (at[s:s + cfg.micro_batch_size] for s in range(0, len(at), cfg.micro_batch_size))]

    def _by_length(self, ro: Rollouts, rows: Tensor, positions: bool = False) -> Tensor:
        """`rows` longest response first (stable), where sort_rows; with `positions`, the order as positions."""
        if not self.sort_rows:
            return torch.arange(len(rows)) if positions else rows
        order = torch.argsort(ro.response_mask[rows].sum(1).cpu(), descending=True, stable=True)
        return order if positions else rows[order]

    def _mini_batch_selection(self, model, ro: Rollouts, old: Behaviour, rows: Tensor, k: int,
                              generator: torch.Generator) -> Selection:
        """loss.select_scope: mini_batch: every selection method's mask over all `rows` of mini-batch k at once,
        from the current policy's log-probs and entropies. Before the first optimiser step of the RL step they
        are the old pass's; later ones take a no-grad pass over the mini-batch (the policy has moved)."""
        if k == 0:
            logp, ent = old.logp[rows], old.entropy[rows]
        else:
            logp, ent = torch.zeros_like(old.logp[rows]), torch.zeros_like(old.entropy[rows])  # (n_mb, T)
            with torch.no_grad():
                for s in range(0, len(rows), self.cfg.micro_batch_size):
                    r = rows[s:s + self.cfg.micro_batch_size]
                    o = response_token_stats(model, ro.input_ids[r], ro.attention_mask[r], ro.prompt_length,
                                             temperature=self.cfg.rollout.temperature, chunk=self.cfg.logprob_chunk)
                    logp[s:s + len(r)], ent[s:s + len(r)] = o["logp"], o["entropy"]
        return select_tokens(self.cfg.loss, logp, old.logp[rows], ent, old.adv_tok[rows], old.mask[rows], generator)

    def current_stats(self, model, ro: Rollouts, rows: Tensor) -> dict:
        """The current policy's log-probs and entropies on `rows` (with grad): response_token_stats."""
        return self._stats(model, ro, rows, entropy_grad=self.entropy_grad)

    # ---------------------------------------------------------------- 7. the loss (§6, docs/COMPARISON.md)
    def loss(self, cur: dict, a_tok: Tensor, micro: Micro, old: Behaviour, tally: UpdateTally) -> Tensor:
        """The micro-batch's loss: PPO dual clip on the (modulated) token advantages `a_tok`, with the
        switched-on baselines (Entropy Advantages shapes `a_tok` here first); its denominator is in micro.weights.
        Adds the micro-batch's statistics to `tally` (the one side effect)."""
        lc, r = self.cfg.loss, micro.rows
        mask = old.mask[r]
        if self.shape:  # Entropy Advantages: A + min(alpha H, |A| / kappa)
            a_tok, psi = entropy_advantages(a_tok, cur["entropy"], alpha=lc.entropy_adv_alpha,
                                            kappa=lc.entropy_adv_kappa)
            tally.psi += (psi * mask).sum().item()
        select = micro.select  # token selection (Fork Tokens, Clip-Cov, KL-Cov) from detached quantities
        if self.selects and select is None:
            select = select_tokens(lc, cur["logp"].detach(), old.logp[r], cur["entropy"].detach(), old.adv_tok[r],
                                   mask, micro.generator)
        loss, st = ppo_loss(cur["logp"], old.logp[r], a_tok, micro.weights, eps_low=lc.eps_low, eps_high=lc.eps_high,
                            dual_clip=lc.dual_clip, select=select, kl_coef=lc.kl_cov_coef, entropy=cur["entropy"],
                            entropy_coef=lc.entropy_coef)
        if select is not None:
            tally.selected += (select.selected() & mask.bool()).sum().item()
            tally.kl_abs += st.get("kl_abs_sum", 0.0)
        tally.loss += loss.item() / self.cfg.mini_batches  # this rank's part; summed over ranks in the log
        tally.clip += st["clip_frac"] * len(r) / tally.n_run
        tally.approx_kl += st["approx_kl"] * len(r) / tally.n_run
        return loss


def baseline_stats(loss_cfg, s) -> dict:
    """The switched-on baselines' own quantities for the metrics row, from the step's reduced sums `s`
    (step_metrics.StepSums): the selected-token fraction (Fork Tokens kept, Clip-Cov dropped, KL-Cov penalised),
    Entropy Advantages' mean psi, KL-Cov's mean |log-ratio| on the penalised tokens. Means over every valid token
    of the step (rows skipped for advantage 0 count in the denominator: under the selection methods no row is
    skipped; under Entropy Advantages a skipped row's psi is 0, since psi <= |A| / kappa)."""
    row = {}
    tokens = max(s.tokens, 1.0)
    if selects_tokens(loss_cfg):
        row["baseline/selected_frac"] = s.selected / tokens
    if loss_cfg.entropy_adv_alpha > 0:
        row["baseline/psi_mean"] = s.psi / tokens
    if loss_cfg.kl_cov_ratio > 0:
        row["baseline/kl_abs_selected"] = s.kl_abs / s.selected if s.selected else 0.0
    return row
