"""RLVR training: GRPO with DynaMO's rollout allocation and advantage modulation (see SPEC/README).

    python train.py --config configs/default.yaml                     # the embedded default, CPU
    python train.py --config configs/default.yaml steps=10 optim.lr=1e-5
    torchrun --standalone --nproc_per_node 2 train.py --config configs/default.yaml   # FSDP2 over 2 ranks

Shapes used throughout: P prompts, N rollouts (N = sum of per-prompt counts), T response tokens,
V vocabulary. One step: draw prompts -> allocate rollouts -> sample -> verify -> group advantages ->
old log-probs -> per mini-batch: per micro-batch forward, loss, backward; optimiser step -> log.
How this GRPO differs from the DeepSeekMath paper's: no KL term and no entropy bonus, PPO dual clip,
token-mean loss over the mini-batch, rewards +-1 (SPEC §6, the official DynaMO run).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time

import torch

from dynamo import checkpoint, distributed as dist
from dynamo.allocator import PromptStats, allocation_telemetry, rollout_counts
from dynamo.config import ConfigError, dump, help_text, load_config, run_identity, to_dict
from dynamo.data import PromptOrder, load_problems, render
from dynamo.evaluate import evaluate
from dynamo.grpo import group_advantages, ppo_loss, token_weights
from dynamo.logprobs import response_token_stats
from dynamo.model import load_pretrained
from dynamo.modulation import entropy_change_corr, factor_stats, modulate, step_normalisers
from dynamo.reward import score
from dynamo.rollout import decode_responses, derive_seed, sample
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
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    log = dist.print0
    log(dump(cfg))

    # ---------------------------------------------------------------- setup (every input checked first)
    try:
        if dist.is_main():
            check_writable(cfg.out_dir)
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
    pool_prompts = [render(p.prompt, cfg.template, tokenizer) for p in pool]
    heldout_prompts = [render(p.prompt, cfg.template, tokenizer) for p in heldout]
    rl_seed = cfg.seed if cfg.rl_seed < 0 else cfg.rl_seed  # prompt order and sampling; not warm-up or eval
    order = PromptOrder(len(pool), rl_seed)
    prompt_stats = PromptStats()  # per-prompt (G, k): the allocator's only state, saved with checkpoints
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                            betas=(cfg.optim.beta1, cfg.optim.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.optim.warmup_steps)))
    start, bad_steps, skipped, first_eval, oracle = 1, 0, 0, None, None
    if state:  # exact resume: everything the next step depends on (sampling seeds derive from the step)
        checkpoint.load_optimizer(resume, model, opt)
        sched.load_state_dict(state["scheduler"])
        order.load_state_dict(state["order"])
        prompt_stats.load_state_dict(state["prompt_stats"])
        checkpoint.set_rng_state(state["rng"][rank if len(state["rng"]) == world else 0])
        start, bad_steps, skipped = state["step"] + 1, state["bad_steps"], state["skipped"]
        first_eval, oracle = state["first_eval"], state["oracle"]
        log(f"resumed from {resume} at step {state['step']}")
        if state["world_size"] != world:  # each rank allocates within its own prompts (SPEC §3, per rank)
            log(f"note: the checkpoint was written by {state['world_size']} ranks and this run has {world}: "
                "it continues correctly, but not as the original run would have (allocation is per rank)")
    elif cfg.allocation == "oracle":
        oracle = measure_pass_rates(cfg, model, tokenizer, pool, pool_prompts)
    metrics_file = open_log(cfg.out_dir, "metrics.jsonl", start) if dist.is_main() else None
    samples_file = open_log(cfg.out_dir, "samples.jsonl", start) if dist.is_main() else None
    p_local = cfg.prompts_per_step // world

    def run_eval(step: int) -> dict | None:
        if not heldout:
            return None
        t0 = time.time()
        res = evaluate(model, tokenizer, heldout, heldout_prompts, samples=cfg.eval_samples,
                       temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                       max_new_tokens=cfg.rollout.max_new_tokens, seed=derive_seed(cfg.seed, "eval"))
        levels = " ".join(f"{k} {v:.2f}" for k, v in res["levels"].items())
        log(f"eval step {step:4d} | held-out pass@1 {res['accuracy']:.4f} +- {res['se']:.4f} | {levels} "
            f"| {time.time() - t0:.1f}s")
        if metrics_file:
            metrics_file.write(json.dumps({"step": step, "eval/accuracy": res["accuracy"], "eval/se": res["se"],
                                           **{f"eval/{k}": v for k, v in res["levels"].items()}}) + "\n")
            metrics_file.flush()
        return res

    stop_request = checkpoint.StopRequest(log)  # from here on Ctrl-C / SIGTERM: finish the step, checkpoint, exit
    if first_eval is None:
        first_eval = run_eval(0)
    t_start = time.time()

    def save_checkpoint(step: int) -> str:  # collective: every rank calls it
        digests = dist.all_gather_objects(hashlib.sha256(repr(prompt_stats.state_dict()).encode()).hexdigest())
        if len(set(digests)) > 1:  # rank 0 saves the table for all: it must be every rank's table
            raise RuntimeError(f"step {step}: the ranks' per-prompt statistics differ ({digests})")
        state = {"step": step, "scheduler": sched.state_dict(), "order": order.state_dict(),
                 "prompt_stats": prompt_stats.state_dict(), "rng": dist.all_gather_objects(checkpoint.rng_state()),
                 "world_size": world, "bad_steps": bad_steps, "skipped": skipped, "first_eval": first_eval,
                 "oracle": oracle, "config": to_dict(cfg)}
        return checkpoint.save(cfg.out_dir, step, model, tokenizer, opt, state, keep=cfg.keep_checkpoints)

    # ---------------------------------------------------------------- loop
    for step in range(start, cfg.steps + 1):
        t0 = time.time()
        # 0. draw this step's prompts; rank r takes every world-th one
        batch, new_epoch = order.next(cfg.prompts_per_step)
        if new_epoch or cfg.allocator.refresh == "step":
            prompt_stats.refresh()  # priorities are a snapshot: official per epoch (SPEC §2)
        mine = batch[rank::world]
        problems = [pool[i] for i in mine]
        ids = [p.prompt_id for p in problems]
        # 1. allocate rollouts: the same total on every rank, shared by priority within it (SPEC §3)
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
        # 3. verify each response against its own prompt's reference (joined by prompt_index, SPEC §8)
        pidx = ro.prompt_index  # (N,)
        v0 = verifier_stats()
        correct = torch.tensor(score(texts, [problems[i].answer for i in pidx.tolist()],
                                     fallbacks=cfg.reward.extraction == "fallbacks"))  # (N,)
        v_fail = [verifier_stats()[k] - v0[k] for k in ("parse_failures", "timeouts", "internal_errors")]
        rewards = correct.float() * 2 - 1  # (N,) +-1
        # every rank gets every response's own (prompt id, correct) pair, so all hold the same table
        pass_rates = [prompt_stats.pass_rate(i) for i in ids]  # the estimates the allocation saw
        parts = dist.all_gather_objects(([ids[i] for i in pidx.tolist()], correct.tolist(), counts, pass_rates,
                                         [p.level for p in problems], [rewards[pidx == j].tolist()
                                                                       for j in range(p_local)]))
        for part in parts:
            prompt_stats.update(part[0], part[1])
        # 4. group advantages over the rollouts of each prompt, any group size (SPEC §4)
        adv = group_advantages(rewards, pidx)  # (N,)
        # 5. old log-probs of the behaviour policy (no grad), in micro-batches
        t1 = time.time()
        mod = cfg.modulation
        mask = ro.response_mask.to(device).float()  # (N, T)
        n = mask.shape[0]
        micro = [list(range(s, min(n, s + cfg.micro_batch_size))) for s in range(0, n, cfg.micro_batch_size)]
        need_u = mod.stabilization and mod.estimate == "exact"
        with torch.no_grad():
            old = [response_token_stats(model, ro.input_ids[m], ro.attention_mask[m], ro.prompt_length,
                                        temperature=cfg.rollout.temperature, chunk=cfg.logprob_chunk,
                                        with_expected_u=need_u) for m in micro]
        old_logp = torch.cat([o["logp"] for o in old])  # (N, T)
        entropy = torch.cat([o["entropy"] for o in old])  # (N, T)
        old_u = torch.cat([o["expected_u"] for o in old]) if need_u else None  # (N, T)
        adv_tok = adv.to(device)[:, None].expand_as(mask)  # (N, T) sequence advantage on every token
        t_logp = time.time() - t1
        norms = step_normalisers(cfg, old_logp, entropy, adv_tok, mask, old_u)  # {} at micro-batch scope
        # 6. update: one optimiser step per mini-batch, gradient accumulated over micro-batches
        g = torch.Generator().manual_seed(derive_seed(rl_seed, "minibatch", step, rank))
        perm = torch.randperm(n, generator=g)
        mb_size = n // cfg.mini_batches
        stats = {"loss": 0.0, "clip_frac": 0.0, "dual_clip_frac": 0.0, "approx_kl": 0.0, "grad_norm": 0.0}
        factors: dict[str, list] = {"comp": [], "stab": []}
        for k in range(cfg.mini_batches):
            rows = perm[k * mb_size:(k + 1) * mb_size]
            weights = token_weights(mask[rows], pidx[rows], cfg.loss.aggregation, dist.all_reduce_sum)  # (n_mb, T)
            opt.zero_grad(set_to_none=True)
            for s in range(0, len(rows), cfg.micro_batch_size):
                r = rows[s:s + cfg.micro_batch_size]
                cur = response_token_stats(model, ro.input_ids[r], ro.attention_mask[r], ro.prompt_length,
                                           temperature=cfg.rollout.temperature, chunk=cfg.logprob_chunk,
                                           with_expected_u=need_u)
                # 5. modulate (DynaMO token level): A <- A * beta_comp * beta_stab, both detached
                a_tok = modulate(cfg, cur, old_logp[r], adv_tok[r], mask[r], norms, factors)  # (n_micro, T)
                loss, st = ppo_loss(cur["logp"], old_logp[r], a_tok, weights[s:s + len(r)],
                                    eps_low=cfg.loss.eps_low, eps_high=cfg.loss.eps_high,
                                    dual_clip=cfg.loss.dual_clip)
                loss.backward()
                stats["loss"] += loss.item() / cfg.mini_batches  # this rank's part; summed over ranks below
                for key in ("clip_frac", "dual_clip_frac", "approx_kl"):
                    stats[key] += st[key] * len(r) / n
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
            stats["grad_norm"] += norm.item() / cfg.mini_batches
        sched.step()
        t_upd = time.time() - t1 - t_logp
        # 7. log / eval / checkpoint: per-rank sums reduced once per step
        zero_adv = torch.zeros(p_local).index_add_(0, pidx, adv.abs()) == 0  # (P,) groups with no signal
        sums = torch.tensor([n, correct.sum().item(), zero_adv.sum().item(), p_local,
                             (entropy * mask).sum().item(), mask.sum().item(), ro.truncated.sum().item(),
                             stats["clip_frac"] * n, stats["approx_kl"] * n, t_gen, t_upd, *v_fail, stats["loss"],
                             t_logp], dtype=torch.float64)
        sums = dist.all_reduce_sum(sums)
        total, n_tok = sums[0].item(), sums[5].item()
        row = {"step": step, "reward": (2 * sums[1].item() - total) / total, "accuracy": sums[1].item() / total,
               "zero_adv_groups": sums[2].item() / sums[3].item(), "entropy": sums[4].item() / n_tok,
               "response_length": n_tok / total, "truncated": sums[6].item() / total,
               "grad_norm": stats["grad_norm"], "clip_frac": sums[7].item() / total, "approx_kl": sums[8].item() / total,
               "loss": sums[14].item(), "skipped_steps": skipped, "lr": sched.get_last_lr()[0],
               "time/generate": sums[9].item() / world, "time/logprobs": sums[15].item() / world,
               "time/update": sums[10].item() / world,
               "verifier/parse_failure_frac": sums[11].item() / total, "verifier/timeouts": sums[12].item(),
               "verifier/internal_errors": sums[13].item(), "time/step": time.time() - t0}
        log(f"step {step:4d} | reward {row['reward']:+.3f} acc {row['accuracy']:.3f} zero-adv {row['zero_adv_groups']:.2f} "
            f"| ent {row['entropy']:.3f} len {row['response_length']:.1f} trunc {row['truncated']:.2f} "
            f"| gnorm {row['grad_norm']:.3f} clip {row['clip_frac']:.3f} | gen {row['time/generate']:.2f}s "
            f"logp {row['time/logprobs']:.2f}s upd {row['time/update']:.2f}s")
        row.update(allocation_telemetry(*(sum((part[i] for part in parts), []) for i in (2, 3, 4, 5))))
        row.update(factor_stats(factors))
        if mod.diagnose_every and step % mod.diagnose_every == 0:
            row["modulation/entropy_change_corr"] = entropy_change_corr(cfg, model, ro, micro, old_logp, entropy,
                                                                        adv_tok, mask, old_u)
        if metrics_file:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
        if samples_file and cfg.sample_every and step % cfg.sample_every == 0:
            for i in range(min(4, n)):
                samples_file.write(json.dumps({"step": step, "prompt": problems[pidx[i]].prompt, "response": texts[i],
                                               "reference": problems[pidx[i]].answer, "reward": rewards[i].item(),
                                               "advantage": adv[i].item()}) + "\n")
            samples_file.flush()
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

    last_eval = run_eval(cfg.steps)
    path = save_checkpoint(cfg.steps)
    if dist.is_main():
        checkpoint.mark_final(cfg.out_dir, path)
        log(f"saved {path} ({time.time() - t_start:.0f}s of RL)")
        if first_eval and last_eval:
            summarise(first_eval, last_eval, cfg.out_dir,
                      {**run_identity(argv, cfg), "wall_seconds": round(time.time() - t_main, 1)})
    stop_request.restore()
    dist.shutdown()


def check_writable(out_dir: str) -> None:
    """Fail now, not after an hour of generation, if the run cannot write its outputs."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"output directory {out_dir!r} (config key 'out_dir') is not writable: {e.strerror}") from None


