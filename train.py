"""RLVR training: GRPO with DynaMO's rollout allocation and advantage modulation (docs/ALGORITHM.md).

    python train.py --config configs/default.yaml                     # the embedded default, CPU
    python train.py --config configs/default.yaml steps=10 optim.lr=1e-5
    torchrun --standalone --nproc_per_node 2 train.py --config configs/default.yaml   # FSDP2 over 2 ranks

Shapes used throughout: P prompts, N rollouts (N = sum of per-prompt counts), T response tokens,
V vocabulary. One step (docs/ALGORITHM.md §9; the loop's comments use the same numbers):
  1. allocate   2. sample   3. verify   4. advantages   5. old log-probs
  6. modulate and 7. update, micro-batch by micro-batch, one optimiser step per mini-batch   8. log
How this GRPO differs from the DeepSeekMath paper's: no KL term and no entropy bonus, PPO dual clip,
token-mean loss over the mini-batch, rewards +-1 (docs/ALGORITHM.md §6, the official DynaMO run).
"""
from __future__ import annotations

import hashlib
import os
import sys
import time

import torch

from dynamo import checkpoint, distributed as dist
from dynamo.allocator import PromptStats, rollout_counts
from dynamo.baselines import entropy_advantages, select_tokens, selects_tokens, w_reinforce_advantages
from dynamo.config import ConfigError, check_machine_and_paths, dump, help_text, load_config, run_identity, to_dict
from dynamo.data import PromptOrder, check_context, drop_long_prompts, load_problems, read_benchmarks, render
from dynamo.evaluate import evaluate, measure_pass_rates
from dynamo.grpo import group_advantages, ppo_loss, token_weights
from dynamo.logprobs import response_token_stats
from dynamo.model import load_pretrained
from dynamo.modulator import entropy_change_corr, factor_stats, modulate, step_normalisers
from dynamo.reward import score
from dynamo.rollout import decode_responses, derive_seed, sample
from dynamo.step_metrics import StepGather, StepSums, console_line, open_log, summarise, train_row, write_row
from dynamo.verifier import stats as verifier_stats
from dynamo.warmup import WarmupError, warm_up


