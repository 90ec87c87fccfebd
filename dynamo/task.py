"""Built-in task: arithmetic with graded difficulty, answered column by column, ending in \\boxed{N}.

Levels: `addK` is K-digit + K-digit addition (K = 1..4), `mulK` is K-digit x 1-digit multiplication
(K = 2..4). A worked answer goes from the least significant column up, then boxes the result:
    347+58=   ->   7+8=15,4+5+1=10,3+1=4\\boxed{405}
    347*6=    ->   7*6=42,4*6+4=28,3*6+2=20\\boxed{2082}
Problems come from a seeded generator; the held-out split is fixed by the seed and never enters the
training pool or the warm-up data.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

LEVELS = ("add1", "add2", "add3", "add4", "mul2", "mul3", "mul4")


@dataclass(frozen=True)
class Problem:
    prompt_id: str  # stable id, unique within a data set
    prompt: str  # the text the model continues
    answer: str  # reference answer (what the box must contain)
    level: str  # difficulty level (built-in task) or the data set name
    messages: tuple = ()  # a chat prompt as written in the data ((role, content), ...); empty: `prompt` is the problem


def worked_answer(a: int, b: int, op: str) -> str:
    """The supervised target for `a op b =`: columns least-significant first, then the box."""
    steps, carry = [], 0
    if op == "+":
        da, db = str(a)[::-1], str(b)[::-1]
        for i in range(max(len(da), len(db))):
            terms = [d for d in (da[i:i + 1], db[i:i + 1]) if d] + ([str(carry)] if carry else [])
            s = sum(int(t) for t in terms)
            steps.append("+".join(terms) + f"={s}")
            carry = s // 10
        result = a + b
    else:
        for d in str(a)[::-1]:
            s = int(d) * b + carry
            steps.append(f"{d}*{b}" + (f"+{carry}" if carry else "") + f"={s}")
            carry = s // 10
        result = a * b
    return ",".join(steps) + "\\boxed{" + str(result) + "}"


def _operands(level: str, rng: random.Random) -> tuple[int, int, str]:
    kind, k = level[:3], int(level[3:])
    lo, hi = (0 if k == 1 else 10 ** (k - 1)), 10 ** k - 1
    if kind == "add":
        return rng.randint(lo, hi), rng.randint(lo, hi), "+"
    if kind == "mul":
        return rng.randint(lo, hi), rng.randint(2, 9), "*"
    raise ValueError(f"unknown task level {level!r}; known: {', '.join(LEVELS)}")


def make_problem(level: str, rng: random.Random) -> tuple[str, str, str]:
    """(prompt, reference answer, worked answer) for one random problem of `level`."""
    a, b, op = _operands(level, rng)
    return f"{a}{op}{b}=", str(a + b if op == "+" else a * b), worked_answer(a, b, op)


def split(levels, seed: int, train_size: int, heldout_size: int) -> tuple[list[Problem], list[Problem]]:
    """Fixed held-out split and training pool, levels interleaved, no prompt in both or twice."""
    for level in levels:
        _operands(level, random.Random(0))  # validates the name
    rng = random.Random(f"arithmetic-{seed}")
    seen: set[str] = set()
    out: list[list[Problem]] = [[], []]
    for part, size in ((1, heldout_size), (0, train_size)):  # held-out first: it never depends on train_size
        attempts = 0
        while len(out[part]) < size:
            level = levels[len(out[part]) % len(levels)]
            prompt, answer, _ = make_problem(level, rng)
            attempts += 1
            if attempts > 100 * size:
                raise ValueError(f"cannot draw {size} distinct problems from levels {levels}")
            if prompt in seen:  # add1 has only 100 distinct problems
                continue
            seen.add(prompt)
            out[part].append(Problem(f"{level}:{prompt}", prompt, answer, level))
    return out[0], out[1]


def supervised_batch(levels, heldout: set[str], rng: random.Random, size: int) -> list[tuple[str, str]]:
    """Fresh (prompt, worked answer) pairs for the warm-up, never from the held-out split."""
    batch = []
    while len(batch) < size:
        prompt, _, target = make_problem(rng.choice(levels), rng)
        if prompt not in heldout:
            batch.append((prompt, target))
    return batch
