"""The memory plan: what one GPU must hold at the two peaks of a step, estimated before any work.

Generation holds the weights (gathered in full while generating), AdamW's moments (they stay where they are),
the KV cache of one `generate` call (rows x positions x 2 x layers x kv_heads x head_dim x bytes) and a decode
step's float32 logits; gradients are freed before it. The update holds weights, gradients and AdamW's moments in
float32 (16 bytes a parameter, over the ranks under FSDP2) and the activations one micro-batch saves for its
backward. The activation count is an estimate from a Qwen2/Llama decoder layer's saved tensors (per token and
layer: 10 hidden-size vectors, 2 key/value-size vectors and 4 intermediate-size vectors); with activation
checkpointing a layer keeps only its input, plus one layer's full set during its recomputation. Attention scores
are not counted: PyTorch's SDPA kernels do not keep them.

`plan(...)` prints as one line at start (train.py) and `check` stops a run whose plan exceeds the GPU's memory,
naming the setting to change; `rollout_rows` sizes the rows per generate call for `rollout.max_rows: 0` (auto).
"""
from __future__ import annotations

import dataclasses

GB = 1e9
HEADROOM = 0.9  # the share of the GPU's memory a plan may use (the CUDA context, allocator fragmentation)


@dataclasses.dataclass
class Shape:
    """What the plan needs of a model: its config's sizes and its parameter count."""
    params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def of(cls, config, params: int) -> Shape:
        return cls(params, config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                   config.num_attention_heads, getattr(config, "num_key_value_heads", None)
                   or config.num_attention_heads, config.vocab_size)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)


def kv_bytes_per_token(shape: Shape, dtype_bytes: int) -> int:
    """Keys and values of every layer for one token."""
    return 2 * shape.layers * shape.kv_dim * dtype_bytes


def activation_bytes_per_token(shape: Shape, dtype_bytes: int, checkpointing: bool) -> float:
    """What a micro-batch's forward keeps for its backward, per token (see the module docstring)."""
    layer = (10 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate) * dtype_bytes
    if checkpointing:
        return shape.layers * shape.hidden * dtype_bytes + layer
    return shape.layers * layer


@dataclasses.dataclass
class Plan:
    """Estimated bytes at the two peaks of a step, per GPU."""
    weights: float  # during generation (gathered in full)
    optimizer: float  # AdamW's moments, resident throughout
    kv_cache: float
    logits: float
    training_state: float  # weights + gradients + moments during the update (per rank under FSDP2)
    activations: float
    rows: int
    positions: int
    micro_tokens: int

    @property
    def generation(self) -> float:
        return self.weights + self.optimizer + self.kv_cache + self.logits

    @property
    def update(self) -> float:
        return self.training_state + self.activations

    @property
    def peak(self) -> float:
        return max(self.generation, self.update)

    def line(self) -> str:
        return (f"memory plan (estimate per GPU): generation {size(self.generation)} (weights "
                f"{size(self.weights)} + AdamW {size(self.optimizer)} + KV cache {size(self.kv_cache)} for "
                f"{self.rows} rows x {self.positions} positions + logits {size(self.logits)}); update "
                f"{size(self.update)} (weights, gradients, AdamW {size(self.training_state)} + activations "
                f"{size(self.activations)} for {self.micro_tokens} tokens a micro-batch)")


def size(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"


def plan(shape: Shape, *, rows: int, positions: int, micro_batch_size: int, world: int = 1,
         compute_bytes: int = 4, checkpointing: bool = False) -> Plan:
    """The plan of one rank: `rows` per generate call of `positions` (longest prompt + max_new_tokens) each,
    micro-batches of `micro_batch_size` rows as wide; `compute_bytes` 2 under bf16 mixed precision."""
    p = shape.params
    return Plan(weights=p * compute_bytes, optimizer=8 * p / world,
                kv_cache=rows * positions * kv_bytes_per_token(shape, compute_bytes),
                logits=rows * shape.vocab * 4, training_state=16 * p / world,
                activations=micro_batch_size * positions * activation_bytes_per_token(shape, compute_bytes,
                                                                                      checkpointing),
                rows=rows, positions=positions, micro_tokens=micro_batch_size * positions)


def rollout_rows(shape: Shape, *, positions: int, memory: float, world: int = 1, compute_bytes: int = 4,
                 optimizer: bool = True) -> int:
    """The most rows one generate call can take within HEADROOM of `memory`, next to the weights and (when
    training) AdamW's moments; at least 1."""
    free = HEADROOM * memory - shape.params * compute_bytes - (8 * shape.params / world if optimizer else 0)
    per_row = positions * kv_bytes_per_token(shape, compute_bytes) + shape.vocab * 4
    return max(1, int(free // per_row))


def check(p: Plan, memory: float, max_rows: int) -> None:
    """Stop (ValueError) when the plan exceeds HEADROOM of the GPU's `memory`, naming what to change."""
    limit = HEADROOM * memory
    if p.peak <= limit:
        return
    if p.generation >= p.update:
        fix = (f"lower rollout.max_rows (now {max_rows or 'auto'}: {p.rows} rows a generate call) or "
               "rollout.max_new_tokens")
    else:
        fix = "lower micro_batch_size, or set activation_checkpointing=true, or use more GPUs (FSDP2 shards the state)"
    raise ValueError(f"the memory plan needs {p.peak / GB:.1f} GB at its peak and the GPU has {memory / GB:.1f} GB "
                     f"({HEADROOM:.0%} usable): {fix}. {p.line()}")
