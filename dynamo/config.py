"""One typed config for the whole run: YAML file + `key=value` overrides, validated at start.

A YAML file may start from another one with `base: other.yaml` (a path relative to it), so an
ablation config is its base plus the one line that differs. Overrides use dotted paths into the sections below, e.g.
    python train.py --config configs/default.yaml optim.lr=1e-5 rollout.temperature=0.7
A leading `--` is accepted too (`--optim.lr=1e-5`). Values are parsed as YAML scalars, so `true`,
`3`, `1e-5`, `null` and `[1, 2]` mean what they look like. A train.py command line without --config is the main
job's, configs/default.yaml (`with_main_config`); the dataclasses' values below are the base every file starts from.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import typing
from dataclasses import dataclass, field

import yaml

from dynamo.baselines import needs_every_row


class ConfigError(ValueError):
    """A config problem found before any work starts; the message names the key."""


@dataclass
class RolloutConfig:
    temperature: float = 1.0  # sampling temperature; log-probs and entropy use the same scaling
    top_p: float = 1.0  # nucleus sampling; 1.0 = the full distribution (the policy being trained)
    max_new_tokens: int = 48  # response length limit; longer responses are truncated and flagged
    max_prompt_tokens: int = 96  # prompt length limit in tokens, checked at start
    too_long: str = "stop"  # a training prompt over the limit: 'stop' the run at start, or 'skip' it (counted)
    max_rows: int = 0  # most rollouts per generate call (bounds its KV cache; changes no token); 0 = auto: all of a
    # rank's rows on CPU, on CUDA as many as the memory plan fits


@dataclass
class AllocatorConfig:
    n_min: int = 4  # fewest rollouts any prompt gets (docs/ALGORITHM.md §3 n_low)
    n_max: int = 16  # most rollouts any prompt gets (docs/ALGORITHM.md §3 n_high)
    exploration_budget: int = 4  # rollouts an unseen prompt gets before it has a priority (b0)
    mastered: float = 0.85  # pass rate at or above which a prompt counts as mastered and gets the floor priority
    # (official 0.85; above 1 turns the rule off: every seen prompt is weighted by its variance)
    floor: float = 0.01  # priority of mastered and never-solved prompts (official 0.01; > 0)
    memory: str = "cumulative"  # what priorities are computed from (docs/ALGORITHM.md §2.1): 'cumulative' every
    # rollout so far (official) | 'window' the last `window` rollouts |
    # 'decay' each earlier visit weighted by decay**age | 'groups' the last `groups` visits (1 = the latest group's
    # measured reward variance)
    window: int = 16  # memory: window, rollouts remembered per prompt (>= 2)
    decay: float = 0.5  # memory: decay, weight of a visit per later visit of the same prompt (0 < decay < 1)
    groups: int = 1  # memory: groups, visits remembered per prompt (>= 1)
    prior: list = field(default_factory=list)  # [a, b]: Beta(a, b) prior on each pass rate, weight = posterior
    # mean of p(1-p); [] = none (official)
    weight: str = "variance"  # 'variance' k(G-k)/(G(G-1)) (official) | 'std' (sqrt: literal Neyman)
    rule: str = "official"  # 'official' floor + proportional share | 'water_level' exact clip rule
    refresh: str = "epoch"  # priorities snapshotted once per 'epoch' (official) or every 'step'
    oracle_samples: int = 64  # samples per prompt measuring true pass rates at the start (allocation: oracle)


@dataclass
class DapoConfig:  # allocation: dapo (and greso's refill); docs/COMPARISON.md, "Prompt allocation"
    gen_batch_size: int = 0  # dapo and greso: prompts per generation batch; 0 = prompts_per_step (the official
    # scripts draw 3x)
    max_gen_batches: int = 10  # dapo and greso: most generation batches per step (official scripts: 10; 0 = no limit)
    at_cap: str = "train"  # dapo and greso, at the cap short of prompts_per_step kept groups: 'train' on those
    # kept (dapo/cap_hit logs it) | 'stop' the run with the official error


@dataclass
class GresoConfig:  # allocation: greso (official values)
    p_easy: float = 0.5  # start value: a prompt whose last z groups were all correct is skipped with probability
    # 1 - max(p_easy^z, floor)
    p_hard: float = 0.5  # start value: a prompt whose last z groups had no correct answer is skipped with
    # probability 1 - max(p_hard^z, floor)
    target_zero_variance: float = 0.25  # zero-variance share of a step's groups aimed at: p_easy moves to keep the
    # all-correct share at this / 3, p_hard the no-correct share at this * 2 / 3
    adapt_step: float = 0.01  # move of p_easy, p_hard after each step (from the second epoch on)
    p_min: float = 0.05  # lower bound of p_easy, p_hard
    p_max: float = 0.95  # upper bound of p_easy, p_hard
    floor: float = 0.01  # smallest keep probability: a prompt is skipped with at most 1 - floor


@dataclass
class KnapsackConfig:  # allocation: knapsack (official values)
    min_n: int = 2  # rollouts of a prompt with an estimated pass rate of 0 or 1, and every prompt's least
    max_n: int = 128  # most rollouts the programme gives a prompt (the fallback's excess may exceed it)
    min_history: int = 8  # rollouts seen before a prompt has an estimate (fewer: it gets rollouts_per_prompt)
    recent: int = 16  # the estimate: its latest group's mean reward, or its `recent` latest rewards' if fewer
    alpha: float = 0.9  # a prompt's estimated need: rollouts for its group to be not all equal with probability
    # alpha, ln(1 - alpha) / ln max(p, 1 - p) (the fallback compares their sum with the remainder)


@dataclass
class ReinforceAdaConfig:  # allocation: reinforce_ada (official values; n = rollouts_per_prompt)
    round_rollouts: int = 8  # M: rollouts per active prompt per round
    max_rounds: int = 4  # R: most rounds per step
    exit: str = "balanced"  # a prompt leaves when it has n/2 correct and n/2 wrong ('balanced') or one correct
    # ('positive_focused')
    std_normalise: bool = False  # A = (r - mean) / std over every sample drawn; false: r - mean (official script)


@dataclass
class LossConfig:
    eps_low: float = 0.2  # PPO clip below: ratio >= 1 - eps_low
    eps_high: float = 0.28  # PPO clip above (clip-higher); the official run uses 0.28 (docs/ALGORITHM.md §6)
    dual_clip: float = 10.0  # dual-clip constant c for negative advantages (docs/ALGORITHM.md §6)
    aggregation: str = "token_mean"  # 'token_mean' (official) | 'prompt_mean' (each prompt weighs the same)
    # -- The paper's baselines (docs/COMPARISON.md), each off by default; configs/<name>.yaml turns one on.
    advantage: str = "grpo"  # 'grpo' group-normalised | 'w_reinforce' (+lambda correct, -1 wrong, no normalisation)
    w_reinforce_lambda: float = 0.1  # W-REINFORCE's weight of correct responses
    entropy_coef: float = 0.0  # Entropy Loss: loss -= coef * token-mean of the full-vocabulary entropy (0 = off)
    entropy_adv_alpha: float = 0.0  # Entropy Advantages: A += min(alpha H, |A| / kappa), H detached (0 = off)
    entropy_adv_kappa: float = 2.0  # Entropy Advantages' cap |A| / kappa (> 1: the sign of A never flips)
    fork_top: float = 1.0  # Fork Tokens: only the top fraction of tokens by entropy keep a policy loss (1 = off)
    clip_cov_ratio: float = 0.0  # Clip-Cov: fraction of tokens whose gradient is dropped (0 = off)
    clip_cov_low: float = 1.0  # Clip-Cov: lower end of the candidates' covariance band (low, high)
    clip_cov_high: float = 5.0  # Clip-Cov: upper end of that covariance band
    kl_cov_ratio: float = 0.0  # KL-Cov: fraction of tokens (top covariance) with the |log-ratio| penalty (0 = off)
    kl_cov_coef: float = 1.0  # KL-Cov: penalty coefficient
    select_scope: str = "micro"  # unit of token selection (Fork, Clip-Cov, KL-Cov): each 'micro' batch
    # (official code) | the whole 'mini_batch' (a no-grad pre-pass over it, once per optimiser step)


@dataclass
class ModulationConfig:
    compensation: bool = False  # beta_comp: boost confident tokens of correct answers (docs/ALGORITHM.md §5)
    stabilization: bool = False  # beta_stab: damp tokens with the largest predicted entropy change
    alpha: float = 0.2  # compensation strength (official mu_max = 1 + alpha)
    lambda_min: float = 0.6  # floor of beta_stab
    gamma: float = 50.0  # sharpness of the beta_stab sigmoid
    tau: float = 0.99  # beta_stab sigmoid centre on the normalised entropy change
    estimate: str = "head"  # entropy-change estimate: 'head' (official) | 'exact' | 'v0'
    scope: str = "micro_batch"  # both factors' normalisers per 'micro_batch' (official) or over the 'step'
    diagnose_every: int = 0  # every k steps correlate predicted with measured entropy change (0 = off)


@dataclass
class OptimConfig:
    lr: float = 3e-5  # AdamW learning rate
    weight_decay: float = 0.1  # AdamW weight decay
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.999  # AdamW second-moment decay
    warmup_steps: int = 10  # linear learning-rate warm-up, then constant (docs/ALGORITHM.md §6)
    grad_clip: float = 1.0  # global grad-norm clip; a non-finite norm skips the step
    max_bad_steps: int = 5  # stop after this many consecutive skipped (non-finite) steps


@dataclass
class RewardConfig:
    extraction: str = "boxed"  # reward reads 'boxed' answers (as prompted) or also unboxed endings ('fallbacks')


@dataclass
class ParallelConfig:
    """Runs under torchrun (several processes, or one): how the policy is split over the ranks."""
    fsdp: bool = True  # FSDP2: shard parameters, gradients and AdamW state over ranks (false: full replicas)
    mixed_precision: str = "auto"  # FSDP2 compute: 'bf16' (params bf16, reduction fp32) | 'fp32' | 'auto' (bf16 on GPU)
    unshard_for_rollout: bool = False  # keep the gathered weights for the whole of generation (faster, more memory)


@dataclass
class WarmupConfig:
    """Supervised warm-up of the embedded tiny model (only used when model == 'tiny')."""
    steps: int = 500  # at most this many supervised steps
    batch_size: int = 64  # supervised examples per warm-up step
    lr: float = 3e-3  # AdamW learning rate (50 linear warm-up steps, then cosine to zero over `steps`)
    check_every: int = 25  # check a snapshot's accuracy every this many steps ...
    fine_check_every: int = 5  # ... and every this many once pass@1 reaches target_low / 2
    target_low: float = 0.30  # stop at the first snapshot with sampled pass@1 in [low, high] ...
    target_high: float = 0.50  # (the window's upper end)
    min_greedy_gap: float = 0.10  # ... and greedy accuracy at least this much above it
    cache_dir: str = "cache"  # the warmed model is stored here, keyed by a hash of its settings
    shipped: bool = True  # use the start shipped in assets/warmed-tiny when its settings match this config


@dataclass
class Config:
    seed: int = 0  # everything random derives from this (model init, warm-up, task split, evaluation)
    rl_seed: int = -1  # seed of the RL phase only (prompt order, rollout and mini-batch sampling); -1 = seed
    out_dir: str = ""  # metrics, samples, config, checkpoints; "" = runs/<config file name>
    model: str = "tiny"  # 'tiny' = the embedded model (built and warmed up here), a local HF directory or a .gguf file
    data: str = "arithmetic"  # 'arithmetic' = built-in task, or a JSONL or Parquet file of problems with answers
    template: str = "plain"  # prompt template: 'plain' (text as is) | 'boxed' (base model) | 'chat'
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda'
    dtype: str = "float32"  # parameter dtype: 'float32' (bf16 compute: parallel.mixed_precision under torchrun)
    tf32: bool = True  # on CUDA, float32 matmuls on TF32 tensor cores (10-bit mantissa products, float32 sums);
    # false: strict float32. No effect on CPU
    steps: int = 80  # RL steps
    prompts_per_step: int = 16  # P: prompts per step (all ranks together)
    rollouts_per_prompt: int = 8  # n: nominal rollouts per prompt; the step budget is P * n
    allocation: str = "dynamo"  # 'dynamo' (docs/ALGORITHM.md §2-3) | 'uniform' (GRPO) | 'oracle' (measurement only)
    # | the field's methods (docs/COMPARISON.md, "Prompt allocation"): 'dapo' | 'greso' | 'knapsack' | 'reinforce_ada'
    rollout_budget: int = 0  # stop after the step at which this many rollouts were generated in all, every round
    # and rank (the last step may overshoot; `steps` still caps the run); 0: run `steps` steps
    mini_batches: int = 1  # optimiser steps per RL step (the rollouts are split evenly)
    micro_batch_size: int = 64  # rollouts per forward/backward (gradient accumulation, same result)
    logprob_chunk: int = 1024  # most response positions per LM-head block in log-probs/entropy (memory bound;
    # a block also holds at most 16 MiB of float32 logits)
    skip_zero_advantage: str = "auto"  # leave rows with advantage 0 (no gradient) out of old log-probs and update:
    # 'auto' where exact (no modulation, or modulation.scope step), 'true' always (micro-batch-scope factors
    # then see the updated rows only), 'false' never
    activation_checkpointing: bool = False  # recompute each decoder layer in backward (memory for time)
    eval_every: int = 20  # held-out evaluation every k steps (0 = only at start and end)
    eval_every_rollouts: int = 0  # also after each step that crosses a multiple of this many generated rollouts
    eval_prompts: int = 256  # held-out prompts per evaluation
    eval_samples: int = 4  # samples per held-out prompt (temperature from rollout)
    eval_data: list = field(default_factory=list)  # benchmark JSONL files evaluated like the held-out split (step 0,
    # every eval_every steps, the end; eval_samples each, graded in evaluation mode): validation curves
    checkpoint_every: int = 20  # save a resumable checkpoint every k steps (0 = only at the end and on a stop signal)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    resume: str = ""  # '' = start fresh, 'auto' = newest complete checkpoint in out_dir (if any), or a path
    overwrite: bool = False  # a fresh run into an out_dir holding another run's outputs deletes them first
    sample_every: int = 20  # write rollouts to samples.jsonl every k steps (0 = never)
    samples_per_step: int = 4  # rollouts written each such step (0 = none): the first rows of the step, with
    # prompt id, level, allocated count and index in its group; under several ranks rank 0 writes its own rows only
    loggers: list = field(default_factory=list)  # experiment trackers sent every metrics.jsonl row as well: any of
    # tensorboard, wandb (optional packages; docs/RUNS.md, "Experiment trackers"); [] = metrics.jsonl only
    train_pool: int = 256  # built-in task: prompts in the training pool (revisited every epoch)
    task_levels: list = field(default_factory=lambda: ["add1", "add2", "add3", "add4", "mul2", "mul3", "mul4"])
    # built-in task: the difficulty levels in use (addK: K-digit + K-digit, mulK: K-digit x 1-digit)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    allocator: AllocatorConfig = field(default_factory=AllocatorConfig)
    dapo: DapoConfig = field(default_factory=DapoConfig)
    greso: GresoConfig = field(default_factory=GresoConfig)
    knapsack: KnapsackConfig = field(default_factory=KnapsackConfig)
    reinforce_ada: ReinforceAdaConfig = field(default_factory=ReinforceAdaConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    modulation: ModulationConfig = field(default_factory=ModulationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)

    @property
    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.rollouts_per_prompt

    @property
    def rl_seed_resolved(self) -> int:
        """The seed of the RL phase (prompt order, rollouts, mini-batches): rl_seed, or seed when it is -1."""
        return self.seed if self.rl_seed < 0 else self.rl_seed


CHOICES = {
    "skip_zero_advantage": ("auto", "true", "false"),
    "template": ("plain", "boxed", "chat"),
    "rollout.too_long": ("stop", "skip"),
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("float32", "bfloat16"),
    "allocation": ("uniform", "dynamo", "oracle", "dapo", "greso", "knapsack", "reinforce_ada"),
    "dapo.at_cap": ("train", "stop"),
    "reinforce_ada.exit": ("balanced", "positive_focused"),
    "allocator.weight": ("variance", "std"),
    "allocator.rule": ("official", "water_level"),
    "allocator.refresh": ("epoch", "step"),
    "allocator.memory": ("cumulative", "window", "decay", "groups"),
    "loss.aggregation": ("token_mean", "prompt_mean"),
    "loss.advantage": ("grpo", "w_reinforce"),
    "loss.select_scope": ("micro", "mini_batch"),
    "reward.extraction": ("boxed", "fallbacks"),
    "modulation.estimate": ("head", "exact", "v0"),
    "modulation.scope": ("micro_batch", "step"),
    "parallel.mixed_precision": ("auto", "bf16", "fp32"),
}

# One-line presets: `preset=grpo` etc. are applied before the other overrides.
PRESETS = {
    "decay5": {"modulation.alpha": 0.4, "modulation.tau": 0.9},  # the official decay5_linearnorm mode
}


def check_machine_and_paths(cfg) -> None:
    """What a config file cannot know, checked before any work: a CUDA device when it asks for one, and every
    model/data/eval_data path, all named at once (a config with placeholders, like configs/paper/, lists each)."""
    import torch
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = cuda, but this PyTorch sees no CUDA GPU (torch {torch.__version__}): use "
                          "device=cpu or device=auto, or install a CUDA build of torch")
    missing = [f"'{key}' = {path!r}" for key, paths in (("model", [cfg.model]), ("data", [cfg.data]),
                                                          ("eval_data", cfg.eval_data))
               for path in paths if path not in ("tiny", "arithmetic") and not os.path.exists(path)]
    if missing:
        raise ConfigError("these paths do not exist: " + "; ".join(missing))


def _coerce(key: str, value, typ):
    """Check `value` against the dataclass field type; ints are accepted for floats."""
    origin = typing.get_origin(typ) or typ
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if origin is list and isinstance(value, list):
        return value
    if typ is str and isinstance(value, bool):  # YAML reads `true` / `false` as booleans: keys like
        return "true" if value else "false"     # skip_zero_advantage take them as choices
    if typ in (int, float, str, bool) and type(value) is typ:
        return value
    if origin is list:
        raise ConfigError(f"config key '{key}': expected a list in brackets, e.g. {key}=[a, b], got {value!r}")
    raise ConfigError(f"config key '{key}': expected {getattr(typ, '__name__', typ)}, got {value!r}")


def _set(cfg, path: str, value) -> None:
    obj, parts = cfg, path.split(".")
    for i, name in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if name not in fields:
            where = ".".join(parts[:i]) or "top level"
            close = difflib.get_close_matches(name, fields, n=3, cutoff=0.6)
            hint = f": did you mean {' or '.join(repr('.'.join(parts[:i] + [c])) for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint} ('{name}' is not a field of {where}; "
                              f"known: {', '.join(sorted(fields))})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, name)):
                if not isinstance(value, dict):
                    raise ConfigError(f"config key '{path}' is a section; give a mapping")
                for k, v in value.items():
                    _set(cfg, f"{path}.{k}", v)
            else:
                hints = typing.get_type_hints(type(obj))
                setattr(obj, name, _coerce(path, value, hints[name]))
        else:
            obj = getattr(obj, name)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"config key '{path}': '{name}' is not a section")


def _check_methods(cfg: Config) -> None:
    """The field's allocation methods' sections (docs/COMPARISON.md, "Prompt allocation")."""
    d, g, k, r, n = cfg.dapo, cfg.greso, cfg.knapsack, cfg.reinforce_ada, cfg.rollouts_per_prompt
    uses = {"dapo": ("dapo", "greso"), "greso": ("greso",), "knapsack": ("knapsack",),
            "reinforce_ada": ("reinforce_ada",)}
    for section, methods in uses.items():  # a section set for another method would do nothing
        if cfg.allocation not in methods and to_dict(getattr(cfg, section)) != to_dict(type(getattr(cfg, section))()):
            raise ConfigError(f"config section '{section}' acts only with allocation={' or '.join(methods)}, and "
                              f"allocation is {cfg.allocation!r}: drop the {section}.* keys or set allocation="
                              f"{methods[-1]}")
    rules = [("dapo.gen_batch_size", d.gen_batch_size >= 0, ">= 0 (0: prompts_per_step)"),
             ("dapo.max_gen_batches", d.max_gen_batches >= 0, ">= 0 (0: no limit)"),
             ("greso.p_easy", 0 < g.p_easy <= 1, "in (0, 1]"), ("greso.p_hard", 0 < g.p_hard <= 1, "in (0, 1]"),
             ("greso.p_min", 0 < g.p_min <= g.p_max <= 1, "in (0, greso.p_max], p_max <= 1"),
             ("greso.target_zero_variance", 0 <= g.target_zero_variance <= 1, "in [0, 1]"),
             ("greso.floor", 0 < g.floor <= 1, "in (0, 1]"), ("greso.adapt_step", g.adapt_step >= 0, ">= 0"),
             ("knapsack.min_n", 1 <= k.min_n <= n, f"in [1, rollouts_per_prompt = {n}]"),
             ("knapsack.max_n", k.max_n >= max(k.min_n, 2), ">= knapsack.min_n and >= 2"),
             ("knapsack.min_history", k.min_history >= 1, ">= 1"), ("knapsack.recent", k.recent >= 1, ">= 1"),
             ("knapsack.alpha", 0 < k.alpha < 1, "in (0, 1)"),
             ("reinforce_ada.round_rollouts", r.round_rollouts >= 1, ">= 1"),
             ("reinforce_ada.max_rounds", r.max_rounds >= 1 and r.max_rounds * r.round_rollouts >= n,
              f">= 1, with max_rounds * round_rollouts >= rollouts_per_prompt = {n} (a full group)"),
             ("rollout_budget", cfg.rollout_budget >= 0, ">= 0 (0: run `steps` steps)"),
             ("eval_every_rollouts", cfg.eval_every_rollouts >= 0, ">= 0 (0: off)")]
    for key, ok, rule in rules:
        if not ok:
            section, _, name = key.rpartition(".")
            raise ConfigError(f"config key '{key}' = {getattr(getattr(cfg, section) if section else cfg, name)} "
                              f"must be {rule}")
    if d.gen_batch_size and d.gen_batch_size < cfg.prompts_per_step:
        raise ConfigError(f"config key 'dapo.gen_batch_size' = {d.gen_batch_size} must be 0 or >= prompts_per_step "
                          f"= {cfg.prompts_per_step} (a generation batch draws at least a step's prompts)")


def _check(cfg: Config) -> None:
    """Inconsistent values stop the run here, each message naming its key."""
    flat = to_dict(cfg)
    for key, allowed in CHOICES.items():
        section, _, name = key.rpartition(".")
        value = flat[section][name] if section else flat[name]
        if value not in allowed:
            raise ConfigError(f"config key '{key}' = {value!r}; choose one of {', '.join(allowed)}")
    positive = ["steps", "prompts_per_step", "rollouts_per_prompt", "mini_batches", "micro_batch_size",
                "logprob_chunk", "eval_prompts", "eval_samples", "train_pool", "rollout.max_new_tokens",
                "rollout.max_prompt_tokens", "warmup.batch_size", "warmup.check_every",
                "warmup.fine_check_every"]
    for key in positive:
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {value}")
    for key in ("sample_every", "samples_per_step"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {getattr(cfg, key)}")
    r, a, o = cfg.rollout, cfg.allocator, cfg.optim
    if r.max_rows < 0:
        raise ConfigError(f"config key 'rollout.max_rows' must be >= 0 (0 = auto), got {r.max_rows}")
    if not 0.0 < r.temperature:
        raise ConfigError(f"config key 'rollout.temperature' must be > 0, got {r.temperature}")
    if not 0.0 < r.top_p <= 1.0:
        raise ConfigError(f"config key 'rollout.top_p' must be in (0, 1], got {r.top_p}")
    if cfg.rollouts_per_step % cfg.mini_batches:
        raise ConfigError(f"config key 'mini_batches' = {cfg.mini_batches} must divide the rollout budget "
                          f"prompts_per_step * rollouts_per_prompt = {cfg.rollouts_per_step}")
    if a.n_min < 1 or a.n_min > a.n_max:
        raise ConfigError(f"config keys 'allocator.n_min' = {a.n_min} and 'allocator.n_max' = {a.n_max}: "
                          "need 1 <= n_min <= n_max")
    _check_methods(cfg)
    if cfg.allocation in ("dynamo", "oracle") and not a.n_min <= cfg.rollouts_per_prompt <= a.n_max:
        raise ConfigError(f"config key 'rollouts_per_prompt' = {cfg.rollouts_per_prompt}: the step's budget P * n = "
                          f"{cfg.prompts_per_step * cfg.rollouts_per_prompt} rollouts cannot be spread with every prompt "
                          f"in [allocator.n_min, allocator.n_max] = [{a.n_min}, {a.n_max}] (it needs n between them): "
                          f"lower allocator.n_min to {cfg.rollouts_per_prompt} or less, or use allocation=uniform")
    for key, ok, rule in (("mastered", a.mastered > 0, "> 0 (above 1 turns the mastered rule off)"),
                          ("floor", a.floor > 0, "> 0"), ("window", a.window >= 2, ">= 2 rollouts"),
                          ("groups", a.groups >= 1, ">= 1 visit"), ("decay", 0 < a.decay < 1, "strictly between 0 and 1")):
        if not ok:
            raise ConfigError(f"config key 'allocator.{key}' = {getattr(a, key)} must be {rule}")
    for key in ("window", "decay", "groups"):  # a memory's length set without that memory would do nothing
        if getattr(a, key) != getattr(AllocatorConfig, key) and a.memory != key:
            raise ConfigError(f"config key 'allocator.{key}' = {getattr(a, key)} acts only with allocator.memory={key}, "
                              f"and allocator.memory is {a.memory!r}: add allocator.memory={key}")
    if a.prior and (len(a.prior) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
                                                 for x in a.prior)):
        raise ConfigError(f"config key 'allocator.prior' = {a.prior!r}: give two pseudo-counts [a, b], both > 0 "
                          "(e.g. [1, 1], a uniform prior), or [] for none")
    if a.exploration_budget < 0 or a.oracle_samples < 1:
        raise ConfigError("config keys 'allocator.exploration_budget' >= 0 and 'allocator.oracle_samples' >= 1 required")
    if not 0 <= cfg.loss.eps_low < 1 or cfg.loss.eps_high < 0 or cfg.loss.dual_clip <= 1:
        raise ConfigError("config keys 'loss.eps_low' in [0, 1), 'loss.eps_high' >= 0, 'loss.dual_clip' > 1 "
                          f"required, got {cfg.loss.eps_low}, {cfg.loss.eps_high}, {cfg.loss.dual_clip}")
    ls = cfg.loss
    if (ls.entropy_coef < 0 or ls.entropy_adv_alpha < 0 or ls.entropy_adv_kappa <= 1 or not 0 < ls.fork_top <= 1
            or not 0 <= ls.clip_cov_ratio < 1 or not 0 <= ls.kl_cov_ratio < 1 or ls.kl_cov_coef < 0
            or ls.clip_cov_low >= ls.clip_cov_high):
        raise ConfigError("config keys 'loss.entropy_coef' >= 0, 'loss.entropy_adv_alpha' >= 0, "
                          "'loss.entropy_adv_kappa' > 1, 'loss.fork_top' in (0, 1], 'loss.clip_cov_ratio' and "
                          "'loss.kl_cov_ratio' in [0, 1), 'loss.kl_cov_coef' >= 0, 'loss.clip_cov_low' < "
                          "'loss.clip_cov_high' required")
    needs_rows = needs_every_row(ls)
    if cfg.skip_zero_advantage == "true" and needs_rows:
        raise ConfigError(f"skip_zero_advantage = true cannot be used with {needs_rows[0]}: that method's loss "
                          "term or token selection depends on every row, including those with advantage 0 "
                          "(use auto, which keeps them)")
    if o.lr <= 0 or o.grad_clip <= 0 or o.warmup_steps < 0:
        raise ConfigError("config keys 'optim.lr' and 'optim.grad_clip' must be > 0, 'optim.warmup_steps' >= 0")
    if cfg.dtype == "bfloat16":
        raise ConfigError("config key 'dtype' = 'bfloat16' would keep the weights and AdamW's moments in bfloat16, "
                          "where an update much smaller than a weight rounds away (most weights never move at the "
                          "paper's lr of 1e-6); keep dtype=float32 and compute in bfloat16 with torchrun (one GPU too: "
                          "--nproc_per_node 1) and parallel.mixed_precision=bf16: FSDP2 keeps float32 master weights "
                          "and AdamW state")
    m = cfg.modulation
    if not 0 <= m.lambda_min <= 1 or m.alpha < 0 or m.gamma <= 0 or m.diagnose_every < 0:
        raise ConfigError("config keys 'modulation.lambda_min' in [0, 1], 'modulation.alpha' >= 0, "
                          "'modulation.gamma' > 0, 'modulation.diagnose_every' >= 0 required")
    check_loggers(cfg.loggers)


LOGGERS = ("tensorboard", "wandb")  # the trackers config key `loggers` may name (dynamo/trackers.py)


def check_loggers(names: list) -> None:
    """`loggers` names known trackers, each once (whether each one is installed: dynamo.trackers.check_installed)."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown or len(set(names)) < len(names):
        raise ConfigError(f"config key 'loggers' = {names!r}: give a list drawn from {', '.join(LOGGERS)}, each once, "
                          "e.g. loggers=[tensorboard] (or [] for metrics.jsonl only)")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def load_config(argv: list[str], cls=None, check=None):
    """Parse `[--config FILE] [key=value ...]` into a checked Config (or another config dataclass
    `cls` with its own `check` function, e.g. eval.py's)."""
    cfg, path, overrides = (cls or Config)(), None, []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config", "-c"):
            if not args:
                raise ConfigError("--config needs a YAML file path")
            path = args.pop(0)
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif "=" in arg:
            overrides.append(arg[2:] if arg.startswith("--") else arg)
        else:
            hint = (f" (write {arg.lstrip('-')}={args[0]}: a key and its value in one argument)"
                    if arg.startswith("--") and args and "=" not in args[0] and not args[0].startswith("-") else "")
            raise ConfigError(f"cannot read argument {arg!r}: use --config FILE and key=value overrides{hint}")
    if path is not None:
        for file, doc in _read_yaml_chain(path):
            try:
                _apply_preset(cfg, doc.pop("preset", None))
                for k, v in doc.items():
                    _set(cfg, k, v)
            except ConfigError as e:  # name the file: it may be a base the command line never mentioned
                raise ConfigError(f"in {file}: {e}") from None
    keys = [item.split("=", 1)[0] for item in overrides]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice:
        given = [item.split("=", 1)[1] for item in overrides if item.split("=", 1)[0] == twice]
        raise ConfigError(f"config key '{twice}' is given {len(given)} times on the command line "
                          f"({', '.join(map(repr, given))}): give it once")
    for item in overrides:
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if key == "preset":
            _apply_preset(cfg, value)
        else:
            _set(cfg, key, value)
    if hasattr(cfg, "out_dir") and not cfg.out_dir:
        cfg.out_dir = os.path.join("runs", os.path.splitext(os.path.basename(path))[0] if path else "default")
    (check or _check)(cfg)
    return cfg


