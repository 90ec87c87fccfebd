"""Everything distributed lives here. With one process every function is a cheap no-op.

Launch: `torchrun --standalone --nproc_per_node K train.py ...` (gloo on CPU, nccl on GPU).
Data parallelism is explicit: prompts are split by rank, each rank computes the gradient of its share
of a loss whose denominator counts all ranks (grpo.token_weights), and gradients are summed.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> tuple[int, int]:
    """(rank, world_size); starts the process group when launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank(), world_size()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks (a new tensor; the input is untouched)."""
    return _all_reduce(x, dist.ReduceOp.SUM) if active() else x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Maximum of a tensor over ranks (a new tensor; the input is untouched)."""
    return _all_reduce(x, dist.ReduceOp.MAX) if active() else x


def _all_reduce(x: torch.Tensor, op) -> torch.Tensor:
    x = x.clone()
    dist.all_reduce(x, op=op)
    return x


def all_gather_objects(obj) -> list:
    """One picklable object from every rank, in rank order."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sum_gradients(model: torch.nn.Module) -> None:
    """Sum gradients over ranks in one flat buffer (one collective per optimiser step)."""
    if not active():
        return
    for p in model.parameters():  # every rank must send the same layout
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in model.parameters()]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if active():
        dist.destroy_process_group()
