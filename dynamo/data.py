"""Training and evaluation prompts: the built-in task, or a JSONL file of problems with answers.

Every prompt carries a stable `prompt_id` (the allocator's statistics are keyed by it) and its own
reference answer; responses are always joined to their prompt by index, never by position.
"""
from __future__ import annotations

import json
import os

import torch

from dynamo import task
from dynamo.task import Problem

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PROBLEM_FIELDS = ("problem", "question", "prompt")


def reference_from_row(row: dict) -> str:
    """Gold answer string of a JSONL row (the verifier knows the benchmark formats)."""
    from dynamo.verifier import reference_answer
    return reference_answer(row)


def read_jsonl(path: str) -> list[Problem]:
    """Problems from a JSONL file; malformed rows stop with the file and line number."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    problems, seen, duplicates = [], set(), 0
    name = os.path.splitext(os.path.basename(path))[0]
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: each line must be a JSON object")
            text = next((row[k] for k in PROBLEM_FIELDS if isinstance(row.get(k), str) and row[k].strip()), None)
            if text is None:
                raise ValueError(f"{path}:{line_no}: no problem text (looked for {', '.join(PROBLEM_FIELDS)})")
            try:
                answer = reference_from_row(row)
            except ValueError as e:
                raise ValueError(f"{path}:{line_no}: {e}") from None
            if text in seen:  # the same problem twice would split its statistics over two ids
                duplicates += 1
                continue
            seen.add(text)
            pid = next((str(row[k]) for k in ("unique_id", "id", "idx") if row.get(k) is not None),
                       f"{name}:{line_no}")  # an id of 0 is an id
            problems.append(Problem(pid, text, answer, str(row.get("level", name))))
    if not problems:
        raise ValueError(f"data file {path} holds no problems")
    ids = [p.prompt_id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: duplicate prompt id {dup!r}")
    if duplicates:
        print(f"[data] {path}: dropped {duplicates} duplicate problems")
    return problems


def load_problems(cfg) -> tuple[list[Problem], list[Problem]]:
    """(training pool, held-out problems) for the configured data."""
    if cfg.data == "arithmetic":
        return task.split(cfg.task_levels, cfg.seed, cfg.train_pool, cfg.eval_prompts)
    problems = read_jsonl(cfg.data)
    return problems, []  # held-out evaluation of real data sets is eval.py's job


def benchmark_name(path: str) -> str:
    """A benchmark file's name in logs and tables: its stem, or its folder's name for test.jsonl and the like."""
    stem = os.path.splitext(os.path.basename(path))[0]
    generic = stem in ("test", "train", "validation", "val", "data")
    return os.path.basename(os.path.dirname(os.path.abspath(path))) if generic else stem


def read_benchmarks(paths: list[str]) -> dict[str, list[Problem]]:
    """{name: problems} of the `eval_data` files; malformed rows stop with file and line."""
    out = {}
    for path in paths:
        name = benchmark_name(path)
        if name in out:
            raise ValueError(f"two eval_data files are named {name!r}; rename one of them")
        out[name] = read_jsonl(path)
    return out


def render(problem_text: str, template: str, tokenizer) -> str:
    """The prompt string the model continues."""
    if template == "plain":
        return problem_text
    if template == "boxed":
        return f"{problem_text}\n{BOXED_INSTRUCTION}\n"
    if template == "chat":
        messages = [{"role": "user", "content": f"{problem_text}\n{BOXED_INSTRUCTION}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r}")


class PromptOrder:
    """Epoch-wise shuffled order over the training pool; a step takes the next P prompts.

    The order of epoch e is a permutation seeded by (seed, e), so the position (epoch, cursor) is
    all that resume needs.
    """

    def __init__(self, pool_size: int, seed: int):
        self.pool_size, self.seed = pool_size, seed
        self.epoch, self.cursor = 0, 0

    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.pool_size, generator=g).tolist()

    def next(self, count: int) -> tuple[list[int], bool]:
        """(pool indices, whether an epoch started with this batch)."""
        out, new_epoch = [], self.cursor == 0
        perm = self._perm(self.epoch)
        while len(out) < count:
            if self.cursor == self.pool_size:
                self.epoch, self.cursor, new_epoch = self.epoch + 1, 0, True
                perm = self._perm(self.epoch)
            take = min(count - len(out), self.pool_size - self.cursor)
            out += perm[self.cursor:self.cursor + take]
            self.cursor += take
        return out, new_epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]


def drop_long_prompts(cfg, pool: list, tokenizer, log) -> list:
    """Prompts longer than rollout.max_prompt_tokens are skipped and counted, or stop the run."""
    limit = cfg.rollout.max_prompt_tokens
    lengths = [len(tokenizer(render(p.prompt, cfg.template, tokenizer))["input_ids"]) for p in pool]
    long = [p.prompt_id for p, n in zip(pool, lengths) if n > limit]
    if long and cfg.rollout.too_long == "stop":
        raise ValueError(f"{len(long)} prompts exceed rollout.max_prompt_tokens = {limit} (first: {long[0]!r}); "
                         "raise the limit or set rollout.too_long=skip")
    if long:
        log(f"[data] skipped {len(long)} of {len(pool)} prompts longer than {limit} tokens")
    kept = [p for p, n in zip(pool, lengths) if n <= limit]
    if not kept:
        raise ValueError(f"no training prompt fits rollout.max_prompt_tokens = {limit}")
    return kept
