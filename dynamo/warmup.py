"""Supervised warm-up of the embedded tiny model, cached on disk.

RL needs a policy that is right sometimes: the tiny model starts at zero, so it first learns the
task's worked-answer format by teacher forcing. The task has a sharp phase transition (FIELD_NOTES:
held-out accuracy jumps from under 0.2 to about 0.9 between steps 150 and 400), so the snapshot is
picked by accuracy, not by step count: the first one whose sampled pass@1 lies in
[target_low, target_high] with greedy accuracy at least `min_greedy_gap` above it. That start has
solved, half-solved and unsolved prompts side by side: the heterogeneity DynaMO's allocation exploits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dynamo import task
from dynamo.model import tiny_model, tiny_tokenizer
from dynamo.reward import score
from dynamo.rollout import decode_responses, derive_seed, sample

DEV_SIZE = 128  # problems used to pick the snapshot (drawn apart from the held-out split)


def cache_key(cfg) -> str:
    """Everything the warmed model depends on; a change of any of these makes a new cache entry."""
    parts = {"warmup": dataclasses.asdict(cfg.warmup), "levels": cfg.task_levels, "seed": cfg.seed,
             "eval_prompts": cfg.eval_prompts, "max_new_tokens": cfg.rollout.max_new_tokens, "version": 2}
    parts["warmup"].pop("cache_dir")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def accuracy(model, tokenizer, problems, *, greedy: bool, max_new_tokens: int, seed: int) -> float:
    rollouts = sample(model, tokenizer, [p.prompt for p in problems], [1] * len(problems),
                      seeds=[derive_seed(seed, p.prompt_id) for p in problems],
                      temperature=0.0 if greedy else 1.0, top_p=1.0, max_new_tokens=max_new_tokens)
    correct = score(decode_responses(tokenizer, rollouts), [p.answer for p in problems])
    return sum(correct) / len(correct)


def _lm_loss(model, tokenizer, pairs, device) -> torch.Tensor:
    """Teacher-forced loss on the answer tokens only (prompt tokens carry no loss)."""
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=True)["input_ids"]
    answers = tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
    seqs = [p + a + [tokenizer.eos_token_id] for p, a in zip(prompts, answers)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)  # right padding: no generation here
    labels = torch.full((len(seqs), width), -100)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, len(p):len(s)] = torch.tensor(s[len(p):])
    attn = (torch.arange(width)[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits  # (B, L, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(device))


def warm_up(cfg, device, log=print):
    """(model, tokenizer, info): the cached warmed model, or a new one trained and cached now."""
    path = os.path.join(cfg.warmup.cache_dir, f"tiny-{cache_key(cfg)}")
    tokenizer = tiny_tokenizer()
    if os.path.exists(os.path.join(path, "warmup.json")):
        from dynamo.model import load_pretrained
        model, tokenizer = load_pretrained(path)
        with open(os.path.join(path, "warmup.json")) as f:
            info = json.load(f)
        log(f"[warmup] reusing cached model {path} (step {info['step']}, pass@1 {info['pass1']:.3f})")
        return model.to(device), tokenizer, info

    w = cfg.warmup
    tokenizer.padding_side = "left"
    model = tiny_model(tokenizer, cfg.seed).to(device)
    _, heldout = task.split(cfg.task_levels, cfg.seed, 0, cfg.eval_prompts)
    heldout_prompts = {p.prompt for p in heldout}
    rng = random.Random(f"warmup-{cfg.seed}")
    dev = [task.Problem(f"dev:{q}", q, a, "dev") for q, a in _dev_pairs(cfg.task_levels, heldout_prompts, cfg.seed)]
    opt = torch.optim.AdamW(model.parameters(), lr=w.lr, weight_decay=0.0)
    warm = 50  # linear warm-up steps, then cosine to zero over `steps` (FIELD_NOTES recipe)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, w.steps) / w.steps)))
    t0, info = time.time(), None
    bar = tqdm(range(1, w.steps + 1), desc="warm-up", disable=None, leave=False)  # None: off unless a tty
    for step in bar:
        model.train()
        loss = _lm_loss(model, tokenizer, task.supervised_batch(cfg.task_levels, heldout_prompts, rng, w.batch_size),
                        device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % w.check_every:
            continue
        check = dict(max_new_tokens=cfg.rollout.max_new_tokens, seed=derive_seed(cfg.seed, "warmup", step))
        pass1 = accuracy(model, tokenizer, dev, greedy=False, **check)
        greedy = accuracy(model, tokenizer, dev, greedy=True, **check)
        log(f"[warmup] step {step:4d} loss {loss.item():.4f} pass@1 {pass1:.3f} greedy {greedy:.3f} "
            f"({time.time() - t0:.0f}s)")
        info = {"step": step, "pass1": pass1, "greedy": greedy, "seconds": round(time.time() - t0, 1)}
        if w.target_low <= pass1 <= w.target_high and greedy - pass1 >= w.min_greedy_gap:
            break
        if pass1 > w.target_high:  # overshot the window between two checks: keep this snapshot
            break
    bar.close()
    if info is None:
        raise RuntimeError("warm-up ran no accuracy check: warmup.check_every must be <= warmup.steps")
    if not w.target_low <= info["pass1"] <= w.target_high:
        log(f"[warmup] no snapshot in [{w.target_low}, {w.target_high}]; using step {info['step']} "
            f"(pass@1 {info['pass1']:.3f}). Lower warmup.check_every to land inside the window.")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "warmup.json"), "w") as f:
        json.dump(info, f)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)  # a crash mid-write never leaves a cache entry that looks complete
    log(f"[warmup] cached {path}")
    return model, tokenizer, info


def _dev_pairs(levels, exclude: set[str], seed: int):
    rng = random.Random(f"dev-{seed}")
    pairs, seen, attempts = [], set(exclude), 0
    while len(pairs) < DEV_SIZE:
        attempts += 1
        if attempts > 100 * DEV_SIZE:  # e.g. task_levels [add1]: 100 problems, most of them held out
            raise ValueError(f"cannot draw {DEV_SIZE} warm-up check problems outside the held-out split from "
                             f"task_levels {levels}: add harder levels or lower eval_prompts")
        prompt, answer, _ = task.make_problem(levels[len(pairs) % len(levels)], rng)
        if prompt not in seen:
            seen.add(prompt)
            pairs.append((prompt, answer))
    return pairs
