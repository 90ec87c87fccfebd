"""Reward: is each response's final answer equivalent to its own prompt's reference? (dynamo.verifier)

Step 3 of train.py (`verify`: correct or not); `rewards` turns that into the reward, +1 / -1
(docs/ALGORITHM.md §4), the one place it is formed.
"""
from __future__ import annotations

import torch

from dynamo.verifier import stats, verify_batch

COUNTERS = ("parse_failures", "timeouts", "internal_errors")  # the verifier's counters a training step logs


def score(responses: list[str], references: list[str], *, fallbacks: bool = False) -> list[bool]:
    """Correct or not, one verdict per (response, reference) pair, in order; never raises.

    `fallbacks` also accepts "The answer is ..." style endings (evaluation only; training rewards
    need the boxed answer the prompt asks for).
    """
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")
    return verify_batch(list(zip(responses, references)), fallbacks=fallbacks)


def verify(responses: list[str], references: list[str], extraction: str) -> tuple[torch.Tensor, dict[str, int]]:
    """Step 3 of train.py: (correct (N,) bool, the verifier's counters over these responses). `extraction` is
    the config's reward.extraction ('boxed' | 'fallbacks'). The reward is `rewards(correct)`."""
    before = stats()
    correct = torch.tensor(score(responses, references, fallbacks=extraction == "fallbacks"))  # (N,)
    after = stats()
    return correct, {key: after[key] - before[key] for key in COUNTERS}


def rewards(correct: torch.Tensor) -> torch.Tensor:
    """The training reward of each response: +1 correct, -1 wrong (the official run's). correct: (N,) bool."""
    return correct.float() * 2 - 1