def main(argv: list[str]) -> None:
    # ---------------------------------------------------------------- config
    t_main = time.time()
    if {"-h", "--help"} & set(argv):
        print("usage: python train.py --config FILE [key=value ...]\n" + __doc__ + "\nconfig keys (type = default before any config file):\n"
              + help_text() + "\n\nThe resolved values of a config: python -m dynamo.config --config FILE [key=value ...]")
        return
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    rank, world = dist.init()
    if cfg.prompts_per_step % world:
        sys.exit(f"config error: prompts_per_step = {cfg.prompts_per_step} must be divisible by the "
                 f"{world} ranks (each rank gets the same share)")
    try:
        check_machine_and_paths(cfg)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    log = dist.print0
    log(dump(cfg))

    # ---------------------------------------------------------------- setup (every input checked first)
    try:
        if dist.is_main():
            checkpoint.check_writable(cfg.out_dir)
        resume = checkpoint.claim_out_dir(cfg, log)
        dist.barrier()  # rank 0 may have removed an earlier run (overwrite=true)
        state = checkpoint.load_state(resume) if resume else None
        if state:
            checkpoint.check_resumable(resume, state, to_dict(cfg))
        if state and state["step"] == cfg.steps:  # its logs, summary and final weights stay as they are
            log(f"the run in {cfg.out_dir} already finished all {cfg.steps} steps ({resume}): nothing to do; "
                "raise steps to continue it")
            dist.shutdown()
            return
        pool, heldout = load_problems(cfg)
        benchmarks = read_benchmarks(cfg.eval_data)  # validation sets, {name: problems}
        torch.manual_seed(cfg.seed)
        if resume:  # the policy (and its tokenizer) come back from the checkpoint
            model, tokenizer = load_pretrained(resume, dtype)
        elif cfg.model == "tiny":  # the embedded default: warmed up once on rank 0, cached, loaded by all
            if dist.is_main():
                warm_up(cfg, torch.device("cpu"), log=log)
            dist.barrier()
            model, tokenizer, _ = warm_up(cfg, torch.device("cpu"), log=lambda *a: None)
        else:
            model, tokenizer = load_pretrained(cfg.model, dtype)
        pool = drop_long_prompts(cfg, pool, tokenizer, log)
        pool_prompts = [render(p, cfg.template, tokenizer) for p in pool]
        heldout_prompts = [render(p, cfg.template, tokenizer) for p in heldout]
        bench_prompts = {name: [render(p, cfg.template, tokenizer) for p in probs]
                         for name, probs in benchmarks.items()}
        for what, prompts in [("the training data", pool_prompts), ("the held-out split", heldout_prompts),
                              *((f"eval_data {name!r}", prompts) for name, prompts in bench_prompts.items())]:
            check_context(prompts, what, tokenizer, cfg.rollout.max_new_tokens, model)
    except (OSError, ValueError, WarmupError) as e:
        sys.exit(f"error: {e}")
    if dist.is_main():
        with open(os.path.join(cfg.out_dir, "config.yaml"), "w") as f:
            f.write(dump(cfg))
    model.to(device=device, dtype=dtype).train()
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if dist.active() and cfg.parallel.fsdp:  # under torchrun: FSDP2 over all ranks (python train.py: plain)
        mp = cfg.parallel.mixed_precision
        dist.shard(model, bf16=mp == "bf16" or (mp == "auto" and device.type == "cuda"))
    rl_seed = cfg.seed if cfg.rl_seed < 0 else cfg.rl_seed  # prompt order and sampling; not warm-up or eval
    order = PromptOrder(len(pool), rl_seed)
    prompt_stats = PromptStats.from_config(cfg.allocator)  # per-prompt (n, k) per visit: the allocator's only state, saved with checkpoints
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                            betas=(cfg.optim.beta1, cfg.optim.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.optim.warmup_steps)))
    start, bad_steps, skipped, first_eval, first_bench, oracle = 1, 0, 0, None, None, None
    if state:  # exact resume: everything the next step depends on (sampling seeds derive from the step)
        checkpoint.load_optimizer(resume, model, opt)
        sched.load_state_dict(state["scheduler"])
        order.load_state_dict(state["order"])
        prompt_stats.load_state_dict(state["prompt_stats"])
        checkpoint.set_rng_state(state["rng"][rank if len(state["rng"]) == world else 0])
        start, bad_steps, skipped = state["step"] + 1, state["bad_steps"], state["skipped"]
        first_eval, first_bench, oracle = state["first_eval"], state.get("first_benchmarks"), state["oracle"]
        log(f"resumed from {resume} at step {state['step']}")
        if state["world_size"] != world:  # each rank allocates within its own prompts (§3)
            log(f"note: the checkpoint was written by {state['world_size']} ranks and this run has {world}: "
                "it continues correctly, but not as the original run would have (allocation is per rank)")
    elif cfg.allocation == "oracle":
        oracle = measure_pass_rates(cfg, model, tokenizer, pool, pool_prompts)
    metrics_file = open_log(cfg.out_dir, "metrics.jsonl", start) if dist.is_main() else None
    samples_file = open_log(cfg.out_dir, "samples.jsonl", start) if dist.is_main() else None
    p_local = cfg.prompts_per_step // world
    log(f"skip_zero_advantage={cfg.skip_zero_advantage}: rows whose advantage is 0 (no gradient) "
        + ("are left out of the old-log-prob pass and the update" if skips_zero_advantage(cfg) else
           "go through the old-log-prob pass and the update" + (
               "" if cfg.skip_zero_advantage == "false" else
               " (skipping them would not be exact here: a loss term or token selection needs every row, or the "
               "token factors are normalised per micro-batch)")))

    def run_eval(step: int) -> tuple[dict | None, dict]:
        """The built-in task's held-out split and every eval_data benchmark, into one metrics row:
        (held-out result or None, {benchmark: result})."""
        kw = dict(samples=cfg.eval_samples, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                  max_new_tokens=cfg.rollout.max_new_tokens, seed=derive_seed(cfg.seed, "eval"))
        row, res, t0 = {"kind": "eval", "step": step}, None, time.time()
        if heldout:
            res = evaluate(model, tokenizer, heldout, heldout_prompts, **kw)
            levels = " ".join(f"{k} {v:.2f}" for k, v in res["levels"].items())
            log(f"eval step {step:4d} | held-out pass@1 {res['accuracy']:.4f} +- {res['se']:.4f} | {levels} "
                f"| {time.time() - t0:.1f}s")
            row.update({"eval/accuracy": res["accuracy"], "eval/se": res["se"],
                        **{f"eval/{k}": v for k, v in res["levels"].items()}})
        t0, k = time.time(), cfg.eval_samples
        bench = {name: evaluate(model, tokenizer, probs, bench_prompts[name], fallbacks=True, **kw)
                 for name, probs in benchmarks.items()}  # graded as eval.py grades (unboxed endings too)
        if bench:
            mean_acc = sum(r["accuracy"] for r in bench.values()) / len(bench)
            log(f"eval step {step:4d} | " + " | ".join(f"{n} avg@{k} {r['accuracy']:.4f} +- {r['se']:.4f}"
                                                       for n, r in bench.items())
                + f" | mean {mean_acc:.4f} | {time.time() - t0:.1f}s")
            for n, r in bench.items():
                row.update({f"eval/{n}/avg@{k}": r["accuracy"], f"eval/{n}/se": r["se"]})
            row[f"eval/mean/avg@{k}"] = mean_acc
        if res or bench:
            write_row(metrics_file, row)
        return res, bench

    stop_request = checkpoint.StopRequest(log)  # from here on Ctrl-C / SIGTERM: finish the step, checkpoint, exit
    if first_eval is None and first_bench is None:
        first_eval, first_bench = run_eval(0)
    t_start = time.time()

    def save_checkpoint(step: int) -> str:  # collective: every rank calls it
        digests = dist.all_gather_objects(hashlib.sha256(repr(prompt_stats.state_dict()).encode()).hexdigest())
        if len(set(digests)) > 1:  # rank 0 saves the table for all: it must be every rank's table
            raise RuntimeError(f"step {step}: the ranks' per-prompt statistics differ ({digests})")
        state = {"step": step, "scheduler": sched.state_dict(), "order": order.state_dict(),
                 "prompt_stats": prompt_stats.state_dict(), "rng": dist.all_gather_objects(checkpoint.rng_state()),
                 "world_size": world, "bad_steps": bad_steps, "skipped": skipped, "first_eval": first_eval,
                 "first_benchmarks": first_bench,
                 "oracle": oracle, "config": to_dict(cfg)}
        return checkpoint.save(cfg.out_dir, step, model, tokenizer, opt, state, keep=cfg.keep_checkpoints)

    # ---------------------------------------------------------------- loop (docs/ALGORITHM.md §9)
    for step in range(start, cfg.steps + 1):
        t0 = time.time()
        # 1. allocate: draw this step's prompts (rank r takes every world-th one); share the same rollout
        #    total on every rank among its own prompts, by priority (§2-§3)
        batch, new_epoch = order.next(cfg.prompts_per_step)
        if new_epoch or cfg.allocator.refresh == "step":
            prompt_stats.refresh()  # priorities are a snapshot: official per epoch
        mine = batch[rank::world]
        problems = [pool[i] for i in mine]
        ids = [p.prompt_id for p in problems]
        G, rho = prompt_stats.view(ids)
        a = cfg.allocator
        counts = rollout_counts(G, rho, p_local * cfg.rollouts_per_prompt, mode=cfg.allocation, weight=a.weight,
                                rule=a.rule, n_min=a.n_min, n_max=a.n_max, exploration_budget=a.exploration_budget,
                                oracle_pass_rates=[oracle[i] for i in mine] if oracle else None)
        # 2. sample with the KV cache; response j of a prompt is seeded by (seed, step, prompt id, j) alone,
        #    so neither resume, evaluation, the batch split nor the number of ranks changes what is drawn
        with dist.gathered(model, cfg.parallel.unshard_for_rollout):
            ro = sample(model, tokenizer, [pool_prompts[i] for i in mine], counts,
                        seeds=[derive_seed(rl_seed, "rollout", step, i) for i in ids],
                        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                        max_new_tokens=cfg.rollout.max_new_tokens)
        texts = decode_responses(tokenizer, ro)
        t_gen = time.time() - t0
        # 3. verify each response against its own prompt's reference (joined by prompt_index, §8), then
        #    update the statistics: every rank gets every response's own (prompt id, correct) pair
        pidx = ro.prompt_index  # (N,)
        v0 = verifier_stats()
        correct = torch.tensor(score(texts, [problems[i].answer for i in pidx.tolist()],
                                     fallbacks=cfg.reward.extraction == "fallbacks"))  # (N,)
        v1 = verifier_stats()
        rewards = correct.float() * 2 - 1  # (N,) +-1
        gather = StepGather(counts=counts, pass_rates=[prompt_stats.pass_rate(i) for i in ids],
                            levels=[p.level for p in problems],
                            group_rewards=[rewards[pidx == j].tolist() for j in range(p_local)])
        pairs = dist.all_gather_objects(([ids[i] for i in pidx.tolist()], correct.tolist(), gather))
        for rollout_ids, rollout_correct, _ in pairs:
            prompt_stats.update(rollout_ids, rollout_correct)
        # 4. advantages: normalised within the rollouts of each prompt, any group size (§4); or W-REINFORCE's
        #    fixed weights (docs/COMPARISON.md)
        if cfg.loss.advantage == "w_reinforce":
            adv = w_reinforce_advantages(correct, cfg.loss.w_reinforce_lambda)  # (N,)
        else:
            adv = group_advantages(rewards, pidx)  # (N,)
        # 5. old log-probs of the behaviour policy (no grad), in micro-batches. A row whose advantage is 0 adds
        #    exactly 0 to the gradient: `skip` leaves it out here (unless the step's normalisers or the
        #    diagnostic need every row) and in the update; the loss denominator still counts its tokens
        t1 = time.time()
        mod = cfg.modulation
        mask = ro.response_mask.to(device).float()  # (N, T)
        n = mask.shape[0]
        skip = skips_zero_advantage(cfg)
        diagnose = bool(mod.diagnose_every) and step % mod.diagnose_every == 0
        live = adv != 0 if skip else torch.ones(n, dtype=torch.bool)  # (N,) rows with a gradient
        sharded = dist.is_sharded(model)
        passed = torch.arange(n) if mod.scope == "step" or diagnose else rows_to_run(live, sharded)
        micro = [passed[s:s + cfg.micro_batch_size] for s in range(0, len(passed), cfg.micro_batch_size)]
        need_u = mod.stabilization and mod.estimate == "exact"
        old_logp, entropy = mask.new_zeros(mask.shape), mask.new_zeros(mask.shape)  # (N, T), 0 where not passed
        old_u = mask.new_zeros(mask.shape) if need_u else None  # (N, T)
        with torch.no_grad():
            for m in micro:
                o = response_token_stats(model, ro.input_ids[m], ro.attention_mask[m], ro.prompt_length,
                                         temperature=cfg.rollout.temperature, chunk=cfg.logprob_chunk,
                                         with_expected_u=need_u)
                old_logp[m], entropy[m] = o["logp"], o["entropy"]
                if need_u:
                    old_u[m] = o["expected_u"]
        adv_tok = adv.to(device)[:, None].expand_as(mask)  # (N, T) sequence advantage on every token
        t_logp = time.time() - t1
        norms = step_normalisers(cfg, old_logp, entropy, adv_tok, mask, old_u)  # {} at micro-batch scope
        # 6-7. per mini-batch one optimiser step; per micro-batch the current log-probs, the modulated
        #      advantages (6) and the PPO loss's backward (7), gradients accumulated
        g = torch.Generator().manual_seed(derive_seed(rl_seed, "minibatch", step, rank))
        perm = torch.randperm(n, generator=g)
        mb_size = n // cfg.mini_batches
        sums = StepSums(rollouts=n, groups=p_local, t_generate=t_gen, t_logprobs=t_logp)
        grad_norm, clip_frac, approx_kl, factors = 0.0, 0.0, 0.0, {"comp": [], "stab": []}
        n_run = max(1, int(live.sum()))  # rows with a gradient: the clip and KL fractions are means over them
        lc = cfg.loss  # the baselines' switches (docs/COMPARISON.md); all off: GRPO
        select_gen = torch.Generator().manual_seed(derive_seed(rl_seed, "select", step, rank))  # Clip-Cov's pick
        for k in range(cfg.mini_batches):
            rows = perm[k * mb_size:(k + 1) * mb_size]
            weights = token_weights(mask[rows], pidx[rows], cfg.loss.aggregation, dist.all_reduce_sum)  # (n_mb, T)
            at = rows_to_run(live[rows], sharded)  # positions in `rows`
            mb_select = (mini_batch_selection(cfg, model, ro, rows, k, old_logp, entropy, adv_tok, mask, select_gen)
                         if selects_tokens(lc) and lc.select_scope == "mini_batch" else None)
            opt.zero_grad(set_to_none=True)
            for s in range(0, len(at), cfg.micro_batch_size):
                at_s = at[s:s + cfg.micro_batch_size]
                r = rows[at_s]
                cur = response_token_stats(model, ro.input_ids[r], ro.attention_mask[r], ro.prompt_length,
                                           temperature=cfg.rollout.temperature, chunk=cfg.logprob_chunk,
                                           with_expected_u=need_u, entropy_grad=lc.entropy_coef > 0)
                # 6. modulate (§5): A <- A * beta_comp * beta_stab, both detached
                a_tok = modulate(cfg, cur, old_logp[r], adv_tok[r], mask[r], norms, factors)  # (n_micro, T)
                if lc.entropy_adv_alpha > 0:  # Entropy Advantages: A + min(alpha H, |A| / kappa)
                    a_tok, psi = entropy_advantages(a_tok, cur["entropy"], alpha=lc.entropy_adv_alpha,
                                                    kappa=lc.entropy_adv_kappa)
                    sums.psi += (psi * mask[r]).sum().item()
                # token selection (Fork Tokens, Clip-Cov, KL-Cov) from detached quantities, over its unit
                if mb_select is not None:
                    select = mb_select.rows(at_s)
                elif selects_tokens(lc):
                    select = select_tokens(lc, cur["logp"].detach(), old_logp[r], cur["entropy"].detach(), adv_tok[r],
                                           mask[r], select_gen)
                else:
                    select = None
                # 7. update (§6): PPO dual-clip loss, its denominator in `weights`
                loss, st = ppo_loss(cur["logp"], old_logp[r], a_tok, weights[at_s],
                                    eps_low=lc.eps_low, eps_high=lc.eps_high, dual_clip=lc.dual_clip,
                                    select=select, kl_coef=lc.kl_cov_coef, entropy=cur["entropy"],
                                    entropy_coef=lc.entropy_coef)
                loss.backward()
                if select is not None:
                    chosen = select.selected() & mask[r].bool()
                    sums.selected += chosen.sum().item()
                    sums.kl_abs += st.get("kl_abs_sum", 0.0)
                sums.loss += loss.item() / cfg.mini_batches  # this rank's part; summed over ranks below
                clip_frac += st["clip_frac"] * len(r) / n_run
                approx_kl += st["approx_kl"] * len(r) / n_run
            zero_missing_gradients(model)  # no row with a gradient: AdamW still steps (decay, momentum)
            dist.sum_gradients(model)  # replicas only: FSDP2 reduced (summed) the shards in backward
            norm = dist.grad_norm(model, cfg.optim.grad_clip)  # global over all ranks
            if torch.isfinite(norm):
                opt.step()
                bad_steps = 0
            else:  # a non-finite gradient would poison the weights and AdamW's moments: skip it
                opt.zero_grad(set_to_none=True)
                skipped, bad_steps = skipped + 1, bad_steps + 1
                if bad_steps >= cfg.optim.max_bad_steps:
                    sys.exit(f"stopping: {bad_steps} consecutive optimiser steps had a non-finite gradient norm")
            grad_norm += norm.item() / cfg.mini_batches
        sched.step()
        sums.t_update = time.time() - t1 - t_logp
        # 8. log (one reduction over ranks), evaluate, checkpoint
        zero_adv = torch.zeros(p_local).index_add_(0, pidx, adv.abs()) == 0  # (P,) groups with no signal
        sums.correct, sums.zero_adv_groups = correct.sum().item(), zero_adv.sum().item()
        sums.entropy, sums.tokens = (entropy * mask).sum().item(), mask.sum().item()
        sums.entropy_tokens = mask[passed].sum().item()
        sums.truncated, sums.clip, sums.approx_kl = ro.truncated.sum().item(), clip_frac * n, approx_kl * n
        sums.rows_skipped = int((~live).sum())
        sums.parse_failures, sums.timeouts, sums.internal_errors = (
            v1[key] - v0[key] for key in ("parse_failures", "timeouts", "internal_errors"))
        reduced = sums.reduced()
        row = train_row(step, reduced, world=world, grad_norm=grad_norm, skipped=skipped,
                        lr=sched.get_last_lr()[0], t_step=time.time() - t0)
        log(console_line(row, clip=cfg.mini_batches > 1))  # one mini-batch: ratios are 1, nothing clipped
        row.update(StepGather.telemetry([part for _, _, part in pairs]))
        row.update(baseline_stats(cfg, reduced))
        row.update(factor_stats(factors))
        if diagnose:
            row["modulation/entropy_change_corr"] = entropy_change_corr(cfg, model, ro, micro, old_logp, entropy,
                                                                        adv_tok, mask, old_u)
        write_row(metrics_file, row)
        if samples_file and cfg.sample_every and step % cfg.sample_every == 0:
            seen = [0] * p_local  # rows of each prompt so far: a row's index within its prompt's group
            for i in range(min(cfg.samples_per_step, n)):
                j = int(pidx[i])
                write_row(samples_file, {"step": step, "prompt_id": ids[j], "level": problems[j].level,
                                         "allocated": counts[j], "group": seen[j], "prompt": problems[j].prompt,
                                         "response": texts[i], "reference": problems[j].answer,
                                         "reward": rewards[i].item(), "advantage": adv[i].item()})
                seen[j] += 1
        if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
            run_eval(step)
        stop = stop_request.agreed()  # every rank stops after the same step
        if stop and step != cfg.steps:
            save_checkpoint(step)
            log(f"interrupted at step {step}; resume with resume=auto")
            stop_request.restore()
            dist.shutdown()
            sys.exit(128 + stop)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps:
            save_checkpoint(step)

    last_eval, last_bench = run_eval(cfg.steps)
    path = save_checkpoint(cfg.steps)
    if dist.is_main():
        checkpoint.mark_final(cfg.out_dir, path)
        log(f"saved {path} ({time.time() - t_start:.0f}s of RL)")
        bench = {n: (first_bench[n], r) for n, r in last_bench.items() if n in (first_bench or {})}
        # written even without a held-out split or eval_data: it carries the run's identity
        summarise(first_eval, last_eval, cfg.out_dir,
                  {**run_identity(argv, cfg), "wall_seconds": round(time.time() - t_main, 1)}, benchmarks=bench)
    stop_request.restore()
    dist.shutdown()


