# python -m pytest -q tests/test_data.py  — data files: verl RL rows in JSONL and Parquet, MATH rows, the real
# benchmark files, bad rows and formats, the chat template on messages, and prompts longer than the model's context.
import glob
import json
import os

import pytest
import torch

import train
from dynamo.data import read_benchmarks, read_problems, render
from dynamo.task import Problem
from tests.helpers import SHIPPED_START, tiny

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "shared", "benchmarks")

# Two rows in the layout of verl's RL data (DAPO-Math-17k has it): the prompt is a list of chat messages.
VERL_ROWS = [
    {"data_source": "math_dapo", "ability": "MATH",
     "prompt": [{"role": "user", "content": "Solve 3+4. Put the answer in \\boxed{}."}],
     "reward_model": {"ground_truth": "7", "style": "rule"}, "extra_info": {"index": 17, "split": "train"}},
    {"data_source": "math_dapo", "ability": "MATH",
     "prompt": [{"role": "system", "content": "You are careful."}, {"role": "user", "content": "Solve 5*6."}],
     "reward_model": {"ground_truth": "30", "style": "rule"}, "extra_info": {"index": 0, "split": "train"}},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_verl_rows_in_jsonl_and_parquet_read_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from_jsonl = read_problems(write_jsonl(tmp_path / "dapo.jsonl", VERL_ROWS))
    pq.write_table(pa.Table.from_pylist(VERL_ROWS), tmp_path / "dapo.parquet")
    from_parquet = read_problems(str(tmp_path / "dapo.parquet"))
    assert from_jsonl == from_parquet
    first, second = from_jsonl
    assert first == Problem("17", "Solve 3+4. Put the answer in \\boxed{}.", "7", "math_dapo",
                            (("user", "Solve 3+4. Put the answer in \\boxed{}."),))
    assert (second.prompt_id, second.answer, second.prompt) == ("0", "30", "Solve 5*6.")  # index 0 is an id
    assert second.messages == (("system", "You are careful."), ("user", "Solve 5*6."))
    numeric = [{**VERL_ROWS[0], "reward_model": {"ground_truth": 7}, "extra_info": {"index": "a1f3"}}]
    assert [(p.prompt_id, p.answer) for p in read_problems(write_jsonl(tmp_path / "n.jsonl", numeric))] == [("a1f3", "7")]


def test_math_style_training_rows(tmp_path):
    rows = [{"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra",
             "solution": "It is $\\boxed{2}$."},
            {"problem": "What is $2+3$?", "level": "Level 2", "type": "Algebra", "solution": "$\\boxed{5}$"}]
    problems = read_problems(write_jsonl(tmp_path / "math_train.jsonl", rows))
    assert [(p.prompt_id, p.answer, p.level, p.messages) for p in problems] == [
        ("math_train:1", "2", "Level 1", ()), ("math_train:2", "5", "Level 2", ())]


@pytest.mark.skipif(not os.path.isdir(BENCHMARKS), reason="the benchmark files are not beside this checkout")
def test_every_benchmark_file_reads_with_unique_ids_and_answers():
    paths = sorted(glob.glob(os.path.join(BENCHMARKS, "*", "*.jsonl")))
    assert len(paths) >= 7
    sets = read_benchmarks(paths)
    for name, problems in sets.items():
        assert problems and all(p.answer.strip() and p.prompt.strip() for p in problems), name
        assert len({p.prompt_id for p in problems}) == len(problems), name


def test_bad_rows_and_formats_stop_with_file_and_line(tmp_path):
    no_gold = [VERL_ROWS[0], {**VERL_ROWS[1], "reward_model": {"style": "rule"}}]
    with pytest.raises(ValueError, match=r"no_gold\.jsonl:2: a verl row .* reward_model\.ground_truth"):
        read_problems(write_jsonl(tmp_path / "no_gold.jsonl", no_gold))
    not_messages = [{**VERL_ROWS[0], "prompt": ["Solve 3+4."]}]
    with pytest.raises(ValueError, match=r"odd\.jsonl:1: 'prompt' is a list but not of chat messages"):
        read_problems(write_jsonl(tmp_path / "odd.jsonl", not_messages))
    (tmp_path / "data.csv").write_text("problem,answer\n1+1,2\n")
    with pytest.raises(ValueError, match=r"data\.csv: unknown data format '\.csv'; expected one of \.jsonl, \.parquet"):
        read_problems(str(tmp_path / "data.csv"))


def test_messages_go_through_the_chat_template_once_as_written():
    _, tok = tiny()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}" \
                        "{% if add_generation_prompt %}<assistant>{% endif %}"
    verl = Problem("0", "Solve 5*6.", "30", "x", (("system", "Be careful."), ("user", "Solve 5*6.")))
    assert render(verl, "chat", tok) == "<system>Be careful.<user>Solve 5*6.<assistant>"
    plain = Problem("1", "1+1=", "2", "x")
    assert render(plain, "chat", tok).count("1+1=") == 1 and render(plain, "chat", tok).startswith("<user>1+1=\n")
    assert render(verl, "boxed", tok).startswith("Solve 5*6.\n")
    tok.chat_template = None
    with pytest.raises(ValueError, match="template: chat needs a tokenizer with a chat template"):
        render(plain, "chat", tok)


