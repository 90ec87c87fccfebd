"""Token log-probs and full-vocabulary entropy of the responses, blocked over positions and
vocabulary (steps 5 and 7 of train.py).

The LM head is applied to one block of (response positions x vocabulary entries) at a time: the
log-sum-exp, the entropy and the log-prob of the sampled token are accumulated over the vocabulary blocks
online (each block rescaled to the running maximum), and the backward recomputes each block's logits
instead of storing them. So neither the forward nor the saved tensors ever hold an (N, T, V) float32 tensor
(at Qwen's 151,936-token vocabulary that tensor alone is 10+ GiB for a modest batch), nor even a (positions,
V) one: the transient memory is a few blocks of BLOCK_BYTES whatever the batch and the vocabulary, and a
block is wide enough that the matmuls run at full speed.
"""
from __future__ import annotations

import torch

from dynamo import distributed as dist
from dynamo.rollout import position_ids

# A block of float32 logits is at most this many bytes; the forward holds two such blocks, the backward one
# (plus a copy in the LM head's dtype when that is not float32).
BLOCK_BYTES = 16 << 20
# Vocabulary entries per block (fewer when the vocabulary is smaller): wide enough for efficient matmuls,
# narrow enough that the positions per block (BLOCK_BYTES / 4 / VOCAB_BLOCK = 1024) make them efficient too.
VOCAB_BLOCK = 4096