def skips_zero_advantage(cfg) -> bool:
    """Whether rows whose advantage is 0 stay out of the old-log-prob pass and the update (config key
    skip_zero_advantage). GRPO's loss is proportional to the advantage, so such a row adds exactly 0 to the
    gradient. 'auto' skips only where that stays exact: not under Entropy Loss or KL-Cov (terms that do not
    vanish with A) nor Fork Tokens or Clip-Cov (their quantile and covariance are over every token), and only
    where the token factors stay the same: with no modulation, or with step-scope normalisers (computed from
    every row). Under micro-batch scope the factors' normalisers would cover only the updated rows of each
    micro-batch, another grouping of the rows."""
    if cfg.skip_zero_advantage != "auto":
        return cfg.skip_zero_advantage == "true"
    if cfg.loss.entropy_coef > 0 or selects_tokens(cfg.loss):  # their loss or selection needs every row
        return False
    m = cfg.modulation
    return m.scope == "step" or not (m.compensation or m.stabilization)


def mini_batch_selection(cfg, model, ro, rows, k, old_logp, entropy, adv_tok, mask, generator):
    """loss.select_scope: mini_batch: every selection method's mask over all `rows` of mini-batch k at once, from
    the current policy's log-probs and entropies. Before the first optimiser step of the RL step they are the
    old pass's; later ones take a no-grad pass over the mini-batch (the policy has moved)."""
    if k == 0:
        logp, ent = old_logp[rows], entropy[rows]
    else:
        logp, ent = torch.zeros_like(old_logp[rows]), torch.zeros_like(entropy[rows])  # (n_mb, T)
        with torch.no_grad():
            for s in range(0, len(rows), cfg.micro_batch_size):
                r = rows[s:s + cfg.micro_batch_size]
                o = response_token_stats(model, ro.input_ids[r], ro.attention_mask[r], ro.prompt_length,
                                         temperature=cfg.rollout.temperature, chunk=cfg.logprob_chunk)
                logp[s:s + len(r)], ent[s:s + len(r)] = o["logp"], o["entropy"]
    return select_tokens(cfg.loss, logp, old_logp[rows], ent, adv_tok[rows], mask[rows], generator)


