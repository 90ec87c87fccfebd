"""Starting a run (train.py's setup): every input is checked before any work, then the policy, the data and the
run state come up, fresh or from a checkpoint.

`read_config` turns the command line into a checked Config (or prints --help); `start` claims out_dir, loads
the problems, the model and its tokenizer (or the embedded default's warmed start), renders the prompts, moves
and shards the policy, and returns the RunState, restored when the run resumes. Bad input stops the run here
with one message naming what to change, never a traceback an hour in.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import warnings

import torch

from dynamo import checkpoint, distributed as dist, memory, trackers
from dynamo.config import (ConfigError, check_machine_and_paths, dump, load_config, resolved_help, to_dict,
                           with_main_config)
from dynamo.data import check_context, drop_long_prompts, load_problems, read_benchmarks, render
from dynamo.evaluate import measure_pass_rates
from dynamo.model import load_pretrained
from dynamo.run_state import RunState
from dynamo.warmup import WarmupError, warm_up


@dataclasses.dataclass
class Data:
    """The run's problems and their rendered prompts."""
    pool: list  # training problems (dynamo.task.Problem), revisited every epoch
    pool_prompts: list  # each rendered with the config's template
    heldout: list  # the built-in task's held-out split ([] for a data file)
    heldout_prompts: list
    benchmarks: dict  # eval_data: {name: problems}, evaluated during training
    bench_prompts: dict  # {name: prompts}
    rows_per_call: int = 0  # most rows per generate call (rollout.max_rows, auto resolved by the memory plan)


def read_config(argv: list[str], usage: str):
    """The checked config of `argv`, printed (a bad one exits with its message), or None after printing --help.
    Starts the process group under torchrun."""
    if {"-h", "--help"} & set(argv):
        print("usage: python train.py [--config FILE] [key=value ...]\n" + usage + "\nWithout --config the run is "
              "the main job, configs/default.yaml, into runs/default (docs/CONFIG.md, \"No --config: the main job\"). "
              "--help after --config FILE shows that file's values.\n\n" + resolved_help(argv) + "\n\nThe resolved "
              "values of a config: python -m dynamo.config [--config FILE] [key=value ...]")
        return None
    try:
        cfg = load_config(with_main_config(argv))  # no --config: the main job's file
        trackers.check_installed(cfg.loggers)  # an optional tracker named but not installed stops the run here
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    world = dist.init()[1]
    if cfg.prompts_per_step % world:
        sys.exit(f"config error: prompts_per_step = {cfg.prompts_per_step} must be divisible by the "
                 f"{world} ranks (each rank gets the same share)")
    if (cfg.dapo.gen_batch_size or cfg.prompts_per_step) % world:
        sys.exit(f"config error: dapo.gen_batch_size = {cfg.dapo.gen_batch_size} must be divisible by the {world} ranks")
    per_rank = cfg.prompts_per_step // world * cfg.rollouts_per_prompt
    if per_rank % cfg.mini_batches:  # each rank splits its own rollouts into the mini-batches
        sys.exit(f"config error: mini_batches = {cfg.mini_batches} must divide each rank's rollouts, "
                 f"prompts_per_step / {world} ranks * rollouts_per_prompt = {per_rank}")
    try:
        check_machine_and_paths(cfg)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    dist.print0(dump(cfg))  # the resolved config, as config.yaml will hold it
    return cfg


def memory_plan(cfg, model, tokenizer, data: Data, device: torch.device, *, compute_bytes: int, log) -> int:
    """Print the memory plan (dynamo/memory.py); on CUDA stop when it cannot fit. Returns the rows per generate
    call: rollout.max_rows, or for 0 (auto) all of a rank's rows on CPU and as many as fit on CUDA."""
    world = dist.world_size()
    shape = memory.Shape.of(model.config, sum(p.numel() for p in model.parameters()))
    positions = max(len(ids) for ids in tokenizer(data.pool_prompts)["input_ids"]) + cfg.rollout.max_new_tokens
    rows = cfg.prompts_per_step // world * cfg.rollouts_per_prompt
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    per_call = cfg.rollout.max_rows or (memory.rollout_rows(shape, positions=positions, memory=total, world=world,
                                                            compute_bytes=compute_bytes) if total else 0)
    plan = memory.plan(shape, rows=min(rows, per_call or rows), positions=positions, world=world,
                       micro_batch_size=cfg.micro_batch_size, compute_bytes=compute_bytes,
                       checkpointing=cfg.activation_checkpointing)
    log(plan.line())
    if total:
        memory.check(plan, total, cfg.rollout.max_rows)
    return per_call


