"""Sampling and grading for evaluation, shared by train.py's held-out evaluation and eval.py.

`sample_and_score` draws k responses per problem with the rollout code, in batches of about
`batch_rollouts` rollouts, and grades each one; `evaluate` is train.py's summary of it (accuracy per
level, standard error; step 8 of train.py) and `evaluate_run` its held-out and
benchmark evaluation, logged. eval.py adds resume, benchmark files and the estimators of
dynamo/metrics.py.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict

import torch

from dynamo import distributed as dist
from dynamo.metrics import avg_at_k
from dynamo.reward import score
from dynamo.rollout import decode_responses, derive_seed, sample
from dynamo.step_metrics import write_row
from dynamo.verifier import extract_answer


@torch.no_grad()
def sample_and_score(model, tokenizer, problems, prompts: list[str], *, samples: int, temperature: float,
                     top_p: float, max_new_tokens: int, seed: int, batch_rollouts: int = 512,
                     fallbacks: bool = False, skip=()):
    """Yield (problem index, its `samples` records) for every problem not in `skip`, batch by batch.

    A record: response text, extracted answer (None = parse failure), verdict, length in tokens
    (EOS included) and whether it was truncated. Batches hold batch_rollouts // samples problems
    (at least one), longest prompts first so that an out-of-memory error shows in the first batch.
    Sample j of a problem is drawn under (seed, problem id, j) alone, so the samples do not depend on
    the batching, the number of ranks or what ran before, and a resumed run regenerates exactly what
    an uninterrupted one would have. `fallbacks` also grades "The answer is ..." endings.
    """
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # stable: ties keep file order
    per_batch, skip = max(1, batch_rollouts // samples), set(skip)
    batches = [order[s:s + per_batch] for s in range(0, len(order), per_batch)]
    batches = [idx for idx in batches if not all(i in skip for i in idx)]
    rounds = len(batches)
    if dist.is_sharded(model):  # each generate call is collective: every rank runs as many, decided up front
        rounds = int(dist.all_reduce_max(torch.tensor(len(batches))))
    for b in range(rounds):
        if b >= len(batches):  # this rank is done: a one-token call keeps it in step with the busiest rank
            sample(model, tokenizer, [tokenizer.bos_token or tokenizer.eos_token], [1], seeds=[0],
                   temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
            continue
        idx = batches[b]
        ro = sample(model, tokenizer, [prompts[i] for i in idx], [samples] * len(idx),
                    seeds=[derive_seed(seed, problems[i].prompt_id) for i in idx],
                    temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        texts = decode_responses(tokenizer, ro)
        pidx = ro.prompt_index.tolist()  # (N,) rows are joined to their problem by index
        correct = score(texts, [problems[idx[j]].answer for j in pidx], fallbacks=fallbacks)
        records = {i: [] for i in idx}
        for j, text, ok, length, cut in zip(pidx, texts, correct, ro.response_mask.sum(1).tolist(),
                                            ro.truncated.tolist()):
            records[idx[j]].append({"answer": extract_answer(text, fallbacks=fallbacks), "correct": ok,
                                    "length": length, "truncated": cut, "response": text})
        for i in idx:
            if i not in skip:
                yield i, records[i]


def evaluate(model, tokenizer, problems, prompts: list[str], *, samples: int, temperature: float, top_p: float,
             max_new_tokens: int, seed: int, batch_size: int = 512, fallbacks: bool = False) -> dict:
    """Mean accuracy over problems (each the mean of `samples` draws: avg@k) with its standard error.

    Ranks take problems[rank::world] and the per-problem results are gathered, so every rank returns
    the same numbers. `batch_size` counts rollouts per generate call. `fallbacks` grades as eval.py does
    (unboxed final answers count too); the built-in held-out split is graded as the training reward is.
    """
    mine = list(range(dist.rank(), len(problems), dist.world_size()))
    per_problem = {}
    for j, records in sample_and_score(model, tokenizer, [problems[i] for i in mine], [prompts[i] for i in mine],
                                       samples=samples, temperature=temperature, top_p=top_p,
                                       max_new_tokens=max_new_tokens, seed=seed, batch_rollouts=batch_size,
                                       fallbacks=fallbacks):
        per_problem[mine[j]] = [r["correct"] for r in records]
    merged = {}
    for part in dist.all_gather_objects(per_problem):
        merged.update(part)
    verdicts = [merged[i] for i in range(len(problems))]
    acc = [sum(v) / len(v) for v in verdicts]
    by_level = defaultdict(list)
    for p, a in zip(problems, acc):
        by_level[p.level].append(a)
    return {"accuracy": avg_at_k(verdicts), "se": standard_error(acc), "per_problem": acc,
            "levels": {k: mean(v) for k, v in sorted(by_level.items())}}


def evaluate_run(cfg, model, tokenizer, data, step: int, log, metrics_file) -> tuple[dict | None, dict]:
    """train.py's evaluation (step 8; also at step 0 and the end): the built-in task's held-out split and every
    eval_data benchmark, logged and written as one `kind: eval` metrics row. Returns (held-out result or None,
    {benchmark: result}); `data` is dynamo.launch.Data."""
    kw = dict(samples=cfg.eval_samples, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
              max_new_tokens=cfg.rollout.max_new_tokens, seed=derive_seed(cfg.seed, "eval"),
              batch_size=data.rows_per_call or 512)  # rows per generate call, as the memory plan sized them
    row, res, t0 = {"kind": "eval", "step": step}, None, time.time()
    if data.heldout:
        with dist.gathered(model, cfg.parallel.unshard_for_rollout):  # weights gathered once, as for rollouts
            res = evaluate(model, tokenizer, data.heldout, data.heldout_prompts, **kw)
        levels = " ".join(f"{k} {v:.2f}" for k, v in res["levels"].items())
        log(f"eval step {step:4d} | held-out pass@1 {res['accuracy']:.4f} +- {res['se']:.4f} | {levels} "
            f"| {time.time() - t0:.1f}s")
        row.update({"eval/accuracy": res["accuracy"], "eval/se": res["se"],
                    **{f"eval/{k}": v for k, v in res["levels"].items()}})
    t0, k = time.time(), cfg.eval_samples
    with dist.gathered(model, cfg.parallel.unshard_for_rollout):
        bench = {name: evaluate(model, tokenizer, probs, data.bench_prompts[name], fallbacks=True, **kw)
                 for name, probs in data.benchmarks.items()}  # graded as eval.py grades (unboxed endings too)
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


def measure_pass_rates(cfg, model, tokenizer, pool, prompts) -> list[float]:
    """True pass rates of the training pool for `allocation: oracle`, from many samples at the start
    (the policy then moves, so the oracle is exact only early on; it exists for measurement)."""
    res = evaluate(model, tokenizer, pool, prompts, samples=cfg.allocator.oracle_samples,
                   temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                   max_new_tokens=cfg.rollout.max_new_tokens, seed=derive_seed(cfg.seed, "oracle"))
    return res["per_problem"]


def mean(xs) -> float:
    return sum(xs) / max(1, len(xs))


def standard_error(xs) -> float:
    """Standard error of the mean over problems (the unit that was sampled)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def evaluation_due(cfg, step: int, telemetry: dict) -> bool:
    """Evaluate after this step: every eval_every steps, and after each step whose generated rollouts crossed a
    multiple of eval_every_rollouts (telemetry: the step's rollouts/generated and rollouts/generated_total)."""
    total, every = telemetry["rollouts/generated_total"], cfg.eval_every_rollouts
    crossed = bool(every) and (total - telemetry["rollouts/generated"]) // every < total // every
    return bool(cfg.eval_every and step % cfg.eval_every == 0) or crossed