def drop_long_prompts(cfg, pool: list, tokenizer, log) -> list:
    """Prompts longer than rollout.max_prompt_tokens are skipped and counted, or stop the run."""
    limit = cfg.rollout.max_prompt_tokens
    lengths = [len(tokenizer(render(p.prompt, cfg.template, tokenizer))["input_ids"]) for p in pool]
    long = [p.prompt_id for p, n in zip(pool, lengths) if n > limit]
    if long and cfg.rollout.too_long == "stop":
        raise ValueError(f"{len(long)} prompts exceed rollout.max_prompt_tokens = {limit} (first: {long[0]!r}); "
                         "raise the limit or set rollout.too_long=skip")
    if long:
        log(f"[data] skipped {len(long)} of {len(pool)} prompts longer than {limit} tokens")
    kept = [p for p, n in zip(pool, lengths) if n <= limit]
    if not kept:
        raise ValueError(f"no training prompt fits rollout.max_prompt_tokens = {limit}")
    return kept


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


def measure_pass_rates(cfg, model, tokenizer, pool, prompts) -> list[float]:
    """True pass rates of the training pool for `allocation: oracle`, from many samples at the start
    (the policy then moves, so the oracle is exact only early on; it exists for measurement)."""
    res = evaluate(model, tokenizer, pool, prompts, samples=cfg.allocator.oracle_samples,
                   temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                   max_new_tokens=cfg.rollout.max_new_tokens, seed=derive_seed(cfg.seed, "oracle"))
    return res["per_problem"]


def summarise(first: dict, last: dict, out_dir: str, identity: dict) -> None:
    """Start vs end held-out accuracy with the standard error of the paired difference, and the run's identity."""
    diff = [b - a for a, b in zip(first["per_problem"], last["per_problem"])]
    d = sum(diff) / len(diff)
    se = math.sqrt(sum((x - d) ** 2 for x in diff) / (len(diff) - 1) / len(diff))
    summary = {"start": first["accuracy"], "start_se": first["se"], "end": last["accuracy"], "end_se": last["se"],
               "gain": d, "gain_se": se, "levels_start": first["levels"], "levels_end": last["levels"], **identity}
    print(f"held-out pass@1: {first['accuracy']:.4f} -> {last['accuracy']:.4f} "
          f"(gain {d:+.4f} +- {se:.4f} SE, paired over {len(diff)} problems)", flush=True)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
