"""Gradient variance of the policy-gradient estimate under each rollout allocation, at equal budget
(docs/ALGORITHM.md §1.1).

    python scripts/grad_variance.py                       # tiny model after warm-up, 32 prompts x 8, R = 40
    python scripts/grad_variance.py --model runs/default/final --resamples 60
    python scripts/grad_variance.py --quick --out /tmp/gv # seconds: a smoke test

What it does, on a frozen policy and a fixed batch of P prompts (the first P of the training pool,
levels interleaved, so pass rates range from 0 to 1):
  1. oracle pass rates p_i from --oracle-samples samples per prompt: sigma_i^2 = p_i (1 - p_i);
  2. the priorities a run would see: a first round of --first-round samples per prompt (as after one
     epoch) goes into PromptStats, whose snapshot feeds `rollout_counts` exactly as train.py calls it;
  3. for each allocation (same budget B = P * n): R times, resample every prompt's n_i rollouts, verify,
     and compute the policy-gradient estimate g = (1/P) sum_i g_i, where g_i is prompt i's own mean over
     its n_i rollouts (token mean within the prompt: grpo.token_weights' `prompt_mean`), with the PPO
     loss at the behaviour policy (ratio 1, so its gradient is the policy gradient sum w A grad log pi);
  4. total variance tr Cov(g) (the trace over all parameters, or over --proj random Gaussian projections
     for large models: E|Pi x|^2 = |x|^2), its ratio to uniform with a bootstrap CI over the R resamples
     (percentile, resampling each allocation's R estimates independently: the allocations' draws are
     independent), and three predictions of the same ratio, each allocation against uniform:
       theory    sum_i sigma_i^2 / n_i (Bernoulli proxy, known baseline);
       finite-n  the estimator's own per-prompt variance at n_i rollouts (`finite_n`: the group's mean as
                 baseline gives (n-1)/n^2, and GRPO's std normalisation replaces p(1-p) by P(group not flat));
       plug-in   each prompt's variance measured under uniform, moved to n_i by the finite-n model;
     CIs of the first two come from re-drawing the oracle counts (binomial bootstrap). Also the theory's
     N sum sigma^2 / (sum sigma)^2 (unconstrained Neyman optimum against uniform) and the same against
     the box-constrained optimum, and per prompt the correlation of measured tr Cov(g_i) with p(1-p).

Two estimators from the same rollouts (the advantage is the only difference):
  mean: A = r - mean_group (REINFORCE with the group-mean baseline). This is the estimator §1
        analyses: its per-rollout variance scales with the reward variance sigma_i^2, so the proxy and
        the Neyman optimum apply to it. It is the primary one.
  grpo: A = (r - mean_group) / (std_group + eps), what train.py uses. The std normalisation gives every
        non-degenerate group unit-scale advantages whatever p_i is, so its per-prompt variance tracks
        P(group not all-equal) rather than p_i (1 - p_i): the proxy's premise does not hold for it.
Allocations: uniform; dynamo (official rule, variance weights: configs/default.yaml); neyman_std
(std weights: configs/neyman_std.yaml); water_level (configs/water_level.yaml); oracle (train.py's
`allocation: oracle`: true p, variance weights, official rule); oracle_neyman (the exact box-constrained
optimum of sum sigma_i^2 / n_i: true sigma, water level; the best any allocation can predict); and the
statistics options, each the official rule with one `allocator:` key changed (docs/ALGORITHM.md §2.1): window
(the last 16 rollouts, configs/memory_window.yaml), decay (0.5 per visit, configs/memory_decay.yaml), last_group
(the latest group's measured variance, configs/last_group.yaml), beta_prior (Beta(1, 1), configs/beta_prior.yaml),
no_mastered (no mastered cut, configs/no_mastered.yaml); and grad_neyman, not an option but a yardstick: the
box-constrained Neyman allocation n_i ~ sqrt(v_i) by each prompt's gradient variance v_i = tr Cov(g_i) (group-mean
baseline) measured under uniform in a pilot of R resamples with their own draws, i.e. what an allocation could
gain if it knew the quantity §1 actually needs rather than the pass-rate proxy.

Where the priorities come from: by default a first round of samples from the frozen policy (one visit per
prompt, as after one epoch; the memory options then equal the official statistics). With --checkpoint, a
train.py checkpoint gives both the policy and the statistics its run gathered while the policy moved, every
visit of every prompt, so the memories differ:

    python train.py --config configs/default.yaml out_dir=runs/dynamo          # saves checkpoints/step-000080
    python scripts/grad_variance.py --checkpoint runs/dynamo/checkpoints/step-000080 --out runs/gv_step80

(the run's config.yaml, found next to the checkpoint, supplies the settings and the pool).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dynamo.allocator import PromptStats, rollout_counts, water_level, water_level_continuous  # noqa: E402
from dynamo.config import load_config  # noqa: E402
from dynamo.data import load_problems, render  # noqa: E402
from dynamo.grpo import group_advantages, ppo_loss, token_weights  # noqa: E402
from dynamo.logprobs import response_token_stats  # noqa: E402
from dynamo.plot import pyplot  # noqa: E402
from dynamo.reward import score  # noqa: E402
from dynamo.rollout import decode_responses, derive_seed, sample  # noqa: E402

ALLOCATIONS = ("uniform", "dynamo", "neyman_std", "water_level", "oracle", "oracle_neyman",
               "window", "decay", "last_group", "beta_prior", "no_mastered", "grad_neyman")
# The statistics options (docs/ALGORITHM.md §2.1): the official rule and weights, priorities from PromptStats built
# with one `allocator:` key changed from the config's (configs/memory_window.yaml, ... carry the same lines).
OPTIONS = {"window": dict(memory="window"), "decay": dict(memory="decay"), "last_group": dict(memory="groups", groups=1),
           "beta_prior": dict(prior=[1, 1]), "no_mastered": dict(mastered=1.01)}
ESTIMATORS = ("mean", "grpo")


# ---------------------------------------------------------------------------------------------- allocations


def allocations(names, views, p_true, budget: int, a) -> dict[str, list[int]]:
    """Rollout counts per prompt for each named allocation, all summing to `budget` (train.py's calls).

    views: the (G, rho) snapshot each allocation reads: "official" for dynamo/neyman_std/water_level, an OPTIONS name
    for the statistics options (which use the official rule and variance weights)."""
    box = dict(n_min=a.n_min, n_max=a.n_max, exploration_budget=a.exploration_budget)
    spec = {"uniform": dict(mode="uniform"),
            "dynamo": dict(mode="dynamo", weight="variance", rule="official"),
            "neyman_std": dict(mode="dynamo", weight="std", rule="official"),
            "water_level": dict(mode="dynamo", weight="variance", rule="water_level"),
            "oracle": dict(mode="oracle", weight="variance", rule="official"),
            "oracle_neyman": dict(mode="oracle", weight="std", rule="water_level")}
    spec.update({n: dict(mode="dynamo", weight="variance", rule="official") for n in OPTIONS})
    return {n: rollout_counts(*views.get(n, views["official"]), budget, oracle_pass_rates=p_true, **spec[n], **box)
            for n in names if n != "grad_neyman"}  # grad_neyman needs a pilot measurement: main() adds it


def predicted(var: np.ndarray, counts) -> float:
    """Sum_i var_i / n_i: the variance of a mean of per-prompt means (§1), up to a constant."""
    return np.float64(np.sum(var / np.asarray(counts, dtype=np.float64)))  # numpy: x / 0 gives nan, not an error


def finite_n(estimator: str, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per-prompt variance of g_i at n rollouts, up to one constant, when the score noise dominates
    (g_i = (1/n) sum_j A_j s_j with |s_j|^2 of the same mean for every rollout: Var = E[sum_j A_j^2] E|s|^2 / n^2).

    mean: A = r - mean_group, so E sum_j A_j^2 = (n - 1) Var(r) = 4 (n - 1) p (1 - p) (+-1 rewards): the
          group's own mean as baseline costs one rollout, (n - 1) / n^2 instead of the theory's 1 / n.
    grpo: the Bessel std normalisation makes sum_j A_j^2 = n - 1 whenever the group is not all-equal, so
          Var ~ (n - 1) / n^2 * P(not all equal) = (n - 1) / n^2 * (1 - p^n - (1 - p)^n), whatever p (1 - p) is.
    """
    if estimator == "mean":
        return 4 * p * (1 - p) * (n - 1) / n ** 2
    return (1 - p ** n - (1 - p) ** n) * (n - 1) / n ** 2


# ---------------------------------------------------------------------------------------------- gradients


class Flatten:
    """Gradient tuple -> one float32 vector: all parameters (exact trace), or k fixed random projections."""

    def __init__(self, params, proj: int, seed: int):
        self.params, self.proj, self.seed = params, proj, seed
        self.dim = proj if proj else sum(p.numel() for p in params)

    def __call__(self, grads) -> torch.Tensor:
        if not self.proj:
            return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                              for g, p in zip(grads, self.params)])
        out = torch.zeros(self.proj, dtype=torch.float64)
        for j, (g, p) in enumerate(zip(grads, self.params)):
            if g is None:
                continue
            flat = g.reshape(-1).double()
            gen = torch.Generator().manual_seed(self.seed * 100_003 + j)  # same matrix every call
            for s in range(0, flat.numel(), 1 << 20):  # bounded memory: (k, 1M) at a time
                chunk = flat[s:s + (1 << 20)]
                out += torch.randn(self.proj, chunk.numel(), generator=gen, dtype=torch.float64) @ chunk
        return (out / math.sqrt(self.proj)).float()


