"""The run state: everything a checkpoint restores, in one object (step 8 of train.py).

`RunState.save` and `RunState.restore` are the only places that list its fields, so a new field is one line in
the class and one in each of them. The files themselves (policy in Hugging Face format, AdamW's shards,
trainer_state.pt, written atomically) are dynamo/checkpoint.py's business. The optimiser step lives here too,
because its counters of skipped (non-finite) steps are part of the state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys

import torch

from dynamo import checkpoint, distributed as dist
from dynamo.allocator import PromptStats
from dynamo.collect import Method
from dynamo.config import to_dict
from dynamo.data import PromptOrder


@dataclasses.dataclass
class RunState:
    model: torch.nn.Module  # the policy (sharded under FSDP2)
    tokenizer: object
    optimizer: torch.optim.Optimizer  # AdamW
    scheduler: torch.optim.lr_scheduler.LRScheduler  # linear warm-up, then constant (§6)
    order: PromptOrder  # position in the epoch-wise shuffled prompt order
    prompt_stats: PromptStats  # per-prompt (n, k) per visit: the allocator's only state (§2)
    method: Method  # how a step's groups are collected (allocation); its state: rollouts so far, GRESO's p's, ...
    step: int = 0  # the last finished RL step
    bad_steps: int = 0  # consecutive optimiser steps skipped for a non-finite gradient norm
    skipped: int = 0  # all such steps so far
    first_eval: dict | None = None  # the held-out evaluation at step 0 (summary.json compares the end with it)
    first_benchmarks: dict | None = None  # the eval_data benchmarks at step 0
    oracle: list | None = None  # allocation: oracle, the true pass rates measured at the start

    @classmethod
    def fresh(cls, cfg, model, tokenizer, pool_size: int) -> RunState:
        """The state of a run that has not taken a step: AdamW, its schedule, the prompt order, empty statistics."""
        o = cfg.optim
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=(o.beta1, o.beta2))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, o.warmup_steps)))
        return cls(model, tokenizer, opt, sched, PromptOrder(pool_size, cfg.rl_seed_resolved),
                   PromptStats.from_config(cfg.allocator), Method.of(cfg))

    def save(self, cfg) -> str:
        """checkpoints/step-{step} (collective: every rank calls it); rank 0 writes the shared fields."""
        digests = dist.all_gather_objects(hashlib.sha256(repr(self.prompt_stats.state_dict()).encode()).hexdigest())
        if len(set(digests)) > 1:  # rank 0 saves the table for all: it must be every rank's table
            raise RuntimeError(f"step {self.step}: the ranks' per-prompt statistics differ ({digests})")
        state = {"step": self.step, "scheduler": self.scheduler.state_dict(), "order": self.order.state_dict(),
                 "prompt_stats": self.prompt_stats.state_dict(), "rng": dist.all_gather_objects(checkpoint.rng_state()),
                 "world_size": dist.world_size(), "bad_steps": self.bad_steps, "skipped": self.skipped,
                 "first_eval": self.first_eval, "first_benchmarks": self.first_benchmarks,
                 "oracle": self.oracle, "method": self.method.state_dict(), "config": to_dict(cfg)}
        return checkpoint.save(cfg.out_dir, self.step, self.model, self.tokenizer, self.optimizer, state,
                               keep=cfg.keep_checkpoints)

    def restore(self, path: str, state: dict, log) -> None:
        """Continue exactly from a checkpoint (`state`: its trainer_state.pt): everything the next step depends on
        (the sampling seeds derive from the step). The weights were loaded with the model."""
        rank, world = dist.rank(), dist.world_size()
        checkpoint.load_optimizer(path, self.model, self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.order.load_state_dict(state["order"])
        self.prompt_stats.load_state_dict(state["prompt_stats"])
        checkpoint.set_rng_state(state["rng"][rank if len(state["rng"]) == world else 0])
        self.step, self.bad_steps, self.skipped = state["step"], state["bad_steps"], state["skipped"]
        self.first_eval, self.first_benchmarks = state["first_eval"], state.get("first_benchmarks")  # older: none
        self.oracle = state.get("oracle")
        if "method" in state:  # older checkpoints: no rollouts counted before
            self.method.load_state_dict(state["method"])
        log(f"resumed from {path} at step {state['step']}")
        if state["world_size"] != world:  # each rank allocates within its own prompts (§3)
            log(f"note: the checkpoint was written by {state['world_size']} ranks and this run has {world}: "
                "it continues correctly, but not as the original run would have (allocation is per rank)")

    def optimizer_step(self, optim_cfg) -> float:
        """One AdamW step on the accumulated gradients: zero-fill the missing ones, sum over replicas, clip the
        global norm, step; a non-finite norm skips the step instead (and too many in a row stop the run).
        Returns the norm before clipping."""
        zero_missing_gradients(self.model)  # no row with a gradient: AdamW still steps (decay, momentum)
        dist.sum_gradients(self.model)  # replicas only: FSDP2 reduced (summed) the shards in backward
        norm = dist.grad_norm(self.model, optim_cfg.grad_clip)  # global over all ranks
        if torch.isfinite(norm):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)  # freed now: generation never holds them
            self.bad_steps = 0
        else:  # a non-finite gradient would poison the weights and AdamW's moments: skip it
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped, self.bad_steps = self.skipped + 1, self.bad_steps + 1
            if self.bad_steps >= optim_cfg.max_bad_steps:
                sys.exit(f"stopping: {self.bad_steps} consecutive optimiser steps had a non-finite gradient norm")
        return norm.item()


def zero_missing_gradients(model) -> None:
    """A mini-batch whose rows all had advantage 0 ran no backward: give every parameter the zero gradient
    it would have had, so that AdamW still applies weight decay and its momentum, as without skipping."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