def _read_yaml_chain(path: str, depth: int = 0, named_by: str | None = None) -> list[tuple[str, dict]]:
    """(file, its YAML mapping) for `path`, preceded by the files it names as `base:` (relative to it)."""
    if depth > 8:
        raise ConfigError(f"config file {path}: 'base' chain deeper than 8 files (a cycle?)")
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except FileNotFoundError:
        where = (f" (named by 'base:' in {named_by}; a base path is relative to the file that names it)"
                 if named_by else "")
        raise ConfigError(f"config file not found: {path}{where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML in {path}: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    base = doc.pop("base", None)
    if base is None:
        return [(path, doc)]
    return _read_yaml_chain(os.path.join(os.path.dirname(path), str(base)), depth + 1, path) + [(path, doc)]


def _apply_preset(cfg, name) -> None:
    if name is None or name == "":  # "" = none, the default --help shows
        return
    if name not in PRESETS:
        raise ConfigError(f"config key 'preset' = {name!r}; choose one of {', '.join(PRESETS)}")
    for k, v in PRESETS[name].items():
        _set(cfg, k, v)


def _field_notes(cls) -> dict[str, str]:
    """{field: the comment after it in the class body}: the meanings --help prints, kept beside the fields."""
    import inspect
    import re
    notes, last = {}, None
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^#]*?(?:#\s*(.*))?$", line)
        if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            last = m.group(1)
            notes[last] = m.group(2) or ""
        elif last and re.match(r"\s+#\s*(.*)$", line) and not line.strip().startswith("# --"):  # continues it
            # (a line starting with "# --" is a note on the fields below it, not part of a field's meaning)
            notes[last] = (notes[last] + " " + line.strip()[1:].strip()).strip()
    return notes


def help_rows(cls=None, choices=None, values=None, preset: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, "type = value (choices)", meaning) for every key of a config dataclass; the value is the
    built-in default, or the one in `values` (a resolved config) when given."""
    rows, choices = [], CHOICES if cls is None else (choices or {})

    def walk(c, prefix, inst):
        notes = _field_notes(c)
        for f in dataclasses.fields(c):
            value = getattr(inst, f.name)
            if dataclasses.is_dataclass(value):
                walk(type(value), prefix + f.name + ".", value)
                continue
            typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            choice = choices.get(prefix + f.name)
            rows.append((prefix + f.name, f"{typ} = {json.dumps(value)}"
                         + (f" ({'|'.join(choice)})" if choice else ""), notes.get(f.name, "")))

    walk(cls or Config, "", values if values is not None else (cls or Config)())
    if cls is None:  # not a field: a named bundle of overrides, applied before the others
        rows.append(("preset", f"str = {json.dumps(preset)} ({'|'.join(PRESETS)})", "apply a named bundle of keys "
                     "first ('' = none): " + "; ".join(f"{n} = {', '.join(f'{k}={v}' for k, v in p.items())}"
                                                      for n, p in PRESETS.items())))
    return rows


def help_text(cls=None, choices=None, values=None, marks: dict | None = None, preset: str = "") -> str:
    """--help's table: one key a line (meanings past column 50, on the next line when the key is long); `marks`
    ({key: one character}) flags a key in the first column, e.g. where its value comes from."""
    lines, marks = [], marks or {}
    for key, typ, note in help_rows(cls, choices, values, preset):
        head = f"{marks.get(key, ' ')} {key} {typ}"
        lines.append(head.ljust(50) + " " + note if len(head) < 50 else head + "\n" + " " * 51 + note)
    return "\n".join(lines)


# What `python train.py` runs when the command line names no config file: the main job (docs/CONFIG.md,
# "No --config: the main job"). The dataclasses' built-in values above are only the base every file starts from.
RUN_FILE = "run.json"  # out_dir/run.json: the run's id and name, fixed when it starts, kept when it resumes
MAIN_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.yaml")


def config_path(argv: list[str]) -> str | None:
    """The config file a command line names (--config FILE, -c FILE or --config=FILE), or None."""
    return next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")),
                next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None))


def with_main_config(argv: list[str]) -> list[str]:
    """`argv`, with `--config configs/default.yaml` in front when it names no config file (train.py's and
    `python -m dynamo.config`'s command lines): a bare `python train.py` is the main job, into runs/default."""
    if config_path(argv) is not None:
        return list(argv)
    rel = os.path.relpath(MAIN_CONFIG)
    return ["--config", MAIN_CONFIG if rel.startswith("..") else rel, *argv]


def _file_keys(path: str) -> tuple[set[str], str]:
    """(the dotted keys a config file and its bases set, presets' keys included; the preset it names, or "")."""
    keys, preset = set(), ""

    for _, doc in _read_yaml_chain(path):
        preset = doc.pop("preset", None) or preset
        for k, v in doc.items():  # a section's mapping sets each of its keys
            keys |= {f"{k}.{sub}" for sub in v} if isinstance(v, dict) else {k}
    return keys | set(PRESETS.get(preset, {})) | ({"preset"} if preset else set()), preset


def resolved_help(argv: list[str]) -> str:
    """--help's key table for train.py's command line `argv` (--help left out): every key with the value this command
    runs with, marked `*` where its config file (or a base it names) sets it and `+` where the command line does;
    unmarked keys have the built-in value of this file's dataclasses. A command line that does not load falls back to
    the built-in values, with its error."""
    args = with_main_config([a for a in argv if a not in ("-h", "--help")])
    path = config_path(args)
    try:
        cfg, (from_file, preset) = load_config(args), _file_keys(path)
    except ConfigError as e:
        return (f"(this command line does not load: {e}; the built-in values follow)\n"
                + help_text(marks={}))
    overrides = [a[2:] if a.startswith("--") else a for a in args if "=" in a and not a.startswith("--config")]
    from_cli = {a.split("=", 1)[0] for a in overrides}
    preset = next((a.split("=", 1)[1] for a in overrides if a.startswith("preset=")), preset)
    marks = {**{k: "*" for k in from_file}, **{k: "+" for k in from_cli}}
    return (f"config keys (type = the value this command runs with; * set by {path} or a file it names as base, "
            "+ set on the command line, unmarked: built in, dynamo/config.py):\n"
            + help_text(values=cfg, marks=marks, preset=preset))


def run_identity(argv: list[str], cfg) -> dict:
    """What identifies a run in its summary (and names it in the trackers): its id and name, config file, hash of
    the resolved config, seeds, steps, commit."""
    import hashlib
    import subprocess
    path = config_path(with_main_config(argv))  # no --config: the main job's file
    try:  # the run's id and name (dynamo/trackers.py writes them when the run starts; trackers use them too)
        with open(os.path.join(cfg.out_dir, RUN_FILE)) as f:
            run = json.load(f)
    except (OSError, ValueError):
        run = {}
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"run_id": run.get("id"), "run_name": run.get("name"), "config_file": path,
            "config_sha256": hashlib.sha256(dump(cfg).encode()).hexdigest()[:16],
            "seed": cfg.seed, "rl_seed": cfg.rl_seed if cfg.rl_seed >= 0 else cfg.seed, "steps": cfg.steps,
            "commit": commit, "uncommitted_changes": dirty, "overrides": [a for a in argv if "=" in a
                                                                          and not a.startswith("--config")]}


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


if __name__ == "__main__":  # the resolved config, as train.py prints and saves it: python -m dynamo.config [--config X]
    try:
        print(dump(load_config(with_main_config(sys.argv[1:]))), end="")
    except ConfigError as e:
        sys.exit(f"config error: {e}")