def block_shape(positions: int, vocab: int, chunk: int) -> tuple[int, int]:
    """(positions, vocabulary entries) per block: at most `chunk` positions and BLOCK_BYTES of float32."""
    cols = min(vocab, VOCAB_BLOCK)
    return max(1, min(positions, chunk, BLOCK_BYTES // (4 * cols))), cols


class _Head:
    """The LM head (weight (V, D), optional bias (V,)) on blocks of vocabulary entries x positions, computed
    into a reused buffer (a fresh tensor of this size costs page faults comparable to the arithmetic).

    Blocks are vocabulary-major, (c, C): the matmul weight-block @ hidden^T streams the weight as it lies, and
    the reductions over the vocabulary run down the columns, vectorised across positions.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float, rows: int, cols: int):
        self.weight, self.bias, self.temperature = weight, bias, temperature
        self.buffer = torch.empty(rows * cols, device=weight.device)  # float32 logits
        self.low = (torch.empty(rows * cols, dtype=weight.dtype, device=weight.device)
                    if weight.dtype != torch.float32 else None)  # the matmul's output in the head's dtype

    def logits(self, hidden: torch.Tensor, v0: int, v1: int) -> torch.Tensor:
        """(v1 - v0, C) float32 temperature-scaled logits, as sampled: linear in the head's dtype, then float32,
        then / temperature (the operations of F.linear(hidden, weight, bias).float() / temperature)."""
        shape = (v1 - v0, len(hidden))
        out = self.buffer[:shape[0] * shape[1]].view(shape)
        dest = out if self.low is None else self.low[:shape[0] * shape[1]].view(shape)
        if self.bias is None:
            torch.mm(self.weight[v0:v1], hidden.t(), out=dest)
        else:
            torch.addmm(self.bias[v0:v1, None], self.weight[v0:v1], hidden.t(), out=dest)
        if self.low is not None:
            out.copy_(dest)
        return out.div_(self.temperature) if self.temperature != 1.0 else out


def _targets_in(targets: torch.Tensor, v0: int, v1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row within the block (1, C), whether it is in the block (C,)) of each target, for vocabulary block
    [v0, v1): gathers and scatters with these need no host sync (nonzero would on a GPU)."""
    inside = (targets >= v0) & (targets < v1)
    return (targets - v0).clamp_(0, v1 - v0 - 1)[None, :], inside


class _Running:
    """Per-position sums over the vocabulary blocks seen so far, relative to the running maximum m:
    s = sum e^y and a = sum e^y y (and for expected_u s2 = sum e^2y, a2 = sum e^2y y), y = x - m."""

    def __init__(self, positions: int, second: bool, device: torch.device):
        zeros = [torch.zeros(positions, device=device) for _ in range(5 if second else 3)]
        self.target, self.s, self.a, *second_sums = zeros  # target: the target's logit, once its block is seen
        self.s2, self.a2 = second_sums if second else (None, None)
        self.m = torch.full((positions,), -torch.inf, device=device)

    def add(self, x: torch.Tensor, e: torch.Tensor) -> None:
        """Fold in a block of logits x (c, C) (overwritten), using e (c, C) as scratch."""
        m = torch.maximum(self.m, x.amax(0))  # (C,) new running maximum
        scale = (self.m - m).exp()  # (C,) rescales the old sums to m (0 before the first block)
        shift = (self.m - m).clamp_(min=-1e4)  # (C,) finite even before the first block, where the sums are 0
        self.m = m
        y = x.sub_(m)  # (c, C) <= 0
        # Relative to the new maximum an old term e^y' y' becomes e^(y' + shift) (y' + shift).
        self.a = (self.a + shift * self.s) * scale
        self.s = self.s * scale + torch.exp(y, out=e).sum(0)
        self.a += e.mul_(y).sum(0)
        if self.s2 is not None:
            self.a2 = (self.a2 + shift * self.s2) * scale ** 2
            self.s2 = self.s2 * scale ** 2
            y2 = y.mul_(2)  # e^2y = exp(2y), and sum e^2y y = sum e^2y 2y / 2
            self.s2 += torch.exp(y2, out=e).sum(0)
            self.a2 += e.mul_(y2).sum(0) / 2

    def results(self) -> tuple[torch.Tensor, ...]:
        """log-sum-exp, entropy, target log-prob (, expected_u): (C,) each."""
        log_s = self.s.log()
        mean_y = self.a / self.s  # E_pi[y] <= 0
        out = [self.m + log_s, log_s - mean_y, self.target - self.m - log_s]  # H = log s - E[y]: no cancellation
        if self.s2 is not None:
            # sum_v pi_v^2 (log pi_v + H) = sum_v pi_v^2 (y_v - E[y]) = (a2 - E[y] s2) / s^2
            out.append((self.a2 - mean_y * self.s2) / self.s ** 2)
        return tuple(out)


class _TokenStats(torch.autograd.Function):
    """Log-prob (differentiable), entropy (differentiable when asked) and expected_u (not) of each target
    under the LM head.

    forward keeps per position only the log-sum-exp (and the entropy); backward recomputes each block's
    logits and turns them in place into the gradient of the logits, g (onehot - pi) / temperature for the
    log-prob's gradient g, plus -gH pi (log pi + H) / temperature for the entropy's gH, then into the
    gradients of the hidden states and of the head's weight (and bias). Nothing of size (positions, V) is saved.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk: int, with_expected_u: bool,
                entropy_grad: bool = False):
        positions, vocab = hidden.shape[0], weight.shape[0]
        rows, cols = block_shape(positions, vocab, chunk)
        head = _Head(weight, bias, temperature, rows, cols)
        scratch = torch.empty(rows * cols, device=hidden.device)
        results = []
        for s in range(0, positions, rows):
            h, t = hidden[s:s + rows], targets[s:s + rows]
            run = _Running(len(h), with_expected_u, hidden.device)
            for v0 in range(0, vocab, cols):
                v1 = min(vocab, v0 + cols)
                x = head.logits(h, v0, v1)  # (c, C)
                row, inside = _targets_in(t, v0, v1)
                run.target = torch.where(inside, x.gather(0, row)[0], run.target)
                run.add(x, scratch[:x.numel()].view(x.shape))
            results.append(run.results())
        lse, entropy, logp, *eu = (torch.cat(r) for r in zip(*results))
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.temperature, ctx.rows, ctx.cols = temperature, rows, cols
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not as zeros
        eu = eu[0] if with_expected_u else entropy.new_empty(0)
        ctx.mark_non_differentiable(*((eu,) if entropy_grad else (entropy, eu)))
        return logp, entropy, eu

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, _grad_eu):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        rows, cols, vocab = ctx.rows, ctx.cols, weight.shape[0]
        head = _Head(weight, bias, ctx.temperature, rows, cols)
        # Every entry is written by the first block that reaches it (no zero fill: out= first, then += / addmm_).
        # The sums over blocks run in float32 whatever the parameters' dtype (bf16 sums over many vocabulary and
        # position blocks lose about 4x the precision of one bf16 matmul); cast once at the end.
        f32 = torch.float32
        grad_h = torch.empty_like(hidden, dtype=f32) if need_h else None
        grad_w = torch.empty_like(weight, dtype=f32) if need_w else None
        grad_b = torch.empty_like(bias, dtype=f32) if need_b else None
        if grad_logp is None:  # only the entropy is differentiated
            grad_logp = torch.zeros_like(lse)
        g = grad_logp.float() / ctx.temperature  # (T,) the logits' gradient is g (onehot - pi) [- gH pi (log pi + H)]
        gh = None if grad_entropy is None else grad_entropy.float() / ctx.temperature  # (T,)
        for s in range(0, len(hidden), rows):
            h, t, gc = hidden[s:s + rows], targets[s:s + rows], g[s:s + rows]
            for v0 in range(0, vocab, cols):
                v1 = min(vocab, v0 + cols)
                logp = head.logits(h, v0, v1).sub_(lse[s:s + rows])  # (c, C) log pi
                if gh is None:
                    grad = logp.exp_().mul_(-gc)  # (c, C) -g pi
                else:  # -pi (g + gH (log pi + H))
                    coef = torch.add(logp, entropy[s:s + rows]).mul_(gh[s:s + rows]).add_(gc)  # (c, C)
                    grad = logp.exp_().mul_(coef.neg_())
                row, inside = _targets_in(t, v0, v1)
                grad.scatter_add_(0, row, torch.where(inside, gc, 0.0)[None, :])  # g (onehot - pi)
                if need_h:  # (float32 inputs: .to is a no-op, the same products as before)
                    _accumulate(grad_h[s:s + rows], v0 == 0, grad.t(), weight[v0:v1].to(f32))
                if need_w:
                    _accumulate(grad_w[v0:v1], s == 0, grad, h.to(f32))
                if need_b:
                    _accumulate(grad_b[v0:v1], s == 0, grad.sum(1))
        cast = [(g, like) for g, like in ((grad_h, hidden), (grad_w, weight), (grad_b, bias))]
        grad_h, grad_w, grad_b = (None if g is None else g.to(like.dtype) for g, like in cast)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _accumulate(dest: torch.Tensor, first: bool, a: torch.Tensor, b: torch.Tensor | None = None) -> None:
    """dest = (first) or += a @ b, or a alone when b is None."""
    if b is None:
        dest.copy_(a) if first else dest.add_(a)
    elif first:
        torch.mm(a, b, out=dest)
    else:
        dest.addmm_(a, b)


def response_token_stats(model, input_ids, attention_mask, prompt_length: int, *, temperature: float = 1.0,
                         chunk: int = 1024, with_expected_u: bool = False,
                         entropy_grad: bool = False) -> dict[str, torch.Tensor]:
    """Log-prob of each response token under `model`, and the entropy of each response position.

    input_ids / attention_mask: (N, Lp + T), left-padded prompts then responses.
    Returns tensors of shape (N, T): 'logp', 'entropy' (and 'expected_u', see
    stabilizer.expected_u_from_logits); the caller masks them.
    Entropy is detached unless `entropy_grad` (the Entropy Loss baseline's bonus is differentiated);
    expected_u always is (they feed detached factors and logging).
    `chunk` caps the positions per block (BLOCK_BYTES caps them too). The LM head must be a linear layer.
    Runs as the model's forward (dist.run_as_forward), so it works on an FSDP2-sharded model too.
    """
    flat = dist.run_as_forward(model, _flat_token_stats, model, input_ids, attention_mask, prompt_length,
                               temperature, chunk, with_expected_u, entropy_grad)  # name -> (N*T,)
    n, t = input_ids.shape[0], input_ids.shape[1] - prompt_length
    graph = {"logp"} | ({"entropy"} if entropy_grad else set())
    return {name: v.view(n, t) if name in graph else v.detach().view(n, t) for name, v in flat.items()}


def _flat_token_stats(model, input_ids, attention_mask, prompt_length, temperature, chunk, with_expected_u,
                      entropy_grad):
    base = getattr(model, model.base_model_prefix)  # the decoder without the LM head
    lm_head = model.get_output_embeddings()
    hidden = base(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state  # (N, L, D)
    n, total = input_ids.shape
    t = total - prompt_length
    # Position j predicts token j + 1: responses are predicted from columns Lp - 1 .. L - 2.
    h = hidden[:, prompt_length - 1:-1].reshape(n * t, -1)  # (N*T, D)
    targets = input_ids[:, prompt_length:].reshape(n * t)  # (N*T,)
    logp, entropy, eu = _TokenStats.apply(h, lm_head.weight, lm_head.bias, targets, temperature, chunk,
                                          with_expected_u, entropy_grad)
    return {"logp": logp, "entropy": entropy, **({"expected_u": eu} if with_expected_u else {})}  # (N*T,) each