def prompt_gradients(model, params, flat, ro, rewards, i: int, temperature: float, chunk: int) -> dict:
    """Prompt i's own gradient estimate g_i (mean over its rollouts) under each estimator; None if all zero."""
    rows = (ro.prompt_index == i).nonzero().squeeze(1)  # (n_i,)
    r = rewards[rows]  # (n_i,)
    if bool((r == r[0]).all()):  # all right or all wrong: zero advantage under both estimators
        return {e: None for e in ESTIMATORS}
    zeros = torch.zeros(len(rows), dtype=torch.long)
    a_mean = r - r.mean()  # (n_i,) group-mean baseline
    a_grpo = group_advantages(r, zeros)  # (n_i,) the same divided by the group's (std + eps): one scalar
    mask = ro.response_mask[rows].float()  # (n_i, T)
    weights = token_weights(mask, zeros, "prompt_mean")  # (n_i, T): 1 / (tokens of prompt i), sums to 1
    cur = response_token_stats(model, ro.input_ids[rows], ro.attention_mask[rows], ro.prompt_length,
                               temperature=temperature, chunk=chunk)
    old = cur["logp"].detach()  # at the behaviour policy: ratio 1, the PPO gradient is the policy gradient
    loss, _ = ppo_loss(cur["logp"], old, a_mean[:, None].expand_as(mask), weights, eps_low=0.2, eps_high=0.28,
                       dual_clip=10.0)
    g_mean = flat(torch.autograd.grad(-loss, params, allow_unused=True))  # (D,) gradient of the objective
    # the loss is linear in A at ratio 1, so the GRPO estimate is the same vector times one scalar: one backward
    k = int(a_mean.abs().argmax())
    return {"mean": g_mean, "grpo": g_mean * float(a_grpo[k] / a_mean[k])}


