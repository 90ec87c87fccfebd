"""A randomly initialised model with the shape of a real one: speed and memory checks with no download.

    python scripts/random_model.py --shape qwen2.5-math-1.5b --out /tmp/qwen-1.5b-shape
    torchrun --nproc_per_node 1 train.py --config configs/default.yaml model=/tmp/qwen-1.5b-shape \\
        steps=3 eval_prompts=16 eval_samples=1 rollout.max_new_tokens=1024 rollout.max_prompt_tokens=128 \\
        micro_batch_size=8 prompts_per_step=32 out_dir=runs/shape-1.5b

The directory is a plain Hugging Face model (safetensors, config.json) plus the embedded character
tokenizer, so the built-in arithmetic prompts work; the vocabulary is the real one (151,936 rows for
Qwen2.5-Math-1.5B), so the LM head, the log-prob chunks and the optimiser state cost what they cost
for the real model. A random policy almost never samples EOS and its ids mostly decode to nothing:
responses run to max_new_tokens (the worst case for generation), every reward is wrong and every
advantage zero, and the update still runs in full (a zero loss is back-propagated like any other).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from dynamo.model import tiny_tokenizer  # noqa: E402

# From the published config.json of each model.
SHAPES = {
    "qwen2.5-math-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                              rope_theta=10000.0, tie_word_embeddings=True),
    "qwen2.5-math-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                            num_key_value_heads=4, vocab_size=152064, max_position_embeddings=4096,
                            rope_theta=10000.0, tie_word_embeddings=False),
}


def build(shape: dict, out: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> int:
    """Write a random model of `shape` and the embedded tokenizer to `out`; returns the parameter count."""
    tokenizer = tiny_tokenizer()
    if shape["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {shape['vocab_size']} is smaller than the tokenizer ({len(tokenizer)})")
    config = Qwen2Config(**shape, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return model.num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--out", required=True, help="directory to write (a Hugging Face model directory)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="storage dtype")
    args = parser.parse_args()
    n = build(SHAPES[args.shape], args.out, getattr(torch, args.dtype))
    print(f"wrote {args.out}: {args.shape} shape, {n / 1e9:.2f} B parameters, random weights")


if __name__ == "__main__":
    main()
