# python -m pytest -q tests/test_measurement.py  — the measurement scripts in --quick mode (subprocesses, about 1 min on 2 cores).
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run(script, out, *extra, timeout=240):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--quick", "--out", str(out), *extra],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_grad_variance_quick(tmp_path):
    res = run("grad_variance.py", tmp_path)
    with open(tmp_path / "grad_variance.json") as f:
        rep = json.load(f)  # strict JSON: NaN is written as null
    assert rep["prompts"] == 6 and rep["budget"] == 24 and len(rep["pass_rate_oracle"]) == 6
    for est in ("mean", "grpo"):
        rows = {k: v for k, v in rep["estimators"][est].items() if not k.startswith("_")}
        assert set(rows) == {"uniform", "dynamo", "neyman_std", "water_level", "oracle", "oracle_neyman",
                             "window", "decay", "last_group", "beta_prior", "no_mastered", "grad_neyman"}
        for name, r in rows.items():
            # every allocation spends exactly the budget within the box (uniform: the nominal count)
            assert sum(r["counts"]) == rep["budget"] and min(r["counts"]) >= 1
            assert r["trace"] >= 0 and all(v is None or v >= -1e-6 for v in r["per_prompt_trace"])
            lo, hi = r["measured_ci95"]
            if r["measured_ratio"] is not None and lo is not None:
                assert lo <= r["measured_ratio"] + 1e-9 and r["measured_ratio"] <= hi + 1e-9
        assert rows["uniform"]["trace"] > 0, "precondition broken: no gradient at all from the shipped start"
        assert math.isclose(rows["uniform"]["measured_ratio"], 1.0)
    assert "measured [95% CI]" in res.stdout and "docs/ALGORITHM.md §1" in res.stdout


def test_experiments_quick(tmp_path):
    res = run("experiments.py", tmp_path)
    with open(tmp_path / "results.json") as f:
        out = json.load(f)
    assert set(out["arms"]) == {"grpo", "default"} and not out["missing"]
    assert [r["rc"] for r in out["runs"]] == [0, 0]
    for arm, e in out["arms"].items():
        assert 0.0 <= e["end"][0] <= 1.0 and e["seeds"] == [0]
        assert e["curve"]["step"] == [0, 2, 3] and e["curve"]["rollouts"] == [0, 32, 48]
        tokens = e["curve"]["tokens"]
        assert tokens[0] == 0 and tokens[1] < tokens[2]  # cumulative generated tokens grow
        assert abs(sum(v[0] for v in e["budget_share_after_epoch1"].values()) - 1) < 1e-9
    assert "end_minus_ref" in out["arms"]["default"] and out["reference"] == "grpo"
    md = (tmp_path / "results.md").read_text()
    assert "python scripts/experiments.py" in md and "| GRPO (`grpo`)" in md
    assert "| method |" in md and "AUC" in md  # the paper's layout, with the area under the curve
    e = out["arms"]["grpo"]
    assert 0.0 <= e["auc"][0] <= 1.0

    # grad_variance.py on a run's checkpoint: its policy and the statistics the run gathered (every visit)
    ckpt = tmp_path / "default" / "seed0" / "final"
    run("grad_variance.py", tmp_path / "gv", "--checkpoint", str(ckpt))  # settings and pool: the run's config.yaml
    rep = json.loads((tmp_path / "gv" / "grad_variance.json").read_text())
    assert rep["checkpoint"] == str(ckpt) and rep["first_round"] is None and min(rep["visits_per_prompt"]) >= 1
    sys.path.insert(0, ROOT)
    from dynamo.allocator import PromptStats
    from dynamo.checkpoint import load_state
    from dynamo.config import load_config
    from dynamo.data import load_problems
    stats = PromptStats()
    stats.load_state_dict(load_state(str(ckpt))["prompt_stats"])
    stats.refresh()
    cfg = load_config(["--config", str(tmp_path / "default" / "seed0" / "config.yaml")])
    ids = [p.prompt_id for p in load_problems(cfg)[0][:6]]
    assert rep["priority_by_option"]["official"] == stats.view(ids)[1]  # the run's own official priorities
    assert set(rep["priority_by_option"]) == {"official", "window", "decay", "last_group", "beta_prior", "no_mastered"}


def test_area_under_the_accuracy_curve():
    import importlib.util
    spec = importlib.util.spec_from_file_location("experiments", os.path.join(ROOT, "scripts", "experiments.py"))
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    assert math.isclose(exp.area_under_curve([0, 20, 40], [0.2, 0.4, 0.4]), 0.35)  # (0.3 * 20 + 0.4 * 20) / 40
    assert math.isclose(exp.area_under_curve([0, 10, 40], [0.0, 0.4, 0.4]), 0.35)  # uneven spacing: (2 + 12) / 40
    assert set(exp.PAPER_ARMS) == {"grpo", "default", "clip_higher", "entropy_loss", "fork_tokens", "entropy_adv",
                                   "clip_cov", "kl_cov", "w_reinforce"}
    assert all(os.path.exists(os.path.join(ROOT, "configs", f"{a}.yaml")) for a in exp.PAPER_ARMS)