def trace_cov(K: np.ndarray, w: np.ndarray) -> np.ndarray:
    """tr Cov from a Gram matrix K (R, R) of the R estimates, for weight rows w (B, R) of resample counts."""
    n = w.sum(1)  # (B,)
    quad = np.einsum("br,rs,bs->b", w, K, w)  # (B,) |sum_r w_r g_r|^2
    return (w @ np.diag(K) - quad / n) / (n - 1)


def measure(model, params, flat, tokenizer, prompts, refs, counts, resamples: int, seed: int, tag: str, cfg) -> dict:
    """R resamples under one allocation: per estimator the Gram matrix of g and per-prompt variances."""
    P, D = len(prompts), flat.dim
    g_all = {e: torch.zeros(resamples, D) for e in ESTIMATORS}  # (R, D) each
    s_i = {e: torch.zeros(P, D, dtype=torch.float64) for e in ESTIMATORS}  # (P, D) running sums of g_i
    q_i = {e: np.zeros(P) for e in ESTIMATORS}  # (P,) running sums of |g_i|^2
    zero_groups = 0
    for r in range(resamples):
        ro = sample(model, tokenizer, prompts, counts, seeds=[derive_seed(seed, "grad_variance", tag, r, i)
                                                              for i in range(len(prompts))],
                    temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens)
        correct = score(decode_responses(tokenizer, ro), [refs[i] for i in ro.prompt_index.tolist()])
        rewards = torch.tensor(correct, dtype=torch.float32) * 2 - 1  # (N,) +-1 as in train.py
        for i in range(P):
            gi = prompt_gradients(model, params, flat, ro, rewards, i, cfg.rollout.temperature, cfg.logprob_chunk)
            zero_groups += gi["mean"] is None
            for e in ESTIMATORS:
                if gi[e] is None:
                    continue
                g_all[e][r] += gi[e] / P
                s_i[e][i] += gi[e].double()
                q_i[e][i] += float(gi[e].double().pow(2).sum())
    out = {"zero_adv_group_frac": zero_groups / (resamples * P)}
    for e in ESTIMATORS:
        g = g_all[e].double()
        K = (g @ g.T).numpy()  # (R, R)
        per_prompt = (q_i[e] - s_i[e].pow(2).sum(1).numpy() / resamples) / (resamples - 1)  # (P,) tr Cov(g_i)
        out[e] = {"K": K, "trace": float(trace_cov(K, np.ones((1, resamples)))[0]),
                  "per_prompt_trace": per_prompt.tolist()}
    return out


