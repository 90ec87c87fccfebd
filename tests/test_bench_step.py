# python -m pytest -q tests/test_bench_step.py  — scripts/bench_step.py --quick runs and prints its table.
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_bench_prints_its_table():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_step.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("part ") and "time ratio" in line and "mem ratio" in line for line in lines)
    for case in ("sampler   old N=8", "sampler   new N=8", "chunked fwd 2x32", "chunked fwd+bwd 2x32",
                 "chunked fwd+bwd 4x32", "zero_adv  default.yaml 1 steps", "zero_adv  grpo.yaml 1 steps"):
        assert any(case in line for line in lines), case
    assert out.stdout.count("same tokens: True") == 2  # the old and the new sampler drew the same tokens
