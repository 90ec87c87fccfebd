"""Sampling responses with `model.generate` (KV cache) and the one function that builds masks (step 2 of train.py).

Every rollout row has its own seed, and its tokens are a function of that seed and the model alone:
the same row comes out whatever else is in the batch, however the batch is split over ranks, and
whichever rank draws it (so a 2-process run samples exactly what a 1-process run does). The noise
is counter-based: token t of row i draws its Gumbel-max noise from hash(seed_i, t, v) for every
vocabulary entry v, with no random-number generator state at all. The sampler only computes the exact
noise where a token can still win (race_winners), in row chunks that stay in cache.

Shapes: P prompts, N rollouts (N = sum of the per-prompt counts), Lp padded prompt length,
T response length (<= max_new_tokens), V vocabulary.
"""
from __future__ import annotations

import functools
import hashlib
import math
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
    eos_ids: tuple = ()  # the token ids that ended a response (tokenizer's EOS and generation_config's)

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length:]  # (N, T)

    def select(self, rows: torch.Tensor, prompt_index: torch.Tensor) -> Rollouts:
        """These rows (a (n,) index), answering the prompts `prompt_index` (n,) of a new numbering."""
        r = rows.to(self.input_ids.device)
        return Rollouts(self.input_ids[r], self.attention_mask[r], self.response_mask[r], prompt_index,
                        self.truncated[rows.to(self.truncated.device)], self.prompt_length, self.eos_ids)


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """Rows of several sample() calls as one batch: prompts left-padded to the longest prompt, responses
    right-padded to the longest response (padding has attention 0 and mask 0, so no row's tokens or positions
    change); prompt_index is taken as each part has it (renumber with `select` first). One part: itself."""
    if len(parts) == 1:
        return parts[0]
    lp = max(p.prompt_length for p in parts)
    t = max(p.response_mask.shape[1] for p in parts)
    pad = torch.nn.functional.pad

    def widen(p: Rollouts, x: torch.Tensor, value: int) -> torch.Tensor:  # (n, Lp + T) -> (n, lp + t)
        left, right = lp - p.prompt_length, t - p.response_mask.shape[1]
        return pad(x, (left, right), value=value)

    return Rollouts(input_ids=torch.cat([widen(p, p.input_ids, pad_id) for p in parts]),
                    attention_mask=torch.cat([widen(p, p.attention_mask, 0) for p in parts]),
                    response_mask=torch.cat([pad(p.response_mask, (0, t - p.response_mask.shape[1])) for p in parts]),
                    prompt_index=torch.cat([p.prompt_index for p in parts]),
                    truncated=torch.cat([p.truncated for p in parts]), prompt_length=lp, eos_ids=parts[0].eos_ids)


def stop_ids(model, tokenizer) -> list[int]:
    """Every token that ends a response: the tokenizer's EOS and each EOS id of the model's generation_config
    (instruct models often list two, e.g. <|im_end|> and <|endoftext|>)."""
    ids = [tokenizer.eos_token_id]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in extra if isinstance(extra, (list, tuple)) else [extra]:
        if i is not None and i not in ids:
            ids.append(int(i))
    return ids


