# python -m pytest -q tests/test_eval_data.py  — validation curves during training (`eval_data`).
import json
import os

import pytest

import eval as eval_script
import train
from dynamo.rollout import derive_seed
from tests.helpers import SHIPPED_START, merged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["prompts_per_step=4", "rollouts_per_prompt=4", "eval_prompts=6", "eval_samples=2", "train_pool=8",
         f"model={SHIPPED_START}", "rollout.max_new_tokens=40", "eval_every=1", "sample_every=0", "steps=2",
         "checkpoint_every=0"]


def bench_file(path, pairs):
    with open(path, "w") as f:
        for i, (a, b) in enumerate(pairs):
            f.write(json.dumps({"problem": f"{a}+{b}=", "answer": str(a + b), "unique_id": f"q{i}"}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_data")
    small = bench_file(tmp / "small.jsonl", [(1, 2), (3, 4), (12, 30), (5, 5), (27, 15)])
    large = bench_file(tmp / "large.jsonl", [(123, 456), (640, 211), (905, 17)])
    out = tmp / "out"
    train.main(["--config", os.path.join(ROOT, "configs", "default.yaml"),
                *merged(SMALL, [f"eval_data=[{small}, {large}]", f"out_dir={out}"])])
    return out, small


def test_every_evaluation_reports_each_benchmark_and_their_mean(run):
    out, _ = run
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 1, 2]  # start, every eval_every, end
    for r in evals:
        assert {"eval/accuracy", "eval/small/avg@2", "eval/small/se", "eval/large/avg@2", "eval/mean/avg@2"} <= set(r)
        assert r["eval/mean/avg@2"] == pytest.approx((r["eval/small/avg@2"] + r["eval/large/avg@2"]) / 2)
        assert r["eval/small/avg@2"] in {i / 10 for i in range(11)}  # 5 problems x 2 samples
    summary = json.load(open(out / "summary.json"))
    assert "gain" in summary  # the built-in held-out split is still evaluated
    for name in ("small", "large"):
        b = summary["benchmarks"][name]
        assert b["start"] == evals[0][f"eval/{name}/avg@2"] and b["end"] == evals[-1][f"eval/{name}/avg@2"]
        assert b["gain"] == pytest.approx(b["end"] - b["start"]) and b["problems"] == (5 if name == "small" else 3)
    mean = summary["benchmarks_mean"]
    assert mean["start"] == pytest.approx(evals[0]["eval/mean/avg@2"])


def test_the_start_equals_eval_py_with_the_same_seed(run, tmp_path):
    """The same seeded sampler and grading as eval.py: its avg@2 of the shipped start on the same file, drawn
    from train.py's evaluation seed, is the training run's step-0 value."""
    out, small = run
    eval_script.main(["--model", SHIPPED_START, "--data", small, "--k", "2", "--output", str(tmp_path / "ev"),
                      f"seed={derive_seed(0, 'eval')}", "template=plain", "max_new_tokens=40", "bootstrap=10"])
    summary = json.load(open(tmp_path / "ev" / "summary.json"))
    step0 = next(json.loads(line) for line in open(out / "metrics.jsonl") if '"kind": "eval"' in line)
    assert summary["benchmarks"]["small"]["avg@2"] == step0["eval/small/avg@2"]


def test_bad_eval_data_stops_at_start(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1=", "answer": "2"}\n{"problem": "2+2="}\n')
    with pytest.raises(SystemExit, match=f"{bad}:2"):
        train.main(["--config", os.path.join(ROOT, "configs", "default.yaml"),
                    *merged(SMALL, [f"eval_data=[{bad}]", f"out_dir={tmp_path / 'out'}"])])
    (tmp_path / "a").mkdir()
    a = bench_file(tmp_path / "a" / "test.jsonl", [(1, 1)])
    b = bench_file(tmp_path / "test.jsonl", [(1, 1)])
    os.rename(b, tmp_path / "a.jsonl")  # named 'a' like a/test.jsonl
    with pytest.raises(SystemExit, match="two eval_data files are named 'a'"):
        train.main(["--config", os.path.join(ROOT, "configs", "default.yaml"),
                    *merged(SMALL, [f"eval_data=[{a}, {tmp_path / 'a.jsonl'}]", f"out_dir={tmp_path / 'out2'}"])])
