# python -m pytest -q tests/test_rollout.py  — masks, left padding, and log-probs against generate.
import pytest
import torch

from dynamo.logprobs import response_token_stats
from dynamo.rollout import (SeededSampler, decode_responses, exponential_noise, position_ids, race_winners,
                            response_mask, sample, top_p_filter)
from tests.helpers import tiny

EOS, PAD = 2, 0


def test_mask_keeps_first_eos_and_drops_everything_after():
    responses = torch.tensor([[5, 6, EOS, PAD, PAD],
                              [5, EOS, 7, EOS, PAD],   # tokens after the first EOS never count
                              [5, 6, 7, 8, 9]])        # no EOS: truncated, all kept
    mask, truncated = response_mask(responses, EOS)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]


def test_mask_is_positional_when_pad_equals_eos():
    # A tokenizer whose pad is its EOS: the EOS must still get gradient, the padding must not.
    responses = torch.tensor([[5, EOS, EOS, EOS], [EOS, EOS, EOS, EOS]])
    mask, truncated = response_mask(responses, EOS)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert not truncated.any()


def test_sample_rows_carry_prompt_index_and_left_padding():
    model, tok = tiny()
    prompts = ["1+2=", "345+678=", "9*7="]
    ro = sample(model, tok, prompts, [2, 3, 1], seeds=[1, 2, 3], temperature=1.0, top_p=1.0, max_new_tokens=6)
    assert ro.prompt_index.tolist() == [0, 0, 1, 1, 1, 2]
    prompt_part = ro.input_ids[:, :ro.prompt_length]
    for row, i in zip(prompt_part.tolist(), ro.prompt_index.tolist()):
        real = [t for t in row if t != tok.pad_token_id]
        assert tok.decode(real, skip_special_tokens=True) == prompts[i]
        assert row[-len(real):] == real  # left padding: the prompt ends right before the response
    assert ro.attention_mask[:, ro.prompt_length:].equal(ro.response_mask)
    assert len(decode_responses(tok, ro)) == 6


def test_training_logprobs_match_generate_scores_under_left_padding():
    model, tok = tiny(seed=3)
    prompts = ["7+8=", "1234+5678=", "56*3="]  # different lengths: rows 0 and 2 are left-padded
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         output_logits=True, return_dict_in_generate=True)
    lp = enc["input_ids"].shape[1]
    resp = out.sequences[:, lp:]  # (N, T)
    mask, _ = response_mask(resp, tok.eos_token_id)
    gen_logits = torch.stack(out.logits, dim=1).float()  # (N, T, V)
    expected = torch.log_softmax(gen_logits, -1).gather(-1, resp[..., None]).squeeze(-1)  # (N, T)
    attn = torch.cat([enc["attention_mask"], mask], dim=1)
    with torch.no_grad():
        got = response_token_stats(model, out.sequences, attn, lp, temperature=1.0, chunk=5)
    m = mask.bool()
    assert (got["logp"][m] - expected[m]).abs().max() < 1e-4
    ent = -(torch.softmax(gen_logits, -1) * torch.log_softmax(gen_logits, -1)).sum(-1)
    assert (got["entropy"][m] - ent[m]).abs().max() < 1e-4


def test_chunking_changes_neither_values_nor_gradients():
    model, tok = tiny(seed=1)
    ro = sample(model, tok, ["12+34=", "5*6="], [2, 2], seeds=[0, 1], temperature=1.0, top_p=1.0, max_new_tokens=6)
    results = []
    for chunk in (3, 10_000):
        model.zero_grad()
        s = response_token_stats(model, ro.input_ids, ro.attention_mask, ro.prompt_length, temperature=0.7,
                                 chunk=chunk, with_expected_u=True)
        (s["logp"] * ro.response_mask).sum().backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((s["logp"].detach(), s["entropy"], s["expected_u"], grad))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_seeded_sampler_draws_from_the_tempered_nucleus_distribution(temperature, top_p):
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    n = 40_000
    sampler = SeededSampler(torch.arange(n) * 7919 + 11, prompt_length=0, temperature=temperature, top_p=top_p)
    picks = sampler(torch.zeros(n, 3, dtype=torch.long), logits.repeat(n, 1)).argmax(-1)
    freq = torch.bincount(picks, minlength=4).double() / n
    p = torch.softmax(logits.double() / temperature, -1)
    if top_p < 1:  # 0.5 + 0.3 reaches 0.8: the nucleus is the first two tokens
        p = torch.tensor([0.5, 0.3, 0.0, 0.0], dtype=torch.float64) / 0.8
    se = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 5 * se + 1e-12).all(), (freq, p)


