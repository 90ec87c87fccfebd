"""Training and evaluation prompts: the built-in task, or a file of problems with answers.

A data file is JSONL (one JSON object per line) or Parquet (needs pyarrow), in any of these row formats:
  - benchmark rows: the problem in `problem`, `question` or `prompt` (a string), the answer in `answer`,
    `final_answer` (OlympiadBench) or the last \\boxed{} of `solution` (MATH, Minerva);
  - verl's RL rows (DAPO-Math-17k is one): `prompt` a list of chat messages, the answer in
    `reward_model.ground_truth`, the set in `data_source`, the stable id in `extra_info.index`.
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
FORMATS = (".jsonl", ".parquet")


def reference_from_row(row: dict) -> str:
    """Gold answer string of a benchmark row (the verifier knows the benchmark formats)."""
    from dynamo.verifier import reference_answer
    return reference_answer(row)


def chat_messages(value) -> tuple:
    """((role, content), ...) of a verl `prompt` field; ValueError when it is not a list of messages."""
    out = []
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError("'prompt' is a list but not of chat messages ({'role': ..., 'content': ...})")
        out.append((m["role"], m["content"]))
    if not any(role == "user" and content.strip() for role, content in out):
        raise ValueError("'prompt' holds no user message with text")
    return tuple(out)


def problem_from_row(row, name: str, where: str, fallback_id: str) -> Problem:
    """One Problem from a data row of any supported format; `where` names the row in errors ('file:line'),
    `fallback_id` is its prompt id when the row has none."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: each row must be a JSON object")
    messages = ()
    if isinstance(row.get("prompt"), (list, tuple)):  # verl's RL row
        try:
            messages = chat_messages(row["prompt"])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        gold = (row.get("reward_model") or {}).get("ground_truth") if isinstance(row.get("reward_model"), dict) else None
        if isinstance(gold, (list, tuple)):
            gold = ",".join(str(g) for g in gold)
        if gold is None or isinstance(gold, bool) or not str(gold).strip():
            raise ValueError(f"{where}: a verl row (its 'prompt' is a list of messages) needs its answer in "
                             "reward_model.ground_truth, and this one has none")
        text, answer = [c for r, c in messages if r == "user"][-1], str(gold).strip()
        extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
        ident = extra.get("index")
        level = str(row.get("data_source") or name)
    else:
        text = next((row[k] for k in PROBLEM_FIELDS if isinstance(row.get(k), str) and row[k].strip()), None)
        if text is None:
            raise ValueError(f"{where}: no problem text (looked for {', '.join(PROBLEM_FIELDS)}, "
                             "or a verl 'prompt' list of chat messages)")
        try:
            answer = reference_from_row(row)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        ident = next((row[k] for k in ("unique_id", "id", "idx") if row.get(k) is not None), None)
        level = str(row.get("level", name))
    pid = str(ident) if ident is not None else fallback_id  # an id of 0 is an id
    return Problem(pid, text, answer, level, messages)


def read_rows(path: str):
    """(row, 'file:line' or 'file:row N', line or row number) of a JSONL or Parquet file; malformed JSON stops
    with its line."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unknown data format {ext or '(no extension)'!r}; expected one of "
                         f"{', '.join(FORMATS)} (JSONL: one JSON object per line)")
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield row, f"{path}:row {i}", i
        return
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: malformed JSON ({e.msg})") from None
            yield row, f"{path}:{line_no}", line_no


def read_problems(path: str) -> list[Problem]:
    """Problems from a JSONL or Parquet file; a bad row stops with the file and line (or row) number."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    problems, seen, duplicates = [], set(), 0
    name = os.path.splitext(os.path.basename(path))[0]
    for row, where, number in read_rows(path):
        p = problem_from_row(row, name, where, fallback_id=f"{name}:{number}")
        key = (p.messages, p.prompt)
        if key in seen:  # the same problem twice would split its statistics over two ids
            duplicates += 1
            continue
        seen.add(key)
        problems.append(p)
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
    problems = read_problems(cfg.data)
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
        out[name] = read_problems(path)
    return out


def render(problem: Problem, template: str, tokenizer) -> str:
    """The prompt string the model continues. A problem with chat messages (a verl row) keeps them as
    written under `chat` (they carry their own instruction); `plain` and `boxed` use its last user message."""
    if template == "plain":
        return problem.prompt
    if template == "boxed":
        return f"{problem.prompt}\n{BOXED_INSTRUCTION}\n"
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template: chat needs a tokenizer with a chat template, and this model's has none "
                             "(a base model?): use template=boxed or template=plain")
        messages = ([{"role": r, "content": c} for r, c in problem.messages] or
                    [{"role": "user", "content": f"{problem.prompt}\n{BOXED_INSTRUCTION}"}])
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
    lengths = [len(tokenizer(render(p, cfg.template, tokenizer))["input_ids"]) for p in pool]
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


def check_context(prompts: list[str], what: str, tokenizer, max_new_tokens: int, model) -> None:
    """Stop before any work when the longest of `prompts` plus `max_new_tokens` exceeds the model's positions."""
    context = getattr(model.config, "max_position_embeddings", None)
    if not prompts or not context:
        return
    longest = max(len(ids) for ids in tokenizer(prompts)["input_ids"])
    if longest + max_new_tokens > context:
        raise ValueError(f"the longest prompt of {what} has {longest} tokens, and with max_new_tokens = "
                         f"{max_new_tokens} a rollout needs {longest + max_new_tokens} positions; the model has "
                         f"{context} (max_position_embeddings): lower max_new_tokens or leave the longest prompts out "
                         "(training prompts: rollout.max_prompt_tokens with rollout.too_long=skip)")
