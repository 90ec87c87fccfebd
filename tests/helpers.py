# Shared builders for the tests (not a test file): a tiny random model and the tiny tokenizer.
import json
import os

import torch

from dynamo.model import prepare_tokenizer, tiny_model, tiny_tokenizer
from dynamo.step_metrics import read_metrics


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
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(out)["train"]}


# The warmed start shipped with the repository: the same weights on every machine, so a short run from it
# lands in the same place whatever CPU kernels compute it (a warm-up trained here would not).
SHIPPED_START = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "warmed-tiny")


def require_gradients(rows: dict, steps, least: int = 1) -> None:
    """Precondition of every comparison of two training runs: enough of `steps` had a real gradient."""
    live = [s for s in steps if rows[s]["grad_norm"] > 0]
    assert len(live) >= least, (
        f"precondition broken: only steps {live} of {list(steps)} had a non-zero gradient (need {least}; "
        f"zero-advantage group fractions {[rows[s]['zero_adv_groups'] for s in steps]}), so comparing the runs "
        "would prove nothing: the start or the task levels no longer give mixed rewards")


def merged(*groups) -> list[str]:
    """key=value overrides with later groups replacing earlier keys: train.py refuses a key given twice."""
    out: dict[str, str] = {}
    for group in groups:
        for item in group:
            out[item.split("=", 1)[0].lstrip("-")] = item
    return list(out.values())


# Logged numbers recorded from runs the tests repeat (see the file's "about").
LOGGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "logged_metrics.json")
# Fields that come from float reductions: other CPU kernels, and the log-probs' vocabulary blocking (newer than
# the recording), move their last bits, which Adam carries into later steps (up to 2e-5 relative by step 3).
# Everything else (rewards, counts, lengths, allocation, verifier counters, the schedule) must match exactly.
FLOAT_FIELDS = ("entropy", "grad_norm", "loss", "approx_kl", "modulation/")


def assert_logged_as_recorded(out, name: str) -> None:
    """The run in `out` wrote the recorded metrics.jsonl rows: the same rows, the recorded keys in the same order,
    the same values (float reductions within 1e-4 relative; with the recording's code and machine, bitwise)."""
    recorded = json.load(open(LOGGED))["runs"][name]
    rows = [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in open(os.path.join(out, "metrics.jsonl"))]
    assert len(rows) == len(recorded), (len(rows), len(recorded))
    for got, want in zip(rows, recorded):
        # the recorded fields, in the recorded order (fields added since may sit between them)
        assert [k for k in got if k in want] == list(want), (want["step"], list(got), list(want))
        for key, value in want.items():
            if key.startswith(FLOAT_FIELDS) and isinstance(value, float):
                assert abs(got[key] - value) <= 1e-4 * max(1.0, abs(value)), (want["step"], key, got[key], value)
            else:
                assert got[key] == value, (want["step"], key, got[key], value)