def test_noise_is_a_pure_function_of_seed_position_and_token():
    a = exponential_noise(torch.tensor([5, 6, 7]), 3, 11)
    b = exponential_noise(torch.tensor([7, 5]), 3, 11)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])  # batch order and company do not matter
    assert not torch.equal(a[0], exponential_noise(torch.tensor([5]), 4, 11)[0])  # the next token differs
    assert not torch.equal(a[0], a[1])
    assert (a > 0).all()
    fresh = exponential_noise(torch.arange(20_000), 0, 50)  # Exp(1): mean 1, variance 1
    assert abs(fresh.mean().item() - 1) < 0.01 and abs(fresh.var().item() - 1) < 0.03


def test_a_row_is_drawn_the_same_whatever_else_is_in_the_batch():
    model, tok = tiny(seed=2)
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=8)
    together = sample(model, tok, ["12+34=", "5*6=", "1234*5678="], [3, 2, 2], seeds=[10, 11, 12], **kw)
    alone = sample(model, tok, ["5*6="], [2], seeds=[11], **kw)
    texts_together, texts_alone = decode_responses(tok, together), decode_responses(tok, alone)
    assert texts_together[3:5] == texts_alone  # padded differently, in other company: same responses
    other_seed = sample(model, tok, ["5*6="], [2], seeds=[99], **kw)
    assert decode_responses(tok, other_seed) != texts_alone


def test_sampler_sees_the_raw_logits_whatever_the_generation_config_says(monkeypatch):
    model, tok = tiny(seed=4)
    model.generation_config.repetition_penalty = 3.0  # as shipped with some instruct checkpoints
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.top_k = 2
    seen = []
    original = SeededSampler.__call__
    monkeypatch.setattr(SeededSampler, "__call__", lambda self, ids, scores: seen.append(scores.clone())
                        or original(self, ids, scores))
    ro = sample(model, tok, ["7+8=", "123+456="], [3, 3], seeds=[1, 2], temperature=1.0, top_p=1.0,
                max_new_tokens=10)
    with torch.no_grad():
        logits = model(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                       position_ids=position_ids(ro.attention_mask)).logits[:, ro.prompt_length - 1:-1]
    m = ro.response_mask.bool()
    for t, scores in enumerate(seen):
        rows = m[:, t]
        assert torch.allclose(scores[rows], logits[rows, t], atol=1e-4), t


def test_temperature_zero_is_greedy():
    model, tok = tiny(seed=5)
    ro = sample(model, tok, ["12+34="], [2], seeds=[3], temperature=0.0, top_p=1.0, max_new_tokens=6)
    enc = tok(["12+34="], return_tensors="pt")
    greedy = model.generate(**enc, do_sample=False, max_new_tokens=6, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id)
    n = greedy.shape[1] - enc["input_ids"].shape[1]
    assert ro.responses[0, :n].tolist() == greedy[0, enc["input_ids"].shape[1]:].tolist()
    assert ro.responses[0].tolist() == ro.responses[1].tolist()


# The noise as first written: (N, V) int64 tensors, 32-bit products in 16-bit halves. Kept as the reference
# that the int32 hash and the sampler's race must reproduce bit for bit (the shipped warmed start's recorded
# accuracies, and every recorded run, depend on the sampled tokens).
M32 = 0xFFFFFFFF


def _reference_mul32(x, c):
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def _reference_mix32(x):
    x = _reference_mul32(x ^ (x >> 16), 0x85EBCA6B)
    x = _reference_mul32(x ^ (x >> 13), 0xC2B2AE35)
    return x ^ (x >> 16)


def _reference_noise(seeds, t, vocab):
    lo, hi = seeds & M32, (seeds >> 32) & M32
    key = _reference_mix32(lo ^ _reference_mix32(hi ^ _reference_mix32(torch.full_like(seeds, t & M32))))
    v = _reference_mix32(torch.arange(vocab) ^ 0x9E3779B9)
    h = _reference_mix32((_reference_mix32(key[:, None] ^ v[None, :]) + key[:, None]) & M32)
    return -torch.log((h.double() + 0.5) / 2.0 ** 32)


def _reference_draw(scores, seeds, t, temperature, top_p):
    z = scores.float() / temperature
    if top_p < 1.0:
        z = top_p_filter(z, top_p)
    return (z - _reference_noise(seeds, t, z.shape[-1]).log().float()).argmax(-1)