# ---------------------------------------------------------------------------------------------- statistics


def corr(x, y) -> dict:
    """Pearson and Spearman correlation (nan if either is constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        d = math.sqrt(float((a * a).sum() * (b * b).sum()))
        return float((a * b).sum() / d) if d > 0 else float("nan")
    def ranks(v):  # average ranks: ties share one rank, so a constant input gives nan, not a spurious order
        _, inv, cnt = np.unique(v, return_inverse=True, return_counts=True)
        return (np.cumsum(cnt) - (cnt - 1) / 2.0)[inv]
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    return {"pearson": pearson(x, y), "spearman": pearson(ranks(x), ranks(y))}


def ci(samples: np.ndarray, level: float = 0.95) -> list[float]:
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return [float("nan"), float("nan")]
    return [float(np.quantile(s, (1 - level) / 2)), float(np.quantile(s, 1 - (1 - level) / 2))]


def clean(x):
    """JSON without NaN/inf (strict parsers reject them): None instead."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="settings (sampling, n_min/n_max, warm-up, the pool); default configs/default.yaml, "
                    "or with --checkpoint the run's own config.yaml")
    ap.add_argument("--model", default="tiny", help="'tiny' = the cached warm-up (the RL start), or an HF directory")
    ap.add_argument("--checkpoint", help="a train.py checkpoint (out_dir/checkpoints/step-N or out_dir/final): its "
                    "policy, and the per-prompt statistics it has gathered in place of --first-round (pass the run's "
                    "--config so the batch is its pool)")
    ap.add_argument("--prompts", type=int, default=32, help="P: prompts in the fixed batch")
    ap.add_argument("--n", type=int, default=8, help="nominal rollouts per prompt: budget B = P * n")
    ap.add_argument("--resamples", type=int, default=40, help="R: gradient estimates per allocation")
    ap.add_argument("--oracle-samples", type=int, default=128, help="samples per prompt for the true pass rates")
    ap.add_argument("--first-round", type=int, default=8, help="samples per prompt the DynaMO priorities see")
    ap.add_argument("--allocations", nargs="+", default=list(ALLOCATIONS), choices=ALLOCATIONS)
    ap.add_argument("--proj", type=int, default=0, help="k random projections instead of the full trace (0 = full)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (and the config's seed, except with --checkpoint, "
                    "where the run's seed keeps its pool)")
    ap.add_argument("--out", default="runs/grad_variance", help="writes grad_variance.json (+ PNG with matplotlib)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 6 prompts, n = 4, R = 4, allocator.n_min=2 and, "
                    "without --checkpoint, the shipped warmed start on levels add2/add3, a pool of 8 (these replace "
                    "--prompts/--n/--resamples)")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides (e.g. rollout.temperature=0.7)")
    args = ap.parse_args()
    t_start = time.time()
    overrides = list(args.overrides)
    if args.checkpoint and args.config is None:  # the run's own settings: its pool, seed and box
        real = os.path.realpath(args.checkpoint)  # out_dir/final may be a link into out_dir/checkpoints
        found = [c for c in (os.path.join(os.path.dirname(real), "config.yaml"),
                             os.path.join(os.path.dirname(os.path.dirname(real)), "config.yaml")) if os.path.exists(c)]
        if not found:
            sys.exit(f"no config.yaml of the run next to {args.checkpoint} (or one folder up): pass the run's --config")
        args.config = found[0]
    args.config = args.config or "configs/default.yaml"
    if args.quick:
        args.prompts, args.n, args.resamples, args.oracle_samples, args.first_round = 6, 4, 4, 8, 4
        args.bootstrap = 200
        quick = ["allocator.n_min=2"]  # n = 4 would equal the default n_min: every allocation uniform
        if not args.checkpoint:  # the shipped warmed start on the levels it half solves: mixed rewards
            quick += ["task_levels=[add2,add3]", "train_pool=8", "eval_prompts=14", "rollout.max_new_tokens=40"]
            if args.model == "tiny":
                from dynamo.warmup import SHIPPED
                args.model = SHIPPED
        given = {o.split("=", 1)[0] for o in overrides}  # the user's keys replace the quick ones (never twice)
        overrides = [o for o in quick if o.split("=", 1)[0] not in given] + overrides
    cfg = load_config(["--config", os.path.join(ROOT, args.config) if not os.path.exists(args.config) else args.config,
                       *([] if args.checkpoint else [f"seed={args.seed}"]), "out_dir=unused", *overrides])
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.checkpoint:
        args.model = args.checkpoint
    if args.model == "tiny":
        from dynamo.warmup import warm_up
        model, tokenizer, _ = warm_up(cfg, torch.device("cpu"))
    else:
        from dynamo.model import load_pretrained
        model, tokenizer = load_pretrained(args.model)
    model.train()  # the tiny Qwen2 has no dropout: train() and eval() compute the same function
    for p in model.parameters():
        p.requires_grad_(True)
    params = [p for p in model.parameters()]
    flat = Flatten(params, args.proj, args.seed)
    pool, _ = load_problems(cfg)
    if len(pool) < args.prompts:
        sys.exit(f"the training pool has {len(pool)} prompts, fewer than --prompts {args.prompts}")
    problems = pool[:args.prompts]  # levels interleaved: a heterogeneous batch, fixed by the seed
    prompts = [render(p, cfg.template, tokenizer) for p in problems]
    refs = [p.answer for p in problems]
    P, budget, a = len(problems), len(problems) * args.n, cfg.allocator
    print(f"model {args.model}: {flat.dim if not args.proj else sum(p.numel() for p in params):,} parameters"
          f"{'' if not args.proj else f', {args.proj} projections'}; P={P} prompts, budget {budget} "
          f"(n={args.n}, box [{a.n_min}, {a.n_max}]), R={args.resamples}", flush=True)

    def pass_counts(samples: int, tag: str) -> np.ndarray:
        with torch.no_grad():
            ro = sample(model, tokenizer, prompts, [samples] * P,
                        seeds=[derive_seed(args.seed, "grad_variance", tag, i) for i in range(P)],
                        temperature=cfg.rollout.temperature,
                        top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens)
        ok = score(decode_responses(tokenizer, ro), [refs[i] for i in ro.prompt_index.tolist()])
        return np.bincount(ro.prompt_index.numpy(), weights=np.asarray(ok, dtype=np.float64), minlength=P), ro, ok

    # 1. oracle pass rates, 2. the priorities a run would see after one epoch
    k_oracle, _, _ = pass_counts(args.oracle_samples, "oracle")
    p_true = k_oracle / args.oracle_samples  # (P,)
    var_true = p_true * (1 - p_true)  # (P,) Bernoulli variance sigma_i^2
    ids = [p.prompt_id for p in problems]
    if args.checkpoint:  # the run's own history of every prompt (policy moving), all options read the same one
        from dynamo.checkpoint import load_state
        history = load_state(args.checkpoint)["prompt_stats"]
        probe = PromptStats()
        probe.load_state_dict(history)
        unseen = [i for i in ids if probe.counts(i)[0] == 0]
        if unseen:
            sys.exit(f"{len(unseen)} of the batch's {P} prompts (the first {P} of the pool of --config {args.config}) "
                     f"have no statistics in {args.checkpoint}: the config's data, seed, train_pool or task_levels "
                     "differ from the run's, or the run has not visited them yet (a later checkpoint, fewer --prompts)")
    else:  # one round of samples from the frozen policy, as after one epoch
        _, ro1, ok1 = pass_counts(args.first_round, "first_round")
        probe = PromptStats()
        probe.update([ids[i] for i in ro1.prompt_index.tolist()], ok1)
        history = probe.state_dict()
    views = {}
    for name in ["official", *OPTIONS]:
        stats = PromptStats.from_config(dataclasses.replace(a, **OPTIONS.get(name, {})))
        stats.load_state_dict(history)
        stats.refresh()
        views[name] = stats.view(ids)
    stats = PromptStats.from_config(a)
    stats.load_state_dict(history)
    G, rho = views["official"]
    allocs = allocations(args.allocations if "uniform" in args.allocations else ["uniform", *args.allocations],
                         views, p_true.tolist(), budget, a)
    pilot = None
    if "grad_neyman" in args.allocations:
        # Neyman by the gradient variance itself: each prompt's tr Cov(g_i) measured under uniform in a pilot with
        # its own draws (so the weights are not fitted to the draws they are compared with), n_i ~ sqrt(v_i)
        t0 = time.time()
        pilot = measure(model, params, flat, tokenizer, prompts, refs, allocs["uniform"], args.resamples, args.seed,
                        "pilot", cfg)
        v = np.clip(np.nan_to_num(np.asarray(pilot["mean"]["per_prompt_trace"])), 0, None)  # (P,)
        allocs["grad_neyman"] = (water_level(np.sqrt(v).tolist(), budget, a.n_min, a.n_max) if v.sum() > 0
                                 else allocs["uniform"])
        print(f"  pilot for grad_neyman ({time.time() - t0:.0f}s)", flush=True)
    print(f"oracle pass rates ({args.oracle_samples} samples): " + " ".join(f"{p:.2f}" for p in p_true), flush=True)
    for name, c in allocs.items():
        print(f"  {name:14s} counts {c}", flush=True)

    # 3. R resamples per allocation
    results = {}
    for name, counts in allocs.items():
        same = next((k for k in results if allocs[k] == counts), None)
        if same:  # the same counts are the same estimator: reuse its draws rather than spend R more resamples
            results[name] = dict(results[same], same_counts_as=same)
            print(f"  measured {name:14s} = {same} (same counts)", flush=True)
            continue
        t0 = time.time()
        results[name] = measure(model, params, flat, tokenizer, prompts, refs, counts, args.resamples, args.seed,
                                name, cfg)
        results[name]["seconds"] = time.time() - t0
        print(f"  measured {name:14s} ({results[name]['seconds']:.0f}s): tr Cov mean-baseline "
              f"{results[name]['mean']['trace']:.4g}, GRPO {results[name]['grpo']['trace']:.4g}", flush=True)

    # 4. ratios, CIs and predictions
    rng = np.random.default_rng(args.seed)
    R = args.resamples
    boot_w = lambda: np.stack([np.bincount(rng.integers(0, R, R), minlength=R) for _ in range(args.bootstrap)])  # noqa: E731
    p_boot = rng.binomial(args.oracle_samples, p_true, size=(args.bootstrap, P)) / args.oracle_samples  # (B, P)
    sig = np.sqrt(var_true)
    spec_ratio = float(P * var_true.sum() / sig.sum() ** 2) if sig.sum() > 0 else float("nan")  # V_unif / V_opt
    box_opt = water_level_continuous(sig.tolist(), budget, a.n_min, a.n_max) if sig.sum() > 0 else None
    uni = np.asarray(allocs["uniform"], dtype=np.float64)
    rows = {}
    for e in ESTIMATORS:
        tu = trace_cov(results["uniform"][e]["K"], boot_w())  # (B,)
        m_uni = np.asarray(results["uniform"][e]["per_prompt_trace"])  # (P,) tr Cov(g_i) measured under uniform
        rows[e] = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            for name, counts in allocs.items():
                n = np.asarray(counts, dtype=np.float64)
                ta = tu if name == "uniform" else trace_cov(results[name][e]["K"], boot_w())  # uniform: 1 exactly
                measured = float(np.float64(results[name][e]["trace"]) / results["uniform"][e]["trace"])
                spec = lambda p: predicted(p * (1 - p), n) / predicted(p * (1 - p), uni)  # noqa: E731
                fin = lambda p: finite_n(e, p, n).sum() / finite_n(e, p, uni).sum()  # noqa: E731
                # plug-in: each prompt's measured variance at the uniform count, moved to n_i by the finite-n model
                # (by (n-1)/n^2 alone where the model gives 0 at the uniform count)
                scale = finite_n(e, p_true, n) / finite_n(e, p_true, uni)
                scale = np.where(np.isfinite(scale), scale, finite_n("mean", np.full(P, 0.5), n)
                                 / finite_n("mean", np.full(P, 0.5), uni))
                m_ci = ci(ta / tu)
                spec_pred, fin_pred = float(spec(p_true)), float(fin(p_true))
                rows[e][name] = {
                    "counts": counts, "trace": results[name][e]["trace"], "measured_ratio": measured,
                    "measured_ci95": m_ci,
                    "predicted_ratio_bernoulli": spec_pred, "predicted_bernoulli_ci95": ci(np.array([spec(q) for q in p_boot])),
                    "predicted_ratio_finite_n": fin_pred, "predicted_finite_n_ci95": ci(np.array([fin(q) for q in p_boot])),
                    "predicted_ratio_plugin": float(np.sum(m_uni * scale) / np.sum(m_uni)),
                    "bernoulli_in_ci": bool(m_ci[0] <= spec_pred <= m_ci[1]) if math.isfinite(spec_pred) else None,
                    "finite_n_in_ci": bool(m_ci[0] <= fin_pred <= m_ci[1]) if math.isfinite(fin_pred) else None,
                    "per_prompt_trace": results[name][e]["per_prompt_trace"],
                    "zero_adv_group_frac": results[name]["zero_adv_group_frac"],
                    "same_counts_as": results[name].get("same_counts_as")}
        # the theory's bound with the measured per-prompt variances in place of p(1-p): what Neyman allocation by the
        # true gradient variance would give (V_uniform / V_opt = P sum v / (sum sqrt v)^2)
        v = np.clip(m_uni, 0, None)
        rows[e]["_spec_ratio_plugin"] = float(P * v.sum() / np.sqrt(v).sum() ** 2) if v.sum() > 0 else float("nan")
        # per prompt: measured tr Cov(g_i) against the Bernoulli proxy and against the estimator's own model
        rows[e]["_per_prompt_vs_proxy"] = corr(m_uni, var_true)
        rows[e]["_per_prompt_vs_model"] = corr(m_uni, finite_n(e, p_true, uni))
        xs = np.concatenate([results[k][e]["per_prompt_trace"] for k in allocs])
        rows[e]["_per_prompt_vs_model_pooled"] = corr(xs, np.concatenate([finite_n(e, p_true, np.asarray(c, float))
                                                                           for c in allocs.values()]))
    report = {"command": "python scripts/grad_variance.py " + " ".join(sys.argv[1:]), "model": args.model,
              "parameters": sum(p.numel() for p in params), "projections": args.proj, "prompts": P,
              "budget": budget, "n": args.n, "n_min": a.n_min, "n_max": a.n_max, "resamples": R,
              "oracle_samples": args.oracle_samples, "first_round": None if args.checkpoint else args.first_round,
              "checkpoint": args.checkpoint, "bootstrap": args.bootstrap,
              "visits_per_prompt": [dict(history.get("visits", [])).get(i, [[0, 0]]).__len__() for i in ids],
              "seed": args.seed, "levels": [p.level for p in problems], "pass_rate_oracle": p_true.tolist(),
              "pass_rate_first_round": [stats.pass_rate(i) for i in ids], "priority": rho,
              "priority_by_option": {k: v[1] for k, v in views.items()},
              "pilot_per_prompt_trace": pilot["mean"]["per_prompt_trace"] if pilot else None,
              "spec_ratio_uniform_over_neyman": spec_ratio,
              "spec_ratio_uniform_over_box_optimum": (float(predicted(var_true, uni) / predicted(var_true, box_opt))
                                                      if box_opt else float("nan")),
              "estimators": rows, "seconds": time.time() - t_start,
              "torch_threads": torch.get_num_threads()}
    with open(os.path.join(args.out, "grad_variance.json"), "w") as f:
        json.dump(clean(report), f, indent=1)
    print(table(report))
    png = plot(report, args.out)
    print(f"wrote {os.path.join(args.out, 'grad_variance.json')}{', ' + png if png else ''} "
          f"({report['seconds']:.0f}s)")


