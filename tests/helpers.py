# Shared builders for the tests (not a test file): a tiny random model and the tiny tokenizer.
import json
import os

import torch

from dynamo.model import prepare_tokenizer, tiny_model, tiny_tokenizer


def tiny(seed: int = 0):
    """(model, tokenizer) with random weights: enough to test shapes, masks and log-probs."""
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed)
    prepare_tokenizer(tok, model)
    model.eval()
    torch.manual_seed(seed)
    return model, tok


def step_rows(out) -> dict:
    """{step: metrics row without its timings} of a train.py run's metrics.jsonl."""
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith("time/")} for r in rows if "reward" in r}
