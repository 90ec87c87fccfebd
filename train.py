"""RLVR training: GRPO with DynaMO's rollout allocation and advantage modulation (docs/ALGORITHM.md).

    python train.py --config configs/default.yaml                     # the main job: the embedded default, CPU
    python train.py                                                   # the same (no --config: configs/default.yaml)
    python train.py --config configs/default.yaml steps=10 optim.lr=1e-5 out_dir=runs/try
    torchrun --standalone --nproc_per_node 2 train.py --config configs/default.yaml   # FSDP2 over 2 ranks

Shapes used throughout: P prompts, N rollouts (N = sum of per-prompt counts), T response tokens,
V vocabulary. One step (docs/ALGORITHM.md §9; the loop's comments use the same numbers):
  1. allocate   2. sample   3. verify   4. advantages   5. old log-probs
  6. modulate and 7. update, micro-batch by micro-batch, one optimiser step per mini-batch   8. log
DynaMO adds phase 1's allocation and phase 6's modulation; with both off (configs/grpo.yaml, which also sets
the PPO clip to 0.2/0.2) this is GRPO.
How this GRPO differs from the DeepSeekMath paper's: no KL term and no entropy bonus, PPO dual clip,
token-mean loss over the mini-batch, rewards +-1 (docs/ALGORITHM.md §6, the official DynaMO run).
What the config fixes for the whole run (the baselines' switches, which rows each pass runs on) is decided
once, before the loop, in dynamo/objective.py.
"""
from __future__ import annotations

import functools
import sys
import time

from dynamo import checkpoint, distributed as dist
from dynamo.config import run_identity
from dynamo.evaluate import evaluate_run, evaluation_due
from dynamo.launch import device_of, read_config, start
from dynamo.modulator import entropy_change_corr, factor_stats, modulate, step_normalisers
from dynamo.objective import Objective, UpdateTally, baseline_stats
from dynamo.reward import verify
from dynamo.rollout import decode_responses, sample
from dynamo.step_metrics import (StepGather, console_line, open_logs, step_sums, summarise, train_row, write_row,
                                 write_samples)


