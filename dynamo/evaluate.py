"""Held-out accuracy of the policy: k samples per problem, accuracy per level, standard errors."""
from __future__ import annotations

import math
from collections import defaultdict

import torch

from dynamo import distributed as dist
from dynamo.reward import score
from dynamo.rollout import decode_responses, sample


@torch.no_grad()
def evaluate(model, tokenizer, problems, prompts: list[str], *, samples: int, temperature: float, top_p: float,
             max_new_tokens: int, seed: int, batch_size: int = 512) -> dict:
    """Mean accuracy over problems (each the mean of `samples` draws) with its standard error.

    Ranks take problems[rank::world] and the per-problem results are gathered, so every rank returns
    the same numbers. Sampling runs on a forked RNG: evaluating never changes the training run.
    """
    mine = list(range(dist.rank(), len(problems), dist.world_size()))
    per_problem = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        step = max(1, batch_size // samples)
        for s in range(0, len(mine), step):
            idx = mine[s:s + step]
            rollouts = sample(model, tokenizer, [prompts[i] for i in idx], [samples] * len(idx),
                              temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
            refs = [problems[idx[j]].answer for j in rollouts.prompt_index.tolist()]
            correct = score(decode_responses(tokenizer, rollouts), refs)
            for j, c in zip(rollouts.prompt_index.tolist(), correct):
                per_problem.setdefault(idx[j], []).append(c)
    merged = {}
    for part in dist.all_gather_objects(per_problem):
        merged.update(part)
    acc = [sum(merged[i]) / len(merged[i]) for i in range(len(problems))]
    by_level = defaultdict(list)
    for p, a in zip(problems, acc):
        by_level[p.level].append(a)
    return {"accuracy": mean(acc), "se": standard_error(acc), "per_problem": acc,
            "levels": {k: mean(v) for k, v in sorted(by_level.items())}}


def mean(xs) -> float:
    return sum(xs) / max(1, len(xs))


def standard_error(xs) -> float:
    """Standard error of the mean over problems (the unit that was sampled)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)