def baseline_stats(cfg, s: StepSums) -> dict:
    """The switched-on baselines' own quantities for the metrics row: the selected-token fraction (Fork Tokens
    kept, Clip-Cov dropped, KL-Cov penalised), Entropy Advantages' mean psi, KL-Cov's mean |log-ratio| on the
    penalised tokens. Means over the updated rows' valid tokens (every row is updated under these methods)."""
    lc, row = cfg.loss, {}
    tokens = max(s.tokens, 1.0)
    if selects_tokens(lc):
        row["baseline/selected_frac"] = s.selected / tokens
    if lc.entropy_adv_alpha > 0:
        row["baseline/psi_mean"] = s.psi / tokens
    if lc.kl_cov_ratio > 0:
        row["baseline/kl_abs_selected"] = s.kl_abs / s.selected if s.selected else 0.0
    return row


def rows_to_run(live: torch.Tensor, sharded: bool) -> torch.Tensor:
    """Positions of the rows a pass runs on: those with a gradient (`live`, (n,) bool), in order. A sharded
    model runs as many rows on every rank (each forward is collective), filled up with rows whose
    contribution is 0."""
    order = torch.cat([live.nonzero(), (~live).nonzero()]).squeeze(1)  # (n,)
    todo = int(live.sum())
    if sharded:
        todo = int(dist.all_reduce_max(torch.tensor(todo)))
    return order[:todo]


def zero_missing_gradients(model) -> None:
    """A mini-batch whose rows all had advantage 0 ran no backward: give every parameter the zero gradient
    it would have had, so that AdamW still applies weight decay and its momentum, as without skipping."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


if __name__ == "__main__":
    main(sys.argv[1:])
