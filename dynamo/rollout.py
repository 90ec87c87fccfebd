"""Sampling responses with `model.generate` (KV cache) and the one function that builds masks.

Shapes: P prompts, N rollouts (N = sum of the per-prompt counts), Lp padded prompt length,
T response length (<= max_new_tokens).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


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
    """Positions that skip left padding, as `generate` computes them (FIELD_NOTES pitfall 4)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, L)


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (input_ids, attention_mask) for a list of prompt strings."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], counts: list[int], *, temperature: float, top_p: float,
           max_new_tokens: int, synced_gpus: bool = False) -> Rollouts:
    """Sample counts[i] responses for prompts[i]; every row keeps its prompt_index."""
    assert len(prompts) == len(counts), "one rollout count per prompt"
    device = next(model.parameters()).device
    prompt_index = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(counts, dtype=torch.long))
    ids, attn = encode_prompts(tokenizer, prompts, device)  # (P, Lp)
    ids, attn = ids[prompt_index.to(device)], attn[prompt_index.to(device)]  # (N, Lp)
    was_training = model.training
    model.eval()
    # Every generation field explicit: transformers 5 fills unset ones from global defaults,
    # including top_k = 50, which would make the behaviour policy differ from the policy trained.
    out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=temperature,
                         top_p=top_p, top_k=0, min_new_tokens=0, max_new_tokens=max_new_tokens,
                         use_cache=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, synced_gpus=synced_gpus)  # (N, Lp + T)
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
