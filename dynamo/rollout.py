"""Sampling responses with `model.generate` (KV cache) and the one function that builds masks (step 2 of train.py).

Every rollout row has its own seed, and its tokens are a function of that seed and the model alone:
the same row comes out whatever else is in the batch, however the batch is split over ranks, and
whichever rank draws it (so a 2-process run samples exactly what a 1-process run does). The noise
is counter-based: token t of row i draws its Gumbel-max noise from hash(seed_i, t, v) for every
vocabulary entry v, computed in one vectorised pass, with no random-number generator state at all.

Shapes: P prompts, N rollouts (N = sum of the per-prompt counts), Lp padded prompt length,
T response length (<= max_new_tokens), V vocabulary.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from dynamo import distributed as dist

M32 = 0xFFFFFFFF


@dataclass
class Rollouts:
    input_ids: torch.Tensor  # (N, Lp + T) left-padded prompt followed by the response
    attention_mask: torch.Tensor  # (N, Lp + T) 1 on real prompt tokens and on response tokens up to EOS
    response_mask: torch.Tensor  # (N, T) 1 on response tokens up to and including the first EOS
    prompt_index: torch.Tensor  # (N,) which of the P prompts each row answers
    truncated: torch.Tensor  # (N,) bool: no EOS within max_new_tokens
    prompt_length: int  # Lp: responses start at this column

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length:]  # (N, T)


def response_mask(responses: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, truncated): mask keeps every token up to and including the first EOS, drops the rest.

    Positional, never by token value: padding after EOS is dropped even when pad == EOS.
    """
    is_eos = responses == eos_token_id  # (N, T)
    # Number of EOS tokens strictly before each position; a position is kept while that count is 0.
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()  # (N, T)
    mask = (eos_before == 0).long()  # (N, T)
    truncated = ~is_eos.any(dim=1)  # (N,)
    return mask, truncated


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` computes them: the training forward must see the
    positions the sampling forward saw, or left-padded rows get other log-probs."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, L)


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (input_ids, attention_mask) for a list of prompt strings."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints and strings, e.g. (run seed, "rollout", step, prompt id)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32), in 16-bit halves: no intermediate leaves int64, whose
    overflow behaviour is not the same on every device."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser, on int64 tensors holding values in [0, 2^32)."""
    x = _mul32(x ^ (x >> 16), 0x85EBCA6B)
    x = _mul32(x ^ (x >> 13), 0xC2B2AE35)
    return x ^ (x >> 16)


def exponential_noise(seeds: torch.Tensor, t: int, vocab: int) -> torch.Tensor:
    """(N, V) float64 Exp(1) draws, a pure function of (seed_i, t, v): -log U with U = (h + 1/2) / 2^32."""
    lo, hi = seeds & M32, (seeds >> 32) & M32  # (N,)
    key = _mix32(lo ^ _mix32(hi ^ _mix32(torch.full_like(seeds, t & M32))))  # (N,) one key per row and step
    v = _mix32(torch.arange(vocab, device=seeds.device) ^ 0x9E3779B9)  # (V,)
    h = _mix32((_mix32(key[:, None] ^ v[None, :]) + key[:, None]) & M32)  # (N, V)
    return -torch.log((h.double() + 0.5) / 2.0 ** 32)


class SeededSampler(LogitsProcessor):
    """Turns greedy decoding into sampling: argmax_v (z_v / temperature - log E_v), with E_v ~ Exp(1)
    drawn from (row seed, t, v), picks v with probability softmax(z / temperature)_v (the exponential
    race, i.e. Gumbel-max). top_p < 1 first keeps the smallest set of tokens whose probability reaches
    top_p, as nucleus sampling does; temperature 0 is plain greedy decoding."""

    def __init__(self, seeds: torch.Tensor, prompt_length: int, temperature: float, top_p: float):
        self.seeds, self.prompt_length, self.temperature, self.top_p = seeds, prompt_length, temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return scores
        z = scores.float() / self.temperature  # (N, V)
        if self.top_p < 1.0:
            z = top_p_filter(z, self.top_p)
        t = input_ids.shape[1] - self.prompt_length  # response position being drawn
        noise = exponential_noise(self.seeds, t, z.shape[-1]).log().float()  # (N, V)
        return z - noise


def top_p_filter(z: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits with every token outside the nucleus set to -inf; the most likely token always stays."""
    sorted_z, order = z.sort(dim=-1, descending=True)  # (N, V)
    probs = sorted_z.softmax(-1)
    outside = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p
    return z.masked_fill(outside.scatter(-1, order, outside), float("-inf"))


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], counts: list[int], *, seeds: list[int], temperature: float,
           top_p: float, max_new_tokens: int) -> Rollouts:
    """Sample counts[i] responses for prompts[i]; every row keeps its prompt_index.

    seeds[i] is prompt i's seed; its j-th response is drawn under derive_seed(seeds[i], j) alone.
    A sharded model generates with synced_gpus: every rank runs forward passes until all are done.
    """
    assert len(prompts) == len(counts) == len(seeds), "one rollout count and one seed per prompt"
    device = next(model.parameters()).device
    prompt_index = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(counts, dtype=torch.long))
    row_seeds = torch.tensor([derive_seed(s, j) for s, n in zip(seeds, counts) for j in range(n)],
                             dtype=torch.long, device=device)  # (N,)
    ids, attn = encode_prompts(tokenizer, prompts, device)  # (P, Lp)
    ids, attn = ids[prompt_index.to(device)], attn[prompt_index.to(device)]  # (N, Lp)
    was_training = model.training
    model.eval()
    # Greedy decoding over the scores SeededSampler returns is sampling. The processors a checkpoint's
    # generation_config could switch on under greedy decoding are switched off, so the behaviour
    # policy is exactly softmax(z / temperature) (nucleus-filtered), the policy trained.
    out = model.generate(input_ids=ids, attention_mask=attn, do_sample=False, num_beams=1,
                         logits_processor=[SeededSampler(row_seeds, ids.shape[1], temperature, top_p)],
                         repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
                         max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, synced_gpus=dist.is_sharded(model))  # (N, Lp + T)
    model.train(was_training)
    lp = ids.shape[1]
    mask, truncated = response_mask(out[:, lp:], tokenizer.eos_token_id)  # (N, T)
    return Rollouts(input_ids=out, attention_mask=torch.cat([attn, mask], dim=1), response_mask=mask,
                    prompt_index=prompt_index, truncated=truncated.cpu(), prompt_length=lp)


def decode_responses(tokenizer, rollouts: Rollouts) -> list[str]:
    """Response text of each row, up to (not including) EOS."""
    texts = []
    for row, m in zip(rollouts.responses.tolist(), rollouts.response_mask.tolist()):
        toks = [t for t, keep in zip(row, m) if keep and t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return texts
