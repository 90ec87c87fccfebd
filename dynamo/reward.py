"""Reward: is each response's final boxed answer equal to its own prompt's reference?"""
from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def score(responses: list[str], references: list[str]) -> list[bool]:
    """Correct or not, one verdict per (response, reference) pair, in order."""
    assert len(responses) == len(references), "one reference per response"
    out = []
    for response, reference in zip(responses, references):
        boxes = _BOXED.findall(response)
        out.append(bool(boxes) and boxes[-1].strip() == reference.strip())
    return out
