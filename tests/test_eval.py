# python -m pytest -q tests/test_eval.py  — eval.py end to end: a tiny saved model, five-problem files in the seven benchmark formats, resume, errors, 2 ranks.
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from dynamo.evaluate import evaluate, sample_and_score
from dynamo.task import split
from tests.helpers import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["math500", "aime24", "aime25", "amc23", "gsm8k", "minerva_math", "olympiadbench"]


def benchmark_row(name: str, i: int) -> tuple[dict, str]:
    """(row in the layout of ../shared/benchmarks/<name>, the gold the verifier should read from it)."""
    a, b = (1000 * (i + 1), 234) if name == "gsm8k" else (i + 1, 3 * i + 2)
    q, s = f"{a}+{b}=", a + b
    return {
        "math500": ({"problem": q, "solution": f"So \\boxed{{{s}}}.", "answer": str(s), "subject": "Algebra",
                     "level": 1, "unique_id": f"test/algebra/{i}.json"}, str(s)),
        "aime24": ({"id": 60 + i, "problem": q, "question": q, "solution": "", "answer": f"{s:03d}", "url": ""},
                   f"{s:03d}"),  # leading zeros, as AIME golds have
        "aime25": ({"id": f"I-{i + 1}", "problem": q, "solution": "", "answer": str(s), "url": ""}, str(s)),
        "amc23": ({"id": i, "problem": q, "question": q, "answer": float(s), "url": ""}, str(s)),  # float gold
        "gsm8k": ({"question": q, "answer": f"Add them: {a}+{b}.\n#### {s:,}", "idx": i}, str(s)),  # '#### 1,234'
        "minerva_math": ({"problem": q, "solution": f"Adding, $\\boxed{{{s}}}$ m.", "idx": i, "type": "Test"}, str(s)),
        "olympiadbench": ({"id": 1600 + i, "subfield": "Algebra", "context": None, "question": q,
                           "solution": ["Add."], "final_answer": [f"${s}$"], "is_multiple_answer": False,
                           "unit": None, "answer_type": "Numerical", "error": None}, str(s)),
    }[name]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random model saved as a Hugging Face directory, and one five-problem file per format."""
    tmp = tmp_path_factory.mktemp("eval")
    model, tok = tiny(0)
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    paths, golds = [], {}
    for name in NAMES:
        os.makedirs(tmp / name)
        with open(tmp / name / "test.jsonl", "w") as f:
            for i in range(5):
                row, golds[name, i] = benchmark_row(name, i)
                f.write(json.dumps(row) + "\n")
        paths.append(str(tmp / name / "test.jsonl"))
    return tmp, paths, golds


def run_eval(args, cwd, launcher=(sys.executable,), timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([*launcher, os.path.join(ROOT, "eval.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def eval_args(tmp, paths, out):
    return ["--model", str(tmp / "model"), "--data", *paths, "arithmetic", "--k", "2", "max_new_tokens=6",
            "batch_rollouts=4", "bootstrap=50", "task_problems=5", f"output={out}"]


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def first_run(setup):
    tmp, paths, _ = setup
    res = run_eval(eval_args(tmp, paths, tmp / "out"), tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_table_json_and_samples(setup, first_run):
    tmp, _, golds = setup
    out = tmp / "out"
    for name in NAMES + ["arithmetic"]:
        assert f"{name}: 5 problems, 0 finished earlier (skipped), 5 to sample" in first_run.stdout
    summary = json.load(open(out / "summary.json"))
    rows = summary["benchmarks"]
    assert list(rows) == NAMES + ["arithmetic", "Avg"]
    for name, row in rows.items():
        for key in ("avg@2", "pass@1", "pass@2", "best@1", "best@2", "parse_failure_rate", "mean_response_length",
                    "truncation_rate", "problems"):
            assert key in row, (name, key)
        assert row["avg@2"] == pytest.approx(row["pass@1"]) and row["best@2"] <= row["pass@2"] + 1e-12
        lo, hi = row["pass@2_ci95"]
        assert 0 <= lo <= row["pass@2"] <= hi <= 1
        assert row["mean_response_length"] <= 6 and row["problems"] == (40 if name == "Avg" else 5)

    samples = [json.loads(line) for line in read_lines(out / "samples.jsonl")]
    assert len(samples) == 8 * 5 * 2 and not os.listdir(out / "parts")  # rank parts folded into one file
    assert {"benchmark", "id", "sample", "reference", "answer", "correct", "length", "truncated",
            "response"} <= set(samples[0])
    refs = {(r["benchmark"], r["id"]): r["reference"] for r in samples}
    ids = {name: [i for b, i in refs if b == name] for name in NAMES}
    assert "test/algebra/0.json" in ids["math500"] and "I-1" in ids["aime25"] and "60" in ids["aime24"]
    for name in NAMES:  # the gold answer was found in every format
        assert sorted(refs[name, i] for i in ids[name]) == sorted(golds[name, i] for i in range(5)), name
    for name in NAMES:  # the summary is what the samples say
        correct = [r["correct"] for r in samples if r["benchmark"] == name]
        assert rows[name]["avg@2"] == pytest.approx(sum(correct) / len(correct))

    table = read_lines(out / "table.md")
    assert table[0] == "| P@1 / P@2 (%) | " + " | ".join(NAMES + ["arithmetic", "Avg"]) + " |"
    assert len(re.findall(r"\d+\.\d / \d+\.\d", table[2])) == 9 and "pass@2, unbiased" in table[2]
    assert "best@2, verl bootstrap" in table[3] and table[0] in first_run.stdout


def test_rerun_skips_finished_problems(setup, first_run):
    tmp, paths, _ = setup
    out = tmp / "out"
    before, summary = read_lines(out / "samples.jsonl"), json.load(open(out / "summary.json"))
    res = run_eval(eval_args(tmp, paths, out), tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in NAMES + ["arithmetic"]:
        assert f"{name}: 5 problems, 5 finished earlier (skipped), 0 to sample" in res.stdout
    assert read_lines(out / "samples.jsonl") == before  # nothing regenerated
    assert json.load(open(out / "summary.json")) == summary  # recomputed from the samples: the same


def test_resumed_batches_sample_what_an_uninterrupted_run_would():
    model, tok = tiny(1)
    problems = split(["add2"], 0, 0, 5)[1]
    prompts = [p.prompt for p in problems]
    kw = dict(samples=3, temperature=1.0, top_p=1.0, max_new_tokens=5, seed=7, batch_rollouts=6)  # 2 per batch
    full = dict(sample_and_score(model, tok, problems, prompts, **kw))
    resumed = dict(sample_and_score(model, tok, problems, prompts, skip={0, 3}, **kw))
    assert sorted(resumed) == [1, 2, 4] and all(resumed[i] == full[i] for i in resumed)
    assert len(full[0]) == 3 and {"answer", "correct", "length", "truncated", "response"} == set(full[0][0])


def test_train_evaluate_keeps_its_keys_and_the_callers_rng():
    model, tok = tiny(2)
    problems = split(["add1", "mul2"], 0, 0, 6)[1]
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    kw = dict(samples=2, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=5)
    res = evaluate(model, tok, problems, [p.prompt for p in problems], **kw)
    assert torch.rand(1) == expected  # evaluating never moves the training run's random stream
    assert set(res) >= {"accuracy", "se", "per_problem", "levels"} and list(res["levels"]) == ["add1", "mul2"]
    assert len(res["per_problem"]) == 6 and res == evaluate(model, tok, problems, [p.prompt for p in problems], **kw)


def eval_module():
    """eval.py loaded as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location("eval_entry", os.path.join(ROOT, "eval.py"))
    module = sys.modules["eval_entry"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def eval_error(argv) -> str:
    """eval.py's main in this process (errors stop before the model loads); the message it exits with."""
    with pytest.raises(SystemExit) as e:
        eval_module().main([str(a) for a in argv])
    return str(e.value)


def test_errors_name_the_culprit(setup, first_run, tmp_path):
    tmp, paths, _ = setup
    model = ["--model", tmp / "model"]
    assert "no model directory or .gguf file at" in eval_error(["--model", tmp_path / "nope", "--data", paths[0]])
    assert "data file not found: " + str(tmp_path / "x.jsonl") in eval_error([*model, "--data", tmp_path / "x.jsonl"])
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "holds no problems" in eval_error([*model, "--data", tmp_path / "empty.jsonl"])
    (tmp_path / "bad.jsonl").write_text('{"problem": "1+1=", "answer": "2"}\n{"problem": \n')
    assert f"{tmp_path / 'bad.jsonl'}:2: malformed JSON" in eval_error([*model, "--data", tmp_path / "bad.jsonl"])
    (tmp_path / "odd.jsonl").write_text('{"problem": "1+1=", "gold": "2"}\n')
    msg = eval_error([*model, "--data", tmp_path / "odd.jsonl"])
    assert f"{tmp_path / 'odd.jsonl'}:1:" in msg and "no usable reference" in msg
    assert "config key 'temp'" in eval_error([*model, "--data", paths[0], "temp=0.5"])
    changed = eval_error([*eval_args(tmp, paths, tmp / "out"), "temperature=0.5"])
    assert "temperature" in changed and "output=DIR" in changed
    weights = tmp / "model" / "model.safetensors"  # a checkpoint re-saved under the same path
    stat = os.stat(weights)
    os.utime(weights, (stat.st_atime, stat.st_mtime + 10))
    try:
        assert "other weights" in eval_error(eval_args(tmp, paths, tmp / "out"))
    finally:
        os.utime(weights, (stat.st_atime, stat.st_mtime))


def test_two_ranks_split_problems_and_rank0_writes(setup, tmp_path):
    tmp, paths, _ = setup
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    res = run_eval(eval_args(tmp, paths[:2], tmp_path / "out"), tmp_path, launcher)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    samples = [json.loads(line) for line in read_lines(tmp_path / "out" / "samples.jsonl")]
    assert len(samples) == 3 * 5 * 2  # two files and arithmetic, each problem once, by one rank or the other
    assert len({(r["benchmark"], r["id"], r["sample"]) for r in samples}) == 30
    assert res.stdout.count("| P@1 / P@2 (%) |") == 1  # rank 0 alone prints and writes


def test_samples_do_not_depend_on_the_batching():
    model, tok = tiny(3)
    problems = split(["add2", "mul2"], 0, 0, 6)[1]
    prompts = [p.prompt for p in problems]
    kw = dict(samples=3, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=11)
    small = dict(sample_and_score(model, tok, problems, prompts, batch_rollouts=3, **kw))  # 1 problem a batch
    large = dict(sample_and_score(model, tok, problems, prompts, batch_rollouts=512, **kw))  # all at once
    assert small == large


def test_help_lists_every_key_with_its_default_and_meaning(capsys):
    import dataclasses
    from dynamo.config import help_rows
    cli = eval_module()
    cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python eval.py --model DIR")
    rows = {key: note for key, _, note in help_rows(cli.EvalConfig, cli.CHOICES)}
    assert sorted(rows) == sorted(f.name for f in dataclasses.fields(cli.EvalConfig)) and all(rows.values())
    assert 'template str = "auto" (auto|plain|boxed|chat)' in out
    # the long example keeps its line break: its continuation is a line of its own, as in the source
    assert "--k 32 \\\n        max_new_tokens=3072 dtype=bfloat16\n" in out
