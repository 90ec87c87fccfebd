# python -m pytest -q tests/test_real_model.py  — a real architecture and tokenizer end to end: SmolLM2-135M-Instruct
# (Llama, grouped-query attention, 49,152-token BPE vocabulary, ChatML template, pad == EOS in the original),
# converted once from its GGUF file (tests/real_model.py). Rollouts are kept to a few short rows.
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from dynamo.data import render
from dynamo.logprobs import response_token_stats
from dynamo.model import load_pretrained
from dynamo.rollout import encode_prompts, response_mask, sample, stop_ids
from dynamo.task import Problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = ["What is 7 plus 8?", "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
             "clips in May. How many clips did Natalia sell altogether in April and May?"]


@pytest.fixture(scope="module")
def real(smollm2_dir):
    model, tok = load_pretrained(smollm2_dir)
    model.eval()
    return model, tok


def chat_prompts(tok) -> list[str]:
    return [render(Problem(str(i), q, "", "x"), "chat", tok) for i, q in enumerate(QUESTIONS)]


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_training_logprobs_equal_generate_logits_left_padded_with_pad_equal_to_eos(real, temperature):
    model, tok = real
    saved_pad = tok.pad_token_id  # load_pretrained picked a distinct pad; the original tokenizer's is the EOS
    tok.pad_token_id = tok.eos_token_id  # pad == EOS == <|im_end|>
    try:
        ids, attn = encode_prompts(tok, chat_prompts(tok), "cpu")
        assert (attn[0] == 0).any(), "the shorter prompt must be left-padded"
        torch.manual_seed(0)
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=temperature, top_p=1.0,
                             top_k=0, max_new_tokens=10, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             output_logits=True, return_dict_in_generate=True)
    finally:
        tok.pad_token_id = saved_pad
    lp = ids.shape[1]
    resp = out.sequences[:, lp:]
    mask, _ = response_mask(resp, tok.eos_token_id)
    logits = torch.stack(out.logits, dim=1).float() / temperature  # the raw logits generate sampled from, tempered
    expected = torch.log_softmax(logits, -1).gather(-1, resp[..., None]).squeeze(-1)
    with torch.no_grad():
        got = response_token_stats(model, out.sequences, torch.cat([attn, mask], 1), lp, temperature=temperature)
    m = mask.bool()
    assert m.sum() >= 10
    assert (got["logp"][m] - expected[m]).abs().max() < 2e-4
    entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert (got["entropy"][m] - entropy[m]).abs().max() < 2e-3


def test_every_eos_id_of_the_generation_config_ends_a_response_and_nothing_after_is_kept(real):
    model, tok = real
    prompts = chat_prompts(tok)
    kw = dict(seeds=[11, 12], temperature=1.0, top_p=1.0, max_new_tokens=6)
    first = sample(model, tok, prompts, [2, 2], **kw)
    assert stop_ids(model, tok) == [tok.eos_token_id]
    second_eos = int(first.responses[0, 2])  # the token row 0 draws third: declared a second EOS id below
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, second_eos]  # as Qwen instruct models list two
    try:
        ro = sample(model, tok, prompts, [2, 2], **kw)  # the same seeds draw the same tokens up to the stop
    finally:
        model.generation_config.eos_token_id = saved
    assert ro.eos_ids == (tok.eos_token_id, second_eos)
    assert ro.responses[0, :3].tolist() == first.responses[0, :3].tolist()
    assert ro.response_mask[0].tolist() == [1, 1, 1] + [0] * (ro.responses.shape[1] - 3)
    assert not ro.truncated[0]
    for row, m, cut in zip(ro.responses.tolist(), ro.response_mask.tolist(), ro.truncated.tolist()):
        stops = [t for t, tok_id in enumerate(row) if tok_id in ro.eos_ids]
        kept = sum(m)
        assert m == [1] * kept + [0] * (len(m) - kept)  # a prefix
        assert (kept == stops[0] + 1) if stops else (cut and kept == len(row))  # up to and including the first stop


def test_chat_template_is_applied_once(real):
    _, tok = real
    prompt = chat_prompts(tok)[0]
    assert prompt.count("<|im_start|>user") == 1 and prompt.count(QUESTIONS[0]) == 1
    assert prompt.endswith("<|im_start|>assistant\n")
    ids, _ = encode_prompts(tok, [prompt], "cpu")
    assert tok.decode(ids[0]) == prompt  # no BOS or other special token added on top of the template's own


def test_gguf_needs_its_packages_and_says_what_to_install(monkeypatch):
    import importlib.util
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find(name, *a))
    with pytest.raises(ValueError, match=r"GGUF file: reading it needs gguf \(pip install gguf\)"):
        load_pretrained("some/model.Q4_1.gguf")


def test_train_two_steps_reload_and_evaluate(smollm2_dir, tmp_path):
    rows = [{"question": q, "answer": a} for q, a in
            [("What is 7 plus 8?", "#### 15"), ("What is 3 times 4?", "#### 12"), ("What is 9 minus 2?", "#### 7")]]
    data = tmp_path / "gsm8k_mini.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "train.py", "--config", "configs/grpo.yaml", f"model={smollm2_dir}",
                          f"data={data}", "template=chat", f"out_dir={out}", "steps=2", "prompts_per_step=2",
                          "rollouts_per_prompt=2", "allocator.n_min=1", "allocator.n_max=4", "rollout.max_new_tokens=12",
                          "rollout.max_prompt_tokens=128", "eval_every=0", f"eval_data=[{data}]", "eval_samples=1",
                          "optim.lr=1e-6"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    final = os.path.realpath(out / "final")
    reloaded = AutoModelForCausalLM.from_pretrained(final, local_files_only=True)
    assert type(reloaded).__name__ == "LlamaForCausalLM" and reloaded.config.vocab_size == 49152
    summary = json.load(open(out / "summary.json"))
    assert summary["benchmarks"]["gsm8k_mini"]["problems"] == 3
    ev = subprocess.run([sys.executable, "eval.py", "--model", final, "--data", str(data), "k=1", "max_new_tokens=12",
                         "template=chat", f"output={tmp_path / 'eval'}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "gsm8k_mini" in json.dumps(json.load(open(tmp_path / "eval" / "summary.json")))
