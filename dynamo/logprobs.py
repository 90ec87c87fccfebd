"""Token log-probs and full-vocabulary entropy of the responses, chunked over tokens (steps 5 and 7 of train.py).

The LM head is applied to at most `chunk` response positions at a time, and under autograd each chunk
is checkpointed, so neither the forward nor the saved tensors ever hold an (N, T, V) float32 tensor:
at Qwen's 151,936-token vocabulary that tensor alone is 10+ GiB for a modest batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dynamo import distributed as dist
from dynamo.rollout import position_ids
from dynamo.stabilizer import expected_u_from_logits


def _token_stats(hidden, targets, lm_head, temperature: float, with_expected_u: bool):
    """For hidden (C, D) and target ids (C,): log-prob (C,), entropy (C,) and optionally
    sum_v pi_v^2 (log pi_v + H) (C,), the vocabulary term of the exact entropy-change estimate."""
    logits = lm_head(hidden).float() / temperature  # (C, V): temperature-scaled, as sampled
    logp_all = F.log_softmax(logits, dim=-1)  # (C, V)
    p_all = logp_all.exp()  # (C, V)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)  # (C,)
    entropy = -(p_all * logp_all).sum(-1)  # (C,)
    if not with_expected_u:
        return logp, entropy
    return logp, entropy, expected_u_from_logits(logits)  # (C,) each


def response_token_stats(model, input_ids, attention_mask, prompt_length: int, *, temperature: float = 1.0,
                         chunk: int = 1024, with_expected_u: bool = False) -> dict[str, torch.Tensor]:
    """Log-prob of each response token under `model`, and the entropy of each response position.

    input_ids / attention_mask: (N, Lp + T), left-padded prompts then responses.
    Returns tensors of shape (N, T): 'logp', 'entropy' (and 'expected_u'); the caller masks them.
    Entropy and expected_u are detached (they only feed detached factors and logging).
    Runs as the model's forward (dist.run_as_forward), so it works on an FSDP2-sharded model too.
    """
    flat = dist.run_as_forward(model, _flat_token_stats, model, input_ids, attention_mask, prompt_length,
                               temperature, chunk, with_expected_u)  # name -> (N*T,)
    n, t = input_ids.shape[0], input_ids.shape[1] - prompt_length
    return {name: v.view(n, t) if name == "logp" else v.detach().view(n, t) for name, v in flat.items()}


def _flat_token_stats(model, input_ids, attention_mask, prompt_length, temperature, chunk, with_expected_u):
    base = getattr(model, model.base_model_prefix)  # the decoder without the LM head
    lm_head = model.get_output_embeddings()
    hidden = base(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state  # (N, L, D)
    n, total = input_ids.shape
    t = total - prompt_length
    # Position j predicts token j + 1: responses are predicted from columns Lp - 1 .. L - 2.
    h = hidden[:, prompt_length - 1:-1].reshape(n * t, -1)  # (N*T, D)
    targets = input_ids[:, prompt_length:].reshape(n * t)  # (N*T,)
    outs = []
    for s in range(0, n * t, chunk):
        args = (h[s:s + chunk], targets[s:s + chunk], lm_head, temperature, with_expected_u)
        if torch.is_grad_enabled():
            # Recompute this chunk's logits in backward instead of storing them.
            outs.append(checkpoint(_token_stats, *args, use_reentrant=False))
        else:
            outs.append(_token_stats(*args))
    names = ["logp", "entropy"] + (["expected_u"] if with_expected_u else [])
    return {name: torch.cat([o[i] for o in outs]) for i, name in enumerate(names)}  # (N*T,) each, not views
