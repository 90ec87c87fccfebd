"""Supervised warm-up of the embedded tiny model: a start for RL, shipped, cached or trained here.

RL needs a policy that is right sometimes: the tiny model starts at zero, so it first learns the
task's worked-answer format by teacher forcing. The task has a sharp phase transition (held-out
accuracy jumps from under 0.2 to about 0.9 within a couple of hundred steps), so the snapshot is
picked by accuracy, not by step count. The design window: sampled pass@1 on DEV_SIZE check problems
in [target_low, target_high], with greedy accuracy at least `min_greedy_gap` above it. Such a start
has solved, half-solved and unsolved prompts side by side: the heterogeneity DynaMO's allocation uses.

The rule, and why it cannot land outside the window without saying so:
  - a snapshot is checked every `check_every` steps, and every `fine_check_every` steps once pass@1
    has reached target_low / 2, so the transition is crossed in small steps;
  - greedy accuracy is measured only for snapshots inside the window;
  - training stops at the first snapshot that meets both conditions;
  - if pass@1 leaves the window upwards first, the in-window snapshot with the largest greedy gap is
    used, and the log names the condition that failed;
  - if no snapshot was inside the window at all, the warm-up stops with an error that says what to change.

Where the start comes from, in this order (each prints its origin and how to rebuild it):
  1. the start shipped in `assets/warmed-tiny/`, when its settings are exactly this config's (the
     main job's); floating-point kernels differ between CPUs (AVX-512, AVX2, none), and a sharp phase
     transition amplifies their last-bit differences, so a warm-up trained on another machine picks
     another snapshot; the shipped start makes the main job's numbers the same everywhere;
  2. the cache, `warmup.cache_dir/tiny-<key>`, keyed by a hash of every setting the start depends on;
  3. a warm-up trained now (about 2 minutes on 2 CPU cores) and written to the cache.
Rebuild the shipped start with `python -m dynamo.warmup --config configs/default.yaml --ship`.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import random
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dynamo import task
from dynamo.model import tiny_model, tiny_tokenizer
from dynamo.reward import score
from dynamo.rollout import decode_responses, derive_seed, sample

DEV_SIZE = 256  # problems used to pick the snapshot (drawn apart from the held-out split); SE of pass@1 <= 0.031
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "warmed-tiny")
REBUILD_SHIPPED = "python -m dynamo.warmup --config configs/default.yaml --ship"


class WarmupError(RuntimeError):
    """The warm-up found no snapshot inside its design window."""


def settings(cfg) -> dict:
    """Everything the warmed model depends on (the cache key is a hash of this)."""
    w = {k: v for k, v in dataclasses.asdict(cfg.warmup).items() if k not in ("cache_dir", "shipped")}
    return {"warmup": w, "levels": list(cfg.task_levels), "seed": cfg.seed, "eval_prompts": cfg.eval_prompts,
            "max_new_tokens": cfg.rollout.max_new_tokens, "dev_size": DEV_SIZE, "version": 3}


def cache_key(cfg) -> str:
    return hashlib.sha256(json.dumps(settings(cfg), sort_keys=True).encode()).hexdigest()[:12]


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


def describe(info: dict) -> str:
    """One line: the snapshot, how it was chosen, and the machine it was trained on."""
    made = info.get("made", {})
    return (f"step {info['step']}, check pass@1 {info['pass1']:.3f}, greedy {info['greedy']:.3f}; "
            f"{info['chosen_by']}; trained {made.get('date', '?')} with torch {made.get('torch', '?')}, "
            f"{made.get('cpu_capability', '?')} kernels")


def _read_info(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "warmup.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def warm_up(cfg, device, log=print):
    """(model, tokenizer, info): the shipped or cached warmed model, or a new one trained and cached now."""
    key = cache_key(cfg)
    path = os.path.join(cfg.warmup.cache_dir, f"tiny-{key}")
    if cfg.warmup.shipped and (_read_info(SHIPPED) or {}).get("key") == key:
        model, tokenizer, info = _load(SHIPPED)
        log(f"[warmup] using the shipped warmed start {SHIPPED} ({describe(info)}). It was made by "
            f"`{REBUILD_SHIPPED}`; warmup.shipped=false trains one here instead")
        return model.to(device), tokenizer, info
    if _read_info(path) is not None:
        model, tokenizer, info = _load(path)
        log(f"[warmup] reusing cached model {path} ({describe(info)}; settings in its warmup.json). "
            f"Delete that directory to train it again")
        return model.to(device), tokenizer, info
    shipped = (_read_info(SHIPPED) or {}).get("settings")
    if cfg.warmup.shipped and shipped:  # say why the shipped start does not serve, before minutes of training
        ours = settings(cfg)
        differ = [k for k in ours if shipped.get(k) != ours[k]]
        log(f"[warmup] the shipped warmed start was made with other values of {', '.join(differ) or 'its settings'} "
            f"(the warm-up depends on seed, task_levels, eval_prompts, rollout.max_new_tokens and warmup.*): "
            f"training one for these settings now, cached in {path}; rl_seed varies the RL phase on the shipped start")
    model, tokenizer, info = train(cfg, device, log)
    save(model, tokenizer, info, path)
    log(f"[warmup] cached {path}")
    return model, tokenizer, info


def _load(path):
    from dynamo.model import load_pretrained
    model, tokenizer = load_pretrained(path)
    return model, tokenizer, _read_info(path)


def save(model, tokenizer, info: dict, path: str) -> None:
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "warmup.json"), "w") as f:
        json.dump(info, f, indent=1)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)  # a crash mid-write never leaves an entry that looks complete


def train(cfg, device, log=print):
    """Teacher-force the tiny model and pick a snapshot inside the design window (module docstring)."""
    w = cfg.warmup
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "left"
    model = tiny_model(tokenizer, cfg.seed).to(device)
    _, heldout = task.split(cfg.task_levels, cfg.seed, 0, cfg.eval_prompts)
    heldout_prompts = {p.prompt for p in heldout}
    rng = random.Random(f"warmup-{cfg.seed}")
    dev = [task.Problem(f"dev:{q}", q, a, "dev") for q, a in _dev_pairs(cfg.task_levels, heldout_prompts, cfg.seed)]
    opt = torch.optim.AdamW(model.parameters(), lr=w.lr, weight_decay=0.0)
    warm = 50  # linear warm-up steps, then cosine to zero over `steps`
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, w.steps) / w.steps)))
    t0, checks, fine, chosen, best = time.time(), [], False, None, None  # best: (gap, row, weights)
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
        if step % (w.fine_check_every if fine else w.check_every):
            continue
        seed = derive_seed(cfg.seed, "warmup", step)
        row = {"step": step, "loss": round(loss.item(), 4),
               "pass1": accuracy(model, tokenizer, dev, greedy=False, max_new_tokens=cfg.rollout.max_new_tokens,
                                 seed=seed)}
        fine = fine or row["pass1"] >= w.target_low / 2
        inside = w.target_low <= row["pass1"] <= w.target_high
        if inside:  # greedy accuracy only matters inside the window
            row["greedy"] = accuracy(model, tokenizer, dev, greedy=True, max_new_tokens=cfg.rollout.max_new_tokens,
                                     seed=seed)
        checks.append(row)
        log(f"[warmup] step {step:4d} loss {row['loss']:.4f} pass@1 {row['pass1']:.3f}"
            + (f" greedy {row['greedy']:.3f}" if inside else "") + f" ({time.time() - t0:.0f}s)")
        if inside and row["greedy"] - row["pass1"] >= w.min_greedy_gap:
            chosen = dict(row, chosen_by=f"first snapshot in [{w.target_low}, {w.target_high}] with greedy gap "
                                         f">= {w.min_greedy_gap}")
            break
        if inside and (best is None or row["greedy"] - row["pass1"] > best[0]):
            best = (row["greedy"] - row["pass1"], row, {k: v.clone() for k, v in model.state_dict().items()})
        if row["pass1"] > w.target_high:
            break
    bar.close()
    if chosen is None and best is not None:
        gap, row, weights = best
        model.load_state_dict(weights)
        chosen = dict(row, chosen_by=f"no snapshot in [{w.target_low}, {w.target_high}] had greedy gap >= "
                                     f"{w.min_greedy_gap}: the largest gap, {gap:.3f}")
        log(f"[warmup] no snapshot in [{w.target_low}, {w.target_high}] met the greedy-gap condition (greedy - pass@1 "
            f">= {w.min_greedy_gap}); using step {row['step']}, the in-window snapshot with the largest gap "
            f"({gap:.3f}). Lower warmup.min_greedy_gap to accept it silently, or lower warmup.lr to widen the window")
    if chosen is None:
        raise WarmupError(_miss_message(w, checks))
    chosen.update(key=cache_key(cfg), settings=settings(cfg), seconds=round(time.time() - t0, 1), checks=checks,
                  made={"command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                        "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
                        "threads": torch.get_num_threads(),
                        **{k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
                           if k in os.environ}})
    return model, tokenizer, chosen


def _miss_message(w, checks) -> str:
    if not checks:
        return "warm-up ran no accuracy check: warmup.check_every must be <= warmup.steps"
    last = checks[-1]
    if last["pass1"] < w.target_low:
        return (f"warm-up: after warmup.steps = {w.steps} steps the check pass@1 is {last['pass1']:.3f}, below the "
                f"window [{w.target_low}, {w.target_high}]: raise warmup.steps (or warmup.lr), or lower "
                f"warmup.target_low (0 accepts any snapshot)")
    before = checks[-2] if len(checks) > 1 else {"step": 0, "pass1": 0.0}
    return (f"warm-up: pass@1 went from {before['pass1']:.3f} at step {before['step']} to {last['pass1']:.3f} at step "
            f"{last['step']}, over the window [{w.target_low}, {w.target_high}] between two checks: lower "
            f"warmup.fine_check_every (now {w.fine_check_every}) or warmup.lr (now {w.lr}), or widen the window")


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


def main(argv: list[str]) -> None:
    """python -m dynamo.warmup --config configs/default.yaml [--ship] [key=value ...]: train a start now."""
    from dynamo.config import ConfigError, load_config
    if {"-h", "--help"} & set(argv):
        print("usage: python -m dynamo.warmup --config FILE [--ship] [key=value ...]\n\n"
              "Trains the embedded model's warm-up now (ignoring the cache and the shipped start) and writes it to\n"
              "warmup.cache_dir/tiny-<key>, or with --ship to assets/warmed-tiny (the main job's start). The keys\n"
              "are train.py's (python train.py --help); the warm-up's own are warmup.*.\n\nHow it works:\n" + __doc__)
        return
    ship = "--ship" in argv
    try:
        cfg = load_config([a for a in argv if a != "--ship"])
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if cfg.model != "tiny":
        sys.exit("config error: the warm-up is for the embedded model (model: tiny)")
    torch.manual_seed(cfg.seed)
    try:
        model, tokenizer, info = train(cfg, torch.device("cpu"))
    except WarmupError as e:
        sys.exit(f"error: {e}")
    path = SHIPPED if ship else os.path.join(cfg.warmup.cache_dir, f"tiny-{info['key']}")
    save(model, tokenizer, info, path)
    print(f"[warmup] {describe(info)}\n[warmup] wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
