"""Everything distributed lives here. With one process (plain `python`) every function is a no-op.

Launch: `torchrun --nproc_per_node K train.py ...` (gloo on CPU, nccl on GPU). Prompts are split by
rank; each rank computes the gradient of its share of a loss whose denominator already counts all
ranks (grpo.token_weights), so gradients are summed over ranks, never averaged.

Under torchrun the policy is sharded with FSDP2 (`shard`): every decoder layer and the root own a
1/K slice of their parameters, gradients and AdamW state, and gather the full weights only around
their own forward and backward. Code that runs the model outside its `forward` goes through
`generate` or `run_as_forward`, which FSDP knows about. `parallel.fsdp: false` keeps a full replica
per rank instead and sums gradients in one flat all-reduce (`sum_gradients`).
"""
from __future__ import annotations

import contextlib
import os
import types

import torch
import torch.distributed as dist


def init() -> tuple[int, int]:
    """(rank, world_size); starts the process group when launched by torchrun (any world size)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
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
    """On a copy, on the device the backend reduces on (NCCL: this rank's GPU), returned where x was."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else x.device
    y = x.detach().to(device, copy=True)
    dist.all_reduce(y, op=op)
    return y.to(x.device)


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


def shard(model: torch.nn.Module, *, bf16: bool) -> None:
    """FSDP2 over all ranks, in place: each decoder layer (the classes the model lists as
    `_no_split_modules`), then the root (embeddings, final norm, LM head). bf16: parameters are
    gathered and computed in bfloat16, gradients reduced in float32, AdamW keeps float32 shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    layers = [m for m in model.modules() if type(m).__name__ in (model._no_split_modules or [])]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder-layer class in _no_split_modules: cannot shard it")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum, not mean: the loss already divides by all ranks' tokens
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    model.run_as_forward = types.MethodType(lambda self, fn, *args, **kwargs: fn(*args, **kwargs), model)
    register_fsdp_forward_method(model, "run_as_forward")
    register_fsdp_forward_method(model, "generate")


def is_sharded(model: torch.nn.Module) -> bool:
    return hasattr(model, "run_as_forward")


def run_as_forward(model: torch.nn.Module, fn, *args, **kwargs):
    """fn(*args, **kwargs) as if it were `model`'s forward: under FSDP2 the root's parameters (embeddings,
    LM head) are gathered for it and its backward reduces their gradients. A plain call otherwise."""
    return model.run_as_forward(fn, *args, **kwargs) if is_sharded(model) else fn(*args, **kwargs)


@contextlib.contextmanager
def gathered(model: torch.nn.Module, enabled: bool = True):
    """Keep every FSDP module's full parameters after its first forward until the block ends (one
    all-gather per layer for a whole `generate` instead of one per token), then shard them again."""
    if not (enabled and is_sharded(model)):
        yield
        return
    from torch.distributed.fsdp import FSDPModule
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)  # FSDP2's defaults: the root keeps its


def grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip gradients to a global norm (over all ranks' shards) and return the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2


def sum_gradients(model: torch.nn.Module) -> None:
    """Replicas (parallel.fsdp false): sum gradients over ranks in one flat buffer, one collective per
    optimiser step. Sharded models reduce their own gradients in backward."""
    if not active() or is_sharded(model):
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