def table(rep: dict) -> str:
    """Markdown: measured vs predicted variance ratios per allocation and estimator, and the per-prompt check."""
    f = lambda x: "nan" if x is None or not math.isfinite(x) else f"{x:.3f}"  # noqa: E731
    g = lambda c: f"[{f(c[0])}, {f(c[1])}]"  # noqa: E731
    spec = rep["spec_ratio_uniform_over_neyman"]
    lines = [f"docs/ALGORITHM.md §1: V_uniform / V_Neyman = N Σσ² / (Σσ)² = {f(spec)} (V_Neyman / V_uniform = "
             f"{f(1 / spec if spec else float('nan'))}); with the box [{rep['n_min']}, {rep['n_max']}]: "
             f"V_uniform / V_box-optimum = {f(rep['spec_ratio_uniform_over_box_optimum'])}", ""]
    for e, rows in rep["estimators"].items():
        name = {"mean": "REINFORCE with the group-mean baseline (§1's estimator)",
                "grpo": "GRPO advantage (std-normalised, as train.py)"}[e]
        lines += [f"**{name}**: tr Cov(g) relative to uniform, R = {rep['resamples']} resamples each", "",
                  "| allocation | n min/max | tr Cov(g) | measured [95% CI] | Σσ²/n (theory) [95% CI] | "
                  "finite-n model [95% CI] | plug-in | zero-adv groups |", "|---|---|---|---|---|---|---|---|"]
        for a, r in rows.items():
            if a.startswith("_"):
                continue
            same = f" (= {r['same_counts_as']}: same counts, same draws)" if r.get("same_counts_as") else ""
            lines.append(f"| {a}{same} | {min(r['counts'])}/{max(r['counts'])} | {r['trace']:.4g} | "
                         f"{f(r['measured_ratio'])} {g(r['measured_ci95'])} | {f(r['predicted_ratio_bernoulli'])} "
                         f"{g(r['predicted_bernoulli_ci95'])} | {f(r['predicted_ratio_finite_n'])} "
                         f"{g(r['predicted_finite_n_ci95'])} | {f(r['predicted_ratio_plugin'])} | "
                         f"{r['zero_adv_group_frac']:.2f} |")
        c, m, mp = rows["_per_prompt_vs_proxy"], rows["_per_prompt_vs_model"], rows["_per_prompt_vs_model_pooled"]
        lines += ["", f"The theory's N Σv / (Σ√v)² with the measured per-prompt variances v_i (uniform) in place of "
                      f"p(1 − p): {f(rows['_spec_ratio_plugin'])} (V_opt / V_uniform = "
                      f"{f(1 / rows['_spec_ratio_plugin'] if rows['_spec_ratio_plugin'] else float('nan'))})."]
        lines += ["", f"Per prompt (uniform), measured tr Cov(g_i) against p(1 − p): Pearson {f(c['pearson'])}, "
                      f"Spearman {f(c['spearman'])}; against the finite-n model: Pearson {f(m['pearson'])}, "
                      f"Spearman {f(m['spearman'])}; pooled over all allocations (model at each n_i): "
                      f"Pearson {f(mp['pearson'])}, Spearman {f(mp['spearman'])}", ""]
    return "\n".join(lines)