def response_mask(responses: torch.Tensor, eos_token_id) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, truncated): mask keeps every token up to and including the first EOS, drops the rest.
    `eos_token_id` is one id or a list of them (any one ends the response).

    Positional, never by token value: padding after EOS is dropped even when pad == EOS.
    """
    eos = torch.as_tensor(eos_token_id, device=responses.device).reshape(-1)
    is_eos = torch.isin(responses, eos)  # (N, T)
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


# The hash runs on int32 tensors holding uint32 bit patterns: a wrapping int32 multiply keeps the same low
# 32 bits as uint32 arithmetic (checked against the plain int64 formula in tests/test_rollout.py), and a
# right shift is made logical by masking off the copies of the sign bit. torch.uint32 has no shifts or adds.
FMIX32 = ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None))  # murmur3's finaliser: (shift, multiplier) steps
GOLDEN32 = 0x9E3779B9  # mixed into the vocabulary index before hashing
# The sampler hashes row chunks of about this many elements, so that the passes over a chunk stay in cache.
SAMPLER_CHUNK_ELEMENTS = 1 << 19
# On a GPU the race scores every token of rows chunks this large (about 20 bytes an element: 1.3 GB), with no
# host sync: a few large kernels instead of many small ones and the selective search's data-dependent sizes.
DEVICE_CHUNK_ELEMENTS = 1 << 26
LN2 = math.log(2.0)
# -log E <= RACE_BOUND - LN2 * bits(float32(m)) / 2^23 (see race_winners): 32 bits of U plus the exponent bias.
RACE_BOUND = 159 * LN2
# The bound of the token with the row's best bound exceeds its exact score by at most log(22.9) + 0.06 nats
# (-log e against -log(-log(1 - e)) at the extreme e = 1 - 2^-33, plus the error of the bit-pattern logarithm),
# so a token whose bound is more than this below the best bound cannot win; race_winners checks it anyway.
RACE_WINDOW = 3.3
RACE_BLOCKS = 16  # tokens per block: the bounds are maxed over blocks, and only blocks near the best are searched


def _int32(value: int) -> torch.Tensor:
    """A 0-dim int32 tensor with the bit pattern of the uint32 `value`: a cheaper operand than a Python int,
    which every op would wrap and cast (a 0-dim CPU tensor works with tensors on any device)."""
    return torch.tensor(value - (1 << 32) if value >= 1 << 31 else value, dtype=torch.int32)


# (shift, mask keeping the bits a logical shift keeps, multiplier or None) for each step of the finaliser.
_FMIX32_OPERANDS = [(_int32(shift), _int32(M32 >> shift), None if mult is None else _int32(mult))
                    for shift, mult in FMIX32]


def _int32_bits(x: torch.Tensor) -> torch.Tensor:
    """The low 32 bits of an int64 tensor as int32 (values >= 2^31 become negative: the same bits)."""
    x = x & M32
    return (x - ((x >> 31) << 32)).to(torch.int32)


def _mix32_(x: torch.Tensor, tmp: torch.Tensor, shifted: bool = False) -> torch.Tensor:
    """murmur3's 32-bit finaliser, in place on an int32 tensor of uint32 bit patterns (tmp: scratch, x's shape);
    shifted: the caller has already applied its first step, x ^= x >>> 16."""
    for i, (shift, mask, multiplier) in enumerate(_FMIX32_OPERANDS):
        if i or not shifted:
            torch.bitwise_right_shift(x, shift, out=tmp)
            x.bitwise_xor_(tmp.bitwise_and_(mask))  # x ^= x >>> shift
        if multiplier is not None:
            x.mul_(multiplier)
    return x


def _xorshift16(x: torch.Tensor) -> torch.Tensor:
    """x ^ (x >>> 16): the finaliser's first step, linear over XOR, so (a ^ b) -> _xorshift16(a) ^ _xorshift16(b)."""
    return x ^ ((x >> 16) & 0xFFFF)