def test_noise_equals_the_reference_formula_bit_for_bit():
    seeds = torch.tensor([0, 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 62 + 12345, 2 ** 63 - 1])
    for t, vocab in [(0, 1000), (7, 37), (2 ** 32 + 3, 20)]:  # t past 2^32 wraps in both
        assert torch.equal(exponential_noise(seeds, t, vocab), _reference_noise(seeds, t, vocab))


@pytest.mark.parametrize("vocab,scale,temperature,top_p", [(1000, 1.0, 1.0, 1.0), (1000, 30.0, 0.7, 1.0),
                                                           (4099, 0.01, 1.0, 1.0), (4099, 5.0, 0.6, 0.9),
                                                           (37, 2.0, 1.3, 1.0), (4, 1.0, 1.0, 1.0)])
def test_sampler_draws_the_tokens_of_the_reference_formula(vocab, scale, temperature, top_p):
    # Near-uniform logits (every token a contender), wide ones, a vocabulary below and off the block size.
    gen = torch.Generator().manual_seed(vocab)
    seeds = torch.randint(0, 2 ** 63 - 1, (48,), generator=gen)
    scores = torch.randn(48, vocab, generator=gen) * scale
    scores[1] = 0.0  # all tied: the exact scores decide
    scores[2] *= 1e6  # magnitudes where float32 rounding exceeds the bound's margin: the row is scored in full
    for t in (0, 5):
        expected = _reference_draw(scores, seeds, t, temperature, top_p)
        sampler = SeededSampler(seeds, prompt_length=2, temperature=temperature, top_p=top_p)
        assert torch.equal(sampler(torch.zeros(48, 2 + t, dtype=torch.long), scores.clone()).argmax(-1), expected)


def test_race_winners_on_nan_logits_pick_what_argmax_would():
    gen = torch.Generator().manual_seed(0)
    seeds = torch.randint(0, 2 ** 63 - 1, (4,), generator=gen)
    scores = torch.randn(4, 300, generator=gen)
    scores[0, 17] = float("nan")
    assert torch.equal(race_winners(scores, 1.0, seeds, 3), _reference_draw(scores, seeds, 3, 1.0, 1.0))


@pytest.mark.parametrize("max_rows", [1, 2, 3, 7])
def test_generate_calls_of_at_most_max_rows_draw_the_same_tokens(max_rows):
    """Rows split over several generate calls (rollout.max_rows): every token, mask and flag as in one call."""
    from dynamo.model import load_pretrained
    from dynamo.rollout import sample
    from tests.helpers import SHIPPED_START
    model, tok = load_pretrained(SHIPPED_START)  # answers that end (EOS) at different lengths
    kw = dict(seeds=[11, 12, 13], temperature=1.0, top_p=0.9, max_new_tokens=40)
    prompts, counts = ["12+34=", "5*6=", "100+200="], [3, 4, 2]
    whole = sample(model, tok, prompts, counts, **kw)
    lengths = whole.response_mask.sum(1)
    assert lengths.min() < lengths.max() < 40  # precondition: calls that stop at different widths get padded
    split = sample(model, tok, prompts, counts, max_rows=max_rows, **kw)
    for name in ("input_ids", "attention_mask", "response_mask", "prompt_index", "truncated"):
        assert torch.equal(getattr(whole, name), getattr(split, name)), name
    assert whole.prompt_length == split.prompt_length


@pytest.mark.parametrize("chunk_rows", [1, 3, 64])
def test_the_devices_full_race_draws_the_cpu_races_tokens(chunk_rows):
    """On a GPU the race scores every token in row chunks (no host sync); on the CPU it searches selectively.
    Any chunk size gives the CPU path's tokens, for scaled, nucleus-filtered and bf16 logits."""
    from dynamo.rollout import cpu_race_winners, full_race_winners, top_p_filter
    g = torch.Generator().manual_seed(5)
    vocab, n = 1000, 37
    seeds = torch.randint(0, 2 ** 62, (n,), generator=g)
    for t in (0, 7):
        for logits, temperature in ((torch.randn(n, vocab, generator=g) * 3, 1.0),
                                    (torch.randn(n, vocab, generator=g).bfloat16(), 0.7),
                                    (top_p_filter(torch.randn(n, vocab, generator=g) / 0.6, 0.9), 1.0)):
            want = cpu_race_winners(logits, temperature, seeds, t)
            got = full_race_winners(logits, temperature, seeds, t, chunk_elements=chunk_rows * vocab)
            assert torch.equal(got, want)