def plot(rep: dict, out: str) -> str | None:
    """Measured vs predicted ratios, and per-prompt variance against the proxy; needs matplotlib (optional)."""
    try:
        plt = pyplot()
    except ImportError as e:
        print(f"[plot] {e}: no PNG")
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, e in zip(axes[:2], ESTIMATORS):
        rows = {k: v for k, v in rep["estimators"][e].items() if not k.startswith("_")}
        x = np.arange(len(rows))
        m = [np.nan if v["measured_ratio"] is None else v["measured_ratio"] for v in rows.values()]
        lo = [np.nan if v["measured_ci95"][0] is None else v["measured_ci95"][0] for v in rows.values()]
        hi = [np.nan if v["measured_ci95"][1] is None else v["measured_ci95"][1] for v in rows.values()]
        ax.errorbar(x - 0.1, m, yerr=[np.subtract(m, lo), np.subtract(hi, m)], fmt="o", capsize=3, label="measured")
        ax.plot(x + 0.1, [v["predicted_ratio_bernoulli"] for v in rows.values()], "s", label="Σσ²/n (theory)")
        ax.plot(x + 0.2, [v["predicted_ratio_finite_n"] for v in rows.values()], "D", ms=4, label="finite-n model")
        ax.plot(x + 0.2, [v["predicted_ratio_plugin"] for v in rows.values()], "x", label="plug-in")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(x, list(rows), rotation=30, fontsize=8)
        ax.set_ylabel("tr Cov(g) / uniform")
        ax.set_title({"mean": "group-mean baseline", "grpo": "GRPO (std-normalised)"}[e], fontsize=10)
        ax.legend(fontsize=7)
    var = np.asarray(rep["pass_rate_oracle"]) * (1 - np.asarray(rep["pass_rate_oracle"]))
    for e, mk in zip(ESTIMATORS, "o^"):
        u = rep["estimators"][e]["uniform"]
        y = np.asarray([np.nan if v is None else v for v in u["per_prompt_trace"]])
        axes[2].scatter(var, y / np.nanmax(y), marker=mk, s=18, label=e)
    axes[2].set_xlabel("p(1 − p), oracle")
    axes[2].set_ylabel("tr Cov(g_i), scaled to max 1")
    axes[2].set_title("per prompt, uniform allocation", fontsize=10)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, "grad_variance.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