def device_of(cfg) -> torch.device:
    return torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                        else "cpu")


def start(cfg, device: torch.device, log) -> tuple[RunState | None, Data | None]:
    """The run state and data, every input checked first; (None, None) when out_dir holds this run, finished."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    try:
        if dist.is_main():
            checkpoint.check_writable(cfg.out_dir)
        resume, saved = checkpoint.claim_out_dir(cfg, log)  # checked before anything is loaded from it
        dist.barrier()  # rank 0 may have removed an earlier run (overwrite=true)
        if saved:
            checkpoint.check_resumable(resume, saved, to_dict(cfg))
        spent = cfg.rollout_budget and saved and saved.get("method", {}).get("generated", 0) >= cfg.rollout_budget
        if saved and (saved["step"] == cfg.steps or spent):  # its logs, summary and final weights stay as they are
            log(f"the run in {cfg.out_dir} already finished all {cfg.steps} steps ({resume}): nothing to do; "
                "raise steps to continue it" if not spent else f"the run in {cfg.out_dir} already generated "
                f"{saved['method']['generated']} rollouts of rollout_budget = {cfg.rollout_budget} ({resume}): "
                "nothing to do; raise rollout_budget to continue it")
            return None, None
        pool, heldout = load_problems(cfg)
        benchmarks = read_benchmarks(cfg.eval_data)  # validation sets, {name: problems}
        torch.manual_seed(cfg.seed)
        if resume:  # the policy (and its tokenizer) come back from the checkpoint
            model, tokenizer = load_pretrained(resume, dtype, check=False)  # checked above
        elif cfg.model == "tiny":  # the embedded default: warmed up once on rank 0, cached, loaded by all
            if dist.is_main():
                warm_up(cfg, torch.device("cpu"), log=log)
            dist.barrier()
            model, tokenizer, _ = warm_up(cfg, torch.device("cpu"), log=lambda *a: None)
        else:
            model, tokenizer = load_pretrained(cfg.model, dtype)
        pool = drop_long_prompts(cfg, pool, tokenizer, log)
        data = Data(pool, [render(p, cfg.template, tokenizer) for p in pool],
                    heldout, [render(p, cfg.template, tokenizer) for p in heldout], benchmarks,
                    {name: [render(p, cfg.template, tokenizer) for p in probs] for name, probs in benchmarks.items()})
        for what, prompts in [("the training data", data.pool_prompts), ("the held-out split", data.heldout_prompts),
                              *((f"eval_data {name!r}", prompts) for name, prompts in data.bench_prompts.items())]:
            check_context(prompts, what, tokenizer, cfg.rollout.max_new_tokens, model)
    except (OSError, ValueError, WarmupError) as e:
        sys.exit(f"error: {e}")
    if dist.is_main():
        with open(os.path.join(cfg.out_dir, "config.yaml"), "w") as f:
            f.write(dump(cfg))
    if device.type == "cuda":  # float32 matmuls on TF32 tensor cores unless tf32=false
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    model.to(device=device, dtype=dtype).train()
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = cfg.parallel.mixed_precision
    bf16 = dist.active() and cfg.parallel.fsdp and (mp == "bf16" or (mp == "auto" and device.type == "cuda"))
    if dist.active() and cfg.parallel.fsdp:  # under torchrun: FSDP2 over all ranks (python train.py: plain)
        dist.shard(model, bf16=bf16)
    try:
        data.rows_per_call = memory_plan(cfg, model, tokenizer, data, device, compute_bytes=2 if bf16 else 4, log=log)
    except ValueError as e:
        sys.exit(f"error: {e}")
    state = RunState.fresh(cfg, model, tokenizer, len(pool))
    # The schedule counts RL steps, so it steps after a step whose optimiser step was skipped (non-finite gradient
    # norm) too; after a skipped first step PyTorch would take that for a misordered call and warn.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before "
                            r"`optimizer\.step\(\)`")
    if saved:
        try:
            state.restore(resume, saved, log)  # AdamW's state, read as data only
        except ValueError as e:
            sys.exit(f"error: {e}")
    elif cfg.allocation == "oracle":
        state.oracle = measure_pass_rates(cfg, model, tokenizer, pool, data.pool_prompts)
    return state, data