def main(argv: list[str]) -> None:
    # ---------------------------------------------------------------- config and setup (every input checked first)
    t_main = time.time()
    cfg = read_config(argv, __doc__)  # a bad config exits with its message; None after --help
    if cfg is None:
        return
    rank, world, log, device = dist.rank(), dist.world_size(), dist.print0, device_of(cfg)
    state, data = start(cfg, device, log)  # out_dir claimed; the policy, the data, the run state (fresh or resumed)
    if state is None:  # out_dir holds this run, finished
        return dist.shutdown()
    model, tokenizer = state.model, state.tokenizer
    objective = Objective(cfg, model, device)  # the loss side, decided once: rows, the baselines' switches
    metrics_file, samples_file = open_logs(cfg, state.step + 1, argv)  # rank 0's (+ `loggers`); None elsewhere
    log(objective.describe())
    run_eval = functools.partial(evaluate_run, cfg, model, tokenizer, data, log=log, metrics_file=metrics_file)
    stop_request = checkpoint.StopRequest(log, cfg.out_dir)  # Ctrl-C / SIGTERM: end the step, checkpoint, exit
    if state.first_eval is None and state.first_benchmarks is None:
        state.first_eval, state.first_benchmarks = run_eval(0)
    draw = functools.partial(sample, model, tokenizer, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                             max_new_tokens=cfg.rollout.max_new_tokens, max_rows=data.rows_per_call)
    t_start = time.time()

    # ---------------------------------------------------------------- loop (docs/ALGORITHM.md §9)
    for step in range(state.step + 1, cfg.steps + 1):
        t0 = time.time()
        # 1-3 run in rounds (dynamo/collect.py): one for uniform, dynamo and knapsack; dapo, greso and
        #     reinforce_ada draw more until the step's groups are complete. 1. allocate: this step's prompts (rank r
        #     takes every world-th one) and rollouts per prompt, by priority (§2-§3) or the method's rule
        rounds = state.method.rounds(state, data, step)
        for r in rounds:
            # 2. sample with the KV cache; response j of a prompt is seeded by (seed, step, prompt id, j) alone
            #    (and the round after the first), so neither resume, evaluation, the batch split nor the number
            #    of ranks changes what is drawn
            with dist.gathered(model, cfg.parallel.unshard_for_rollout):
                ro = draw(r.prompts, r.counts, seeds=r.seeds)
            texts = decode_responses(tokenizer, ro)
            # 3. verify each response against its own prompt's reference (joined by prompt_index, §8); every
            #    rank's (prompt id, correct) pairs update the statistics on every rank
            correct, verifier_counts = verify(texts, [r.problems[i].answer for i in ro.prompt_index.tolist()],
                                              cfg.reward.extraction)
            rounds.add(ro, texts, correct, verifier_counts)
        got, t_gen = rounds.batch(), time.time() - t0  # the training groups on this rank; the step's telemetry
        ro, pidx, correct = got.ro, got.ro.prompt_index, got.correct  # (N,) rows of the groups
        # 4. advantages: normalised within the rollouts of each prompt, any group size (§4)
        adv = objective.advantages(correct, pidx, got.statistics)  # (N,)
        # 5. old log-probs and entropies of the behaviour policy (no grad), on the rows the update needs
        t1 = time.time()
        old = objective.behaviour(model, ro, adv, step)
        t_logp = time.time() - t1
        # 6 (modulation.scope: step). the factors' normalisers over the whole step ({} at micro-batch scope)
        norms = step_normalisers(cfg, old.logp, old.entropy, old.adv_tok, old.mask, old.expected_u)
        # 6-7. per mini-batch one optimiser step; per micro-batch the current log-probs, the modulated
        #      advantages (6) and the loss's backward (7), gradients accumulated
        tally = UpdateTally(n_run=old.n_run)
        for mini in objective.mini_batches(model, ro, old, step=step, rank=rank, prompt_index=pidx):
            state.optimizer.zero_grad(set_to_none=True)
            for micro in mini:
                r = micro.rows
                cur = objective.current_stats(model, ro, r)  # current log-probs and entropies, with grad
                # 6. modulate (§5): A <- A * beta_comp * beta_stab, both detached (their values logged in tally)
                a_tok = modulate(cfg, cur, old.logp[r], old.adv_tok[r], old.mask[r], norms, tally.factors)  # (n, T)
                # 7. update (§6): PPO dual-clip loss and the switched-on baselines; denominator in micro.weights
                objective.loss(cur, a_tok, micro, old, tally).backward()
            tally.grad_norm += state.optimizer_step(cfg.optim) / cfg.mini_batches  # zero-fill, sum, clip, step
        state.scheduler.step()
        # 8. log (this rank's sums, one reduction over ranks), samples, evaluate, checkpoint
        state.step, last = step, step == cfg.steps or state.method.spent()  # spent: rollout_budget reached
        sums = step_sums(ro, correct, adv, old, tally, groups=len(got.problems), verifier=got.verifier,
                         times={"generate": t_gen, "logprobs": t_logp, "update": time.time() - t1 - t_logp}).reduced()
        row = train_row(step, sums, world=world, grad_norm=tally.grad_norm, skipped=state.skipped,
                        lr=state.scheduler.get_last_lr()[0], t_step=time.time() - t0)
        log(console_line(row, clip=cfg.mini_batches > 1))  # one mini-batch: ratios are 1, nothing clipped
        row.update(StepGather.telemetry(got.views) | got.telemetry | baseline_stats(cfg.loss, sums)
                   | factor_stats(tally.factors))
        if old.diagnose:  # every diagnose_every steps: predicted against measured entropy change
            row["modulation/entropy_change_corr"] = entropy_change_corr(cfg, model, ro, old)
        write_row(metrics_file, row)
        if samples_file and cfg.sample_every and step % cfg.sample_every == 0:  # rank 0's rows
            write_samples(samples_file, step, cfg.samples_per_step, got.problems, got.counts, pidx, got.texts,
                          correct, adv)
        if evaluation_due(cfg, step, got.telemetry) and not last:
            run_eval(step)
        stop = stop_request.agreed()  # every rank stops after the same step
        if (stop or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)) and not last:
            state.save(cfg)  # (the last step's evaluation and checkpoint are finish()'s)
        if stop and not last:
            stop_request.exit(step, stop)  # "resume with resume=auto", exit status 128 + the signal
        if last:
            break
    finish(cfg, argv, state, run_eval, stop_request, log, t_main, t_start)


def finish(cfg, argv, state, run_eval, stop_request, log, t_main: float, t_start: float) -> None:
    """The end of a run: the last evaluation, the final checkpoint (out_dir/final) and summary.json, which is
    written even without a held-out split or eval_data: it carries the run's identity."""
    last_eval, last_bench = run_eval(state.step)
    path = state.save(cfg)
    if dist.is_main():
        checkpoint.mark_final(cfg.out_dir, path)
        log(f"saved {path} ({time.time() - t_start:.0f}s of RL)")
        first = state.first_benchmarks or {}
        summarise(state.first_eval, last_eval, cfg.out_dir,
                  {**run_identity(argv, cfg), "steps_run": state.step, "wall_seconds": round(time.time() - t_main, 1)},
                  benchmarks={n: (first[n], r) for n, r in last_bench.items() if n in first})
    stop_request.restore()
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
