"""Reward: is each response's final answer equivalent to its own prompt's reference? (dynamo.verifier)

Step 3 of train.py (docs/ALGORITHM.md §4: rewards +1 / -1).
"""
from __future__ import annotations

from dynamo.verifier import verify_batch


def score(responses: list[str], references: list[str], *, fallbacks: bool = False) -> list[bool]:
    """Correct or not, one verdict per (response, reference) pair, in order; never raises.

    `fallbacks` also accepts "The answer is ..." style endings (evaluation only; training rewards
    need the boxed answer the prompt asks for).
    """
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")
    return verify_batch(list(zip(responses, references)), fallbacks=fallbacks)
