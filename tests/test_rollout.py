# python -m pytest -q tests/test_rollout.py  — masks, left padding, and log-probs against generate.
import torch

from dynamo.logprobs import response_token_stats
from dynamo.rollout import decode_responses, response_mask, sample
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
    ro = sample(model, tok, prompts, [2, 3, 1], temperature=1.0, top_p=1.0, max_new_tokens=6)
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
    ro = sample(model, tok, ["12+34=", "5*6="], [2, 2], temperature=1.0, top_p=1.0, max_new_tokens=6)
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
