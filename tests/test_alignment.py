# python -m pytest -q tests/test_alignment.py  — every response stays attached to its own prompt
# (docs/ALGORITHM.md §8, bug 1).
import random

import torch

from dynamo.allocator import PromptStats
from dynamo.grpo import group_advantages
from dynamo.reward import score
from dynamo.rollout import sample
from dynamo.task import split
from tests.helpers import tiny


def test_unequal_counts_keep_answers_groups_and_statistics_aligned():
    model, tok = tiny(seed=2)
    pool, _ = split(["add1", "add2", "mul2"], seed=0, train_size=12, heldout_size=0)
    rng = random.Random(0)
    for trial in range(4):
        problems = rng.sample(pool, 5)
        counts = [rng.randint(1, 6) for _ in problems]  # deliberately non-uniform
        ro = sample(model, tok, [p.prompt for p in problems], counts, seeds=list(range(5)), temperature=1.0,
                    top_p=1.0, max_new_tokens=4)
        pidx = ro.prompt_index.tolist()
        # The prompt tokens of each row decode to the prompt its prompt_index names.
        for row, i in zip(ro.input_ids[:, :ro.prompt_length].tolist(), pidx):
            assert tok.decode([t for t in row if t != tok.pad_token_id], skip_special_tokens=True) == problems[i].prompt
        # Responses that print their own prompt's answer are right, another prompt's answer is wrong.
        own = [f"\\boxed{{{problems[i].answer}}}" for i in pidx]
        other = [f"\\boxed{{{problems[(i + 1) % 5].answer}}}" for i in pidx]
        mixed = [o if r % 2 else x for r, (o, x) in enumerate(zip(own, other))]
        refs = [problems[i].answer for i in pidx]  # the join train.py does
        assert score(own, refs) == [True] * len(pidx)
        correct = score(mixed, refs)
        expected = [r % 2 == 1 or problems[(i + 1) % 5].answer == problems[i].answer for r, i in enumerate(pidx)]
        assert correct == expected
        # Groups follow prompt_index: each group's advantages only see that prompt's rewards.
        rewards = torch.tensor(correct).float() * 2 - 1
        adv = group_advantages(rewards, ro.prompt_index)
        for j in range(5):
            rows = [r for r, i in enumerate(pidx) if i == j]
            assert len(rows) == counts[j]
            alone = group_advantages(rewards[rows], torch.zeros(len(rows), dtype=torch.long))
            assert torch.allclose(adv[rows], alone)
        # Statistics are updated from each response's own (prompt id, correct) pair, in any order.
        stats, shuffled = PromptStats(), PromptStats()
        pairs = [(problems[i].prompt_id, c) for i, c in zip(pidx, correct)]
        stats.update([p for p, _ in pairs], [c for _, c in pairs])
        rng.shuffle(pairs)
        shuffled.update([p for p, _ in pairs], [c for _, c in pairs])
        for j, p in enumerate(problems):
            k = sum(c for i, c in zip(pidx, correct) if i == j)
            assert stats.counts(p.prompt_id) == shuffled.counts(p.prompt_id) == (counts[j], k)
