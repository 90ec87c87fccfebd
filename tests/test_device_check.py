# python -m pytest -q tests/test_device_check.py  — the GPU check's dry run: every part runs on the CPU, none fails.
"""The GPU check is run only when a GPU is lent (for minutes); its dry run, every part on the CPU at toy sizes, keeps
it from rotting between loans: a changed flag, config key or function it calls fails here."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ["environment", "agreement", "shape", "fsdp", "bench"]


def test_dry_run_runs_every_part(tmp_path):
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "device_check.py"), "--dry-run",
                          "--out", str(out), "--work", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    report = json.loads((out / "device_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == PARTS
    assert all(p["status"] in ("ok", "skipped", "failed") for p in parts.values()), parts
    failed = {name: (p.get("error"), p.get("traceback")) for name, p in parts.items() if p["status"] == "failed"}
    assert not failed, failed
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert report["finished"] and report["dry_run"] and report["device"] == "cpu"
    assert (out / "device_check.log").read_text().count("== ") >= 2 * len(PARTS)  # each part's start and end
    # What each part measured is there (on the CPU, the agreement part compares the CPU with itself).
    agreement = parts["agreement"]["results"]
    assert agreement["sampling_fp32"]["identical_fraction"] == 1.0
    assert agreement["sampling_fp32"]["max_logprob_diff_identical_rows"] == 0.0
    assert len(agreement["train"]["step_lines"]) == 2
    assert set(parts["shape"]["results"]["memory"]) >= {"measured_peak_gib", "arithmetic_gib"}
    assert parts["shape"]["results"]["generation"]["tokens_per_s"] > 0
    assert parts["shape"]["results"]["memory_plan"].startswith("memory plan (estimate per GPU)")
    assert parts["fsdp"]["results"]["peak"]["backend"] == "gloo"
    assert [r["case"] for r in parts["bench"]["results"]["logprobs"]] == ["chunked fwd 2x32", "chunked fwd+bwd 2x32"]
    # Models and run directories go to --work, never to --out (which comes back from the lent machine).
    assert not [f for _, _, files in os.walk(out) for f in files if f.endswith(".safetensors")]