def run_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        train.main(args)
    return str(e.value.code)


def test_train_stops_before_any_work_on_bad_input(tmp_path, capsys):
    base = ["--config", "configs/default.yaml", f"model={SHIPPED_START}", "steps=1", "eval_prompts=8"]
    long_row = {"problem": "1" * 100 + "+1=", "answer": "1" * 99 + "2"}  # BOS + 103 tokens + 48 new > 128 positions
    long_file = write_jsonl(tmp_path / "long.jsonl", [long_row])
    msg = run_error([*base, f"out_dir={tmp_path / 'a'}", f"eval_data=[{long_file}]"], capsys)
    assert "eval_data 'long'" in msg and "104 tokens" in msg and "152 positions" in msg and "has 128" in msg
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
    (tmp_path / "b.csv").write_text("x\n")
    msg = run_error([*base, f"out_dir={tmp_path / 'b'}", f"eval_data=[{tmp_path / 'b.csv'}]"], capsys)
    assert "unknown data format '.csv'" in msg
    no_gold = write_jsonl(tmp_path / "train.jsonl", [{**VERL_ROWS[0], "reward_model": {}}])
    msg = run_error([*base, f"out_dir={tmp_path / 'c'}", f"data={no_gold}"], capsys)
    assert "train.jsonl:1: a verl row" in msg


def test_placeholders_and_a_missing_gpu_are_named_before_any_work(tmp_path, capsys):
    msg = run_error(["--config", "configs/paper/qwen2.5-math-1.5b-1gpu.yaml", "device=auto",
                     f"out_dir={tmp_path / 'p'}"], capsys)
    assert "these paths do not exist" in msg
    for key in ["'model' = '/path/to/Qwen2.5-Math-1.5B'", "'data' = '/path/to/train.parquet'",
                "/path/to/benchmarks/aime24/test.jsonl", "/path/to/benchmarks/olympiadbench/test.jsonl"]:
        assert key in msg
    assert not (tmp_path / "p").exists()
    if not torch.cuda.is_available():
        msg = run_error(["--config", "configs/default.yaml", "device=cuda", f"out_dir={tmp_path / 'c'}"], capsys)
        assert "device = cuda, but this PyTorch sees no CUDA GPU" in msg and not (tmp_path / "c").exists()


def test_a_run_on_a_data_file_writes_its_summary(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"problem": "12+34=", "answer": "46"}, {"problem": "5*6=", "answer": "30"}])
    train.main(["--config", "configs/grpo.yaml", f"model={SHIPPED_START}", f"data={data}", "steps=1",
                "prompts_per_step=2", f"out_dir={tmp_path / 'o'}"])
    summary = json.load(open(tmp_path / "o" / "summary.json"))
    assert summary["config_file"] == "configs/grpo.yaml" and "commit" in summary and "start" not in summary