def _row_keys(seeds: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) int32 key k of each row's step t, mix(lo ^ mix(hi ^ mix(t))) of the 64-bit seed's halves, and
    _xorshift16(k)."""
    lo, hi = _int32_bits(seeds), _int32_bits(seeds >> 32)  # (N,)
    key = _int32_bits(torch.full_like(seeds, t & M32))
    tmp = torch.empty_like(key)
    key = _mix32_(hi ^ _mix32_(key, tmp), tmp)
    key = _mix32_(lo ^ key, tmp)
    return key, _xorshift16(key)


@functools.lru_cache(maxsize=8)
def _vocab_keys(vocab: int, device: torch.device) -> torch.Tensor:
    """(V,) int32 _xorshift16(mix(v ^ golden)): the same for every row and step, so computed once."""
    v = _int32_bits(torch.arange(vocab, device=device) ^ GOLDEN32)
    return _xorshift16(_mix32_(v, torch.empty_like(v)))


def _hash_(out: torch.Tensor, key: torch.Tensor, key_xs: torch.Tensor, vocab_xs: torch.Tensor,
           tmp: torch.Tensor) -> torch.Tensor:
    """out <- h = mix(mix(k ^ w_v) + k), the uint32 draw of (seed, t, v), as int32, for row keys k (key, and
    key_xs = _xorshift16(k)) and vocabulary entries (vocab_xs = _vocab_keys[v]) that broadcast to out."""
    torch.bitwise_xor(key_xs, vocab_xs, out=out)  # the first step of mix(k ^ w_v), done on k and w_v apart
    _mix32_(out, tmp, shifted=True).add_(key)
    return _mix32_(out, tmp)


def _noise_of_bits(h: torch.Tensor) -> torch.Tensor:
    """Exp(1) draws in float64 from int32 bit patterns h: -log U with U = (h + 1/2) / 2^32."""
    return -torch.log(((h.long() & M32).double() + 0.5) / 2.0 ** 32)


def exponential_noise(seeds: torch.Tensor, t: int, vocab: int) -> torch.Tensor:
    """(N, V) float64 Exp(1) draws, a pure function of (seed_i, t, v): -log U with U = (h + 1/2) / 2^32."""
    key, key_xs = _row_keys(seeds, t)
    h = torch.empty(len(seeds), vocab, dtype=torch.int32, device=seeds.device)
    return _noise_of_bits(_hash_(h, key[:, None], key_xs[:, None], _vocab_keys(vocab, seeds.device),
                                 torch.empty_like(h)))


class SeededSampler(LogitsProcessor):
    """Turns greedy decoding into sampling: argmax_v (z_v / temperature - log E_v), with E_v ~ Exp(1)
    drawn from (row seed, t, v), picks v with probability softmax(z / temperature)_v (the exponential
    race, i.e. Gumbel-max). top_p < 1 first keeps the smallest set of tokens whose probability reaches
    top_p, as nucleus sampling does; temperature 0 is plain greedy decoding.

    The draw is computed by race_winners, which never builds an (N, V) tensor of noise; the scores returned
    are the float32 scores with the drawn token of each row set to +inf (written over `scores` when it is
    float32: generate() hands the processors a private float32 copy of the logits, which nothing else reads
    unless asked for output_logits, and sample() does not ask).
    """

    def __init__(self, seeds: torch.Tensor, prompt_length: int, temperature: float, top_p: float):
        self.seeds, self.prompt_length, self.temperature, self.top_p = seeds, prompt_length, temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return scores
        t = input_ids.shape[1] - self.prompt_length  # response position being drawn
        z, temperature = scores.float(), self.temperature  # (N, V) scores itself when already float32
        if self.top_p < 1.0:
            z, temperature = top_p_filter(z / temperature, self.top_p), 1.0
        z[torch.arange(len(z), device=z.device), race_winners(z, temperature, self.seeds, t)] = float("inf")
        return z


def race_winners(logits: torch.Tensor, temperature: float, seeds: torch.Tensor, t: int) -> torch.Tensor:
    """(N,) the race's winners: on the CPU by bounds and a selective search (`cpu_race_winners`), elsewhere by
    scoring every token (`full_race_winners`); the same tokens either way (tested)."""
    if logits.device.type == "cpu":
        return cpu_race_winners(logits, temperature, seeds, t)
    return full_race_winners(logits, temperature, seeds, t)


def full_race_winners(logits: torch.Tensor, temperature: float, seeds: torch.Tensor, t: int,
                      chunk_elements: int = DEVICE_CHUNK_ELEMENTS) -> torch.Tensor:
    """(N,) argmax_v of z_v - log E_v over every token, in row chunks of about `chunk_elements`: the full
    formula, with no host sync (a GPU's sampler: the draws of race_winners' CPU path, bit for bit)."""
    n, vocab = logits.shape
    key, key_xs = _row_keys(seeds, t)  # (N,) each
    vocab_xs = _vocab_keys(vocab, logits.device)  # (V,)
    rows = max(1, min(n, chunk_elements // vocab))
    h, tmp = (torch.empty(rows, vocab, dtype=torch.int32, device=logits.device) for _ in range(2))
    winners = torch.empty(n, dtype=torch.long, device=logits.device)
    for s in range(0, n, rows):
        c, r = slice(s, min(n, s + rows)), min(n, s + rows) - s
        _hash_(h[:r], key[c, None], key_xs[c, None], vocab_xs, tmp[:r])
        score = logits[c].float() / temperature - _noise_of_bits(h[:r]).log().float()  # (r, V)
        winners[c] = score.argmax(-1)
    return winners


def cpu_race_winners(logits: torch.Tensor, temperature: float, seeds: torch.Tensor, t: int) -> torch.Tensor:
    """(N,) argmax_v of z_v - log E_v, z = logits.float() / temperature (N, V), E from exponential_noise:
    the same index, bit for bit, as the full formula (z - exponential_noise(...).log().float()).argmax(-1).

    Every token gets a cheap upper bound on its score from its draw h, in int32 over row chunks that stay in
    cache: with e = 1 - U = (m + 1/2) / 2^32, m = 2^32 - 1 - h, E = -log(1 - e) >= e, so the score is at most
    z - log e = z + 32 log 2 - log(m + 1/2), and log2 m >= bits(float32(m)) / 2^23 - 127 (a float's bit
    pattern is its piecewise-linear log2, never above it): two conversions, no logarithm. Only the bounds'
    maxima over blocks of RACE_BLOCKS tokens are kept; the tokens of the few blocks whose maximum comes near
    the row's best get the exact score (their draws hashed again), and the best of those wins.
    """
    n, vocab = logits.shape
    key, key_xs = _row_keys(seeds, t)  # (N,) each
    vocab_xs = _vocab_keys(vocab, logits.device)  # (V,)
    width = vocab // RACE_BLOCKS  # blocks per row: column c < RACE_BLOCKS * width is in block c % width
    block_max = torch.empty(n, width, device=logits.device)  # (N, width)
    rows = max(1, min(n, SAMPLER_CHUNK_ELEMENTS // vocab))
    h, tmp = (torch.empty(rows, vocab, dtype=torch.int32, device=logits.device) for _ in range(2))
    scaled = logits.dtype != torch.float32 or temperature != 1.0
    for s in range(0, n, rows):
        c, r = slice(s, min(n, s + rows)), min(n, s + rows) - s
        _hash_(h[:r], key[c, None], key_xs[c, None], vocab_xs, tmp[:r])
        bound = tmp[:r].view(torch.float32)
        bound.copy_(h[:r].bitwise_not_().view(torch.uint32))  # float32(m)
        bound.copy_(bound.view(torch.int32))  # its bit pattern, as a number (element by element, in place)
        z = h[:r].view(torch.float32).copy_(logits[c]).div_(temperature) if scaled else logits[c]  # (r, V)
        torch.add(z, bound, alpha=-LN2 / 2 ** 23, out=bound)  # bound - RACE_BOUND
        torch.amax(bound[:, :RACE_BLOCKS * width].view(r, RACE_BLOCKS, width), 1, out=block_max[c])
    return _winners(logits, temperature, block_max, key, key_xs, vocab_xs)


def _winners(logits: torch.Tensor, temperature: float, block_max: torch.Tensor, key: torch.Tensor,
             key_xs: torch.Tensor, vocab_xs: torch.Tensor) -> torch.Tensor:
    """(N,) winners, from the exact scores of the tokens in the blocks near each row's best bound (and of the
    vocab % RACE_BLOCKS last tokens, which are in no block)."""
    (n, vocab), width, device = logits.shape, block_max.shape[1], logits.device
    cut = block_max.amax(-1) - RACE_WINDOW if width else torch.full((n,), -math.inf, device=device)  # (N,)
    b_rows, b_cols = (~(block_max <= cut[:, None])).nonzero(as_tuple=True)  # (B,) blocks near the best, or NaN
    tail = torch.arange(RACE_BLOCKS * width, vocab, device=device)  # columns in no block
    rows = torch.cat([b_rows.repeat_interleave(RACE_BLOCKS), torch.arange(n, device=device).repeat_interleave(
        len(tail))])  # (K,)
    cols = torch.cat([(b_cols[:, None] + width * torch.arange(RACE_BLOCKS, device=device)).flatten(),
                      tail.repeat(n)])  # (K,) the members of those blocks, then the tail
    score = _exact_scores(logits, temperature, rows, cols, key, key_xs, vocab_xs)  # (K,)
    best = torch.full((n,), -math.inf, device=device).scatter_reduce_(0, rows, score, "amax")  # (N,)
    top = score == best[rows]  # (K,)
    winner = torch.full((n,), vocab, device=device).scatter_reduce_(0, rows[top], cols[top], "amin")  # first best
    # A token outside those blocks scores at most cut + RACE_BOUND (+ float32 rounding). Where that is not below
    # `best` (NaN logits, |z| ~ 1e5, or the rare m = 0), the whole row is scored.
    every = torch.arange(vocab, device=device)
    for i in (~(best > cut + RACE_BOUND + 1e-3 + 1e-6 * cut.abs())).nonzero().flatten().tolist():
        winner[i] = _exact_scores(logits, temperature, torch.full_like(every, i), every, key, key_xs,
                                  vocab_xs).argmax()
    return winner


def _exact_scores(logits: torch.Tensor, temperature: float, rows: torch.Tensor, cols: torch.Tensor,
                  key: torch.Tensor, key_xs: torch.Tensor, vocab_xs: torch.Tensor) -> torch.Tensor:
    """(K,) z - log E at (rows, cols): the draws hashed again for these K tokens, the logarithms in float64 and
    rounded to float32, as the full formula does (that rounding is what the sampled tokens depend on)."""
    h = _hash_(torch.empty_like(rows, dtype=torch.int32), key[rows], key_xs[rows], vocab_xs[cols],
               torch.empty_like(rows, dtype=torch.int32))
    return logits[rows, cols].float() / temperature - _noise_of_bits(h).log().float()


def top_p_filter(z: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits with every token outside the nucleus set to -inf; the most likely token always stays."""
    sorted_z, order = z.sort(dim=-1, descending=True)  # (N, V)
    probs = sorted_z.softmax(-1)
    outside = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p
    return z.masked_fill(outside.scatter(-1, order, outside), float("-inf"))


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], counts: list[int], *, seeds: list[int], temperature: float,
           top_p: float, max_new_tokens: int, max_rows: int = 0) -> Rollouts:
    """Sample counts[i] responses for prompts[i]; every row keeps its prompt_index.

    seeds[i] is prompt i's seed; its j-th response is drawn under derive_seed(seeds[i], j) alone, so splitting
    the rows into `generate` calls of at most `max_rows` (0: one call) changes no token (tested): the memory
    of one call's KV cache is what `max_rows` bounds. A sharded model generates with synced_gpus: every rank
    runs forward passes until all are done, and as many calls as the busiest rank (each call is collective).
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
    eos = stop_ids(model, tokenizer)
    n = len(row_seeds)
    size = max_rows if 0 < max_rows < n else n
    chunks = [slice(s, min(s + size, n)) for s in range(0, n, size)]
    calls = len(chunks)
    if dist.is_sharded(model):  # every rank makes as many generate calls, decided before the first
        calls = int(dist.all_reduce_max(torch.tensor(calls)))
    outs = []
    for c in range(calls):
        rows = chunks[c] if c < len(chunks) else slice(0, 1)  # past this rank's rows: one row, result dropped
        out = _generate(model, tokenizer, ids[rows], attn[rows], row_seeds[rows], temperature, top_p,
                        max_new_tokens, eos)
        if c < len(chunks):
            outs.append(out)
    model.train(was_training)
    width = max(o.shape[1] for o in outs)  # chunks stop at their own longest response: pad to the longest
    out = torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1]), value=tokenizer.pad_token_id)
                     for o in outs])  # (N, Lp + T), as one call would have padded finished rows
    lp = ids.shape[1]
    mask, truncated = response_mask(out[:, lp:], eos)  # (N, T)
    return Rollouts(input_ids=out, attention_mask=torch.cat([attn, mask], dim=1), response_mask=mask,
                    prompt_index=prompt_index, truncated=truncated.cpu(), prompt_length=lp, eos_ids=tuple(eos))


def _generate(model, tokenizer, ids, attn, row_seeds, temperature, top_p, max_new_tokens, eos) -> torch.Tensor:
    """One generate call. Greedy decoding over the scores SeededSampler returns is sampling. The processors a
    checkpoint's generation_config could switch on under greedy decoding are switched off, so the behaviour
    policy is exactly softmax(z / temperature) (nucleus-filtered), the policy trained."""
    return model.generate(input_ids=ids, attention_mask=attn, do_sample=False, num_beams=1,
                          logits_processor=[SeededSampler(row_seeds, ids.shape[1], temperature, top_p)],
                          repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
                          max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=eos, synced_gpus=dist.is_sharded(model))  # (rows, Lp + T)


def decode_responses(tokenizer, rollouts: Rollouts) -> list[str]:
    """Response text of each row, up to (not including) EOS."""
    texts = []
    for row, m in zip(rollouts.responses.tolist(), rollouts.response_mask.tolist()):
        toks = [t for t, keep in zip(row, m) if keep and t not in (rollouts.eos_ids or (tokenizer.eos_token_id,))]
        texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return texts
