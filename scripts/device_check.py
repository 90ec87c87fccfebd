"""Check a lent GPU in one command: what this code does on CUDA, in parts, within a time budget (default 8 min).

    python scripts/device_check.py --out $OUT                 # on the lent machine (one GPU)
    python scripts/device_check.py --dry-run --out /tmp/dc    # every part on CPU at toy sizes (< 1 min on 2 cores)
    python scripts/device_check.py --parts shape,fsdp --budget-s 240   # a subset, within 4 minutes

Parts, in order (PARTS below); each has its own time cap, is skipped with a reason where it cannot run, and
a failure (its error and last traceback lines recorded) never stops the parts after it:
  environment  torch / CUDA / NCCL versions, GPU name and memory; peak memory bandwidth from a table of known
               GPUs, and a device-to-device copy's bandwidth (used where the GPU is not in the table).
  agreement    CPU against CUDA from the shipped warmed start (assets/warmed-tiny): 16 prompts of the main job x 8
               rollouts with step 1's seeds, sampled on both (dynamo.rollout.sample; on CUDA in strict float32 and
               with TF32 matmuls); the fraction of rollouts with identical tokens, and the largest log-prob
               difference over those rows (dynamo.logprobs.response_token_stats); then train.py on configs/default.yaml with device=cuda
               steps=10 and with device=cpu steps=10 at once, their step lines side by side.
  shape        a random model of Qwen2.5-Math-1.5B's shape (scripts/random_model.py, no download) under the
               single-GPU recipe (configs/paper/qwen2.5-math-1.5b-1gpu.yaml) cut to 32 prompts x 4 rollouts x
               256 new tokens, 2 steps: peak GPU memory against 16 bytes/param + KV cache, the step split
               (metrics.jsonl time/*), generated tokens/s against the memory-bandwidth bound.
  fsdp         the same run under torchrun --nproc_per_node 1 with FSDP2 and parallel.mixed_precision=bf16:
               peak memory, step times, the final (sharded) checkpoint, no error.
  bench        scripts/bench_step.py's measurements on the device: it has no device flag, so its sampler and
               log-prob cases run here through its own functions with tensors on the device, and its zero_adv
               part runs as it is (its train.py runs take device=auto, which is CUDA where there is one).

Outputs in --out (default $OUT if set, else runs/device_check): device_check.json (every part's status ok /
skipped / failed, or running / pending in a run that was killed; its time cap, seconds, results, and for a
failure its error and traceback tail) and device_check.log, both rewritten when a part starts and after it ends,
so a run cut short keeps what it measured; each subprocess's full output is <part>-<name>.log beside them.
Models, checkpoints and run directories go to --work (a temporary directory, removed at the end), never to
--out. Exit status: 0, or 1 when a part failed (143 on SIGTERM, after writing the report).

Budget: --budget-s N (default 480). A part's cap is its share (its weight in PARTS) of the seconds left when it
starts, so time a part does not use goes to the parts after it; a part whose cap is below what it needs is
skipped, and parts shrink (steps, tokens, the zero_adv runs, the final checkpoint) when their cap is small.
`--dry-run` runs every part on the CPU at toy sizes (a small random model stands in for the 1.5B shape, the
agreement part compares the CPU with itself): tests/test_device_check.py runs it, so the script cannot rot
between loans.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import inspect
import math
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MAIN_CONFIG = "configs/default.yaml"  # paths relative to ROOT, where everything runs
RECIPE_1GPU = "configs/paper/qwen2.5-math-1.5b-1gpu.yaml"
GIB = 1 << 30
RESERVE_S = 15
CHILD_MARK = "DEVICE_CHECK_CHILD "  # the line a --train-child process prints its peak memory on
# A stand-in for the 1.5B shape in --dry-run: random weights (responses run to max_new_tokens, as the 1.5B's do)
# and enough positions for the recipe's chat-template prompts.
TOY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, rope_theta=10000.0,
                 tie_word_embeddings=True)


class Skip(Exception):
    """A part that cannot run here; its message is the reason recorded."""


class PartTimeout(Exception):
    """A part ran past its time cap."""


class Terminated(BaseException):
    """SIGTERM (the lender's time is up): record the running part, write the report, stop."""


# ------------------------------------------------------------------------------------------------ the harness

class Check:
    """The run's state: options, device, deadline, the report and its files, and the subprocesses a part started."""

    def __init__(self, args):
        self.dry, self.out, self.budget = args.dry_run, os.path.abspath(args.out), args.budget_s
        os.makedirs(self.out, exist_ok=True)
        self.work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="device_check-"))
        os.makedirs(self.work, exist_ok=True)
        self.cuda = torch.cuda.is_available() and not self.dry
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.t0 = time.time()
        # Kept back from the budget: the imports before t0, a last part's stop_jobs grace, the report and clean-up.
        self.deadline = self.t0 + self.budget - RESERVE_S
        self.part_deadline = self.deadline  # the running part's: run_parts sets it
        self.jobs: list[subprocess.Popen] = []
        # On the shared 2-core machine a dry run's processes take one thread each (two at once share the cores).
        self.env = {"OMP_NUM_THREADS": "1"} if self.dry else {}
        self.shared: dict = {}  # what one part hands a later one (the bandwidth, the 1.5B model directory)
        self.report = {"script": "scripts/device_check.py", "argv": sys.argv[1:], "dry_run": self.dry,
                       "device": self.device.type, "budget_s": self.budget,
                       "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "finished": False, "parts": {}}
        self.log_file = open(os.path.join(self.out, "device_check.log"), "w")

    def log(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def save(self) -> None:
        """device_check.json, replaced whole (a reader never sees half a file)."""
        self.report["elapsed_s"] = round(time.time() - self.t0, 1)
        path = os.path.join(self.out, "device_check.json")
        with open(path + ".tmp", "w") as f:
            json.dump(plain(self.report), f, indent=1, default=str)
        os.replace(path + ".tmp", path)

    def start(self, cmd: list[str], name: str) -> tuple[subprocess.Popen, str]:
        """Start cmd in ROOT, its output to <out>/<name>.log, in its own process group (torchrun's workers
        are stopped with it)."""
        path = os.path.join(self.out, f"{name}.log")
        self.log(f"$ {' '.join(cmd)}   (> {name}.log)")
        with open(path, "w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **self.env})
        self.jobs.append(proc)
        return proc, path

    def wait(self, job: tuple[subprocess.Popen, str]) -> str:
        """The job's output once it ends; an exit status other than 0 raises with the output's last lines."""
        proc, path = job
        rc = proc.wait()
        self.jobs.remove(proc)
        with open(path) as f:
            text = f.read()
        if rc:
            raise RuntimeError(f"{os.path.basename(path)}: exit status {rc}; last lines:\n{tail(text, 25)}")
        return text

    def run(self, cmd: list[str], name: str) -> str:
        return self.wait(self.start(cmd, name))

    def stop_jobs(self) -> None:
        """Stop what the part started and left running (after a timeout or an error): SIGTERM to each job's
        process group, SIGKILL after 5 s (train.py answers SIGTERM by finishing its step and checkpointing)."""
        for proc in self.jobs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.jobs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.jobs.clear()

    def left(self) -> float:
        """Seconds left in the running part's cap (a part shrinks what comes next in it by this)."""
        return self.part_deadline - time.time()

    def need_device(self) -> None:
        if not self.dry and not self.cuda:
            raise Skip(f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False); "
                       "--dry-run runs this part on the CPU")

    def workdir(self, name: str) -> str:
        """A fresh directory under --work (a rerun must not resume the last run's finished out_dir)."""
        path = os.path.join(self.work, name)
        shutil.rmtree(path, ignore_errors=True)
        return path


def plain(x):
    """x with every NaN or infinity as None: device_check.json stays strict JSON."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise PartTimeout in this (main) thread after `seconds`; a subprocess being waited for is then stopped."""
    def on_alarm(signum, frame):
        raise PartTimeout(f"time cap of {seconds:.0f}s reached")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_parts(chk: Check, names: list[str]) -> None:
    """Each part in turn, capped at its share of the time left; the report is written before and after each."""
    todo = [p for p in PARTS if p[0] in names]
    for name, *_ in todo:  # listed from the start: a run killed outright still shows what never ran
        chk.report["parts"][name] = {"status": "pending"}
    for i, (name, fn, weight, need_s) in enumerate(todo):
        cap = (chk.deadline - time.time()) * weight / sum(p[2] for p in todo[i:])
        entry = chk.report["parts"][name] = {"status": "running", "cap_s": round(cap, 1), "results": {}}
        need_s = 1 if chk.dry else need_s
        if cap < need_s:
            entry.update(status="skipped", reason=f"budget: {cap:.0f}s left for this part, it needs {need_s}s")
            chk.log(f"== {name}: skipped ({entry['reason']})")
            chk.save()
            continue
        chk.log(f"== {name} (cap {cap:.0f}s)")
        chk.save()
        t = time.time()
        chk.part_deadline = t + cap
        try:
            with time_cap(cap):
                fn(chk, entry["results"])
            entry["status"] = "ok"
        except Skip as e:
            entry.update(status="skipped", reason=str(e))
        except BaseException as e:  # everything: a failed part must not stop the next one
            entry.update(status="failed", error=f"{type(e).__name__}: {e}"[:4000],
                         traceback=tail(traceback.format_exc(), 15))
            if isinstance(e, (Terminated, KeyboardInterrupt)):
                raise
        finally:
            chk.stop_jobs()
            entry["seconds"] = round(time.time() - t, 1)
            chk.log(f"== {name}: {entry['status']} in {entry['seconds']}s"
                    + (f" ({entry.get('reason') or entry.get('error')})" if entry["status"] != "ok" else ""))
            chk.save()


# ------------------------------------------------------------------------------------------------ helpers

def load_script(name: str):
    """A module from scripts/ (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_extra(fn, device: torch.device) -> int:
    """Bytes fn() allocates at its peak above what was allocated before it: the CUDA caching allocator's counters
    on a GPU; on the CPU, bench_step's resident-set high-water mark (in-process, so it can read low)."""
    if device.type != "cuda":
        return load_script("bench_step").peak_extra_bytes(fn)
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated() - before


def table_bandwidth(name: str, total_bytes: int) -> float | None:
    """Peak memory bandwidth (bytes/s) of a known GPU, from its name; None for one not in the table (H100 NVL,
    3.9 TB/s, is not: it is measured)."""
    n = name.upper()
    if "H200" in n:
        return 4.8e12
    if "H100" in n and "NVL" not in n:
        return 2.0e12 if "PCIE" in n else 3.35e12  # "H100 80GB HBM3" is the SXM part
    if "A100" in n:
        return 2.0e12 if total_bytes > 60 * GIB else 1.55e12
    return None


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a device-to-device copy of nbytes (read + written), best of 5 after a warm-up."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return 2 * nbytes / best


def bandwidth(chk: Check) -> float:
    """Bytes/s of the device's memory, as part `environment` found it (run here when that part was not)."""
    if "bandwidth" not in chk.shared:
        part_environment(chk, {})
    return chk.shared["bandwidth"]


def model_arch(model_dir: str) -> dict:
    """Parameter count (from the safetensors headers: a tied head counts once) and the KV-cache shape."""
    from safetensors import safe_open
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    params = 0
    for name in os.listdir(model_dir):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, name), "pt") as st:
                for key in st.keys():
                    params += torch.Size(st.get_slice(key).get_shape()).numel()
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return {"params": params, "layers": c["num_hidden_layers"], "kv_heads": c["num_key_value_heads"],
            "head_dim": head_dim}


def longest_prompt(argv: list[str], model_dir: str) -> int:
    """Tokens in the longest training prompt the config renders (the KV cache's prompt columns)."""
    from transformers import AutoTokenizer

    from dynamo.config import load_config
    from dynamo.data import load_problems, render
    from dynamo.rollout import encode_prompts
    cfg = load_config(argv)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    pool, _ = load_problems(cfg)
    return encode_prompts(tok, [render(p, cfg.template, tok) for p in pool], "cpu")[0].shape[1]


def child_report(text: str) -> dict:
    """The peak memory a --train-child process printed."""
    lines = [line for line in text.splitlines() if line.startswith(CHILD_MARK)]
    if not lines:
        raise RuntimeError("the training process printed no peak memory line")
    return json.loads(lines[-1][len(CHILD_MARK):])


def step_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("step ")]


def gib(x: float | None) -> float | None:
    return None if x is None else round(x / GIB, 3)


# ------------------------------------------------------------------------------------------------ 1. environment

def part_environment(chk: Check, res: dict) -> None:
    import transformers
    res.update(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
               cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(), cpu_count=os.cpu_count())
    with contextlib.suppress(Exception):  # a CPU-only build has no NCCL
        v = torch.cuda.nccl.version()
        res["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    if chk.device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        res.update(gpu=props.name, gpu_memory_gib=gib(props.total_memory), capability=f"{props.major}.{props.minor}",
                   gpu_count=torch.cuda.device_count(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
        table = table_bandwidth(props.name, props.total_memory)
        measured = copy_bandwidth(chk.device, 2 * GIB)
        torch.cuda.empty_cache()
    else:  # dry run: the CPU's memory stands in
        table, measured = None, copy_bandwidth(chk.device, (64 if chk.dry else 512) << 20)
    res.update(bandwidth_table_tb_s=table and table / 1e12, bandwidth_copy_tb_s=round(measured / 1e12, 3))
    chk.shared["bandwidth"] = table or measured  # the bound of part `shape` uses the peak where it is known
    res["bandwidth_used"] = "table" if table else "measured copy"


# ------------------------------------------------------------------------------------------------ 2. agreement

def rollout_rows(model, tokenizer, kwargs: dict) -> list[tuple[tuple, torch.Tensor]]:
    """Per rollout: (its response tokens up to EOS, their log-probs) under `model`."""
    from dynamo.logprobs import response_token_stats
    from dynamo.rollout import sample
    ro = sample(model, tokenizer, **kwargs)
    with torch.no_grad():
        logp = response_token_stats(model, ro.input_ids, ro.attention_mask, ro.prompt_length,
                                    temperature=kwargs["temperature"])["logp"].cpu()
    mask = ro.response_mask.cpu().bool()
    return [(tuple(r[m].tolist()), lp[m]) for r, m, lp in zip(ro.responses.cpu(), mask, logp)]


def sampling_agreement(chk: Check, res: dict) -> None:
    """The main job's first 16 prompts x 8 rollouts (4 x 8 in a dry run), with the seeds step 1 gives them, sampled
    on the CPU and on the device."""
    from dynamo.config import load_config
    from dynamo.data import load_problems, render
    from dynamo.model import load_pretrained
    from dynamo.rollout import derive_seed
    from dynamo.warmup import SHIPPED
    cfg = load_config(["--config", MAIN_CONFIG])
    model, tokenizer = load_pretrained(SHIPPED)
    problems = load_problems(cfg)[0][:4 if chk.dry else cfg.prompts_per_step]
    kwargs = dict(prompts=[render(p, cfg.template, tokenizer) for p in problems],
                  counts=[cfg.rollouts_per_prompt] * len(problems),
                  seeds=[derive_seed(cfg.rl_seed_resolved, "rollout", 1, p.prompt_id) for p in problems],
                  temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                  max_new_tokens=cfg.rollout.max_new_tokens)
    ref = rollout_rows(model.eval(), tokenizer, kwargs)
    on_device = copy.deepcopy(model).to(chk.device).eval()
    # On CUDA in both float32 modes: strict, and TF32 matmuls (train.py's tf32 key, on by default where it exists).
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for tf32 in [False, True] if chk.cuda else [False]:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            mode = "tf32" if tf32 else "fp32"
            got = res[f"sampling_{mode}"] = compare_rows(ref, rollout_rows(on_device, tokenizer, kwargs))
            chk.log(f"sampling ({mode}): {got['identical_fraction']:.3f} of {got['rollouts']} rollouts identical, "
                    f"max |logp diff| {got['max_logprob_diff_identical_rows']}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    del on_device
    if chk.cuda:
        torch.cuda.empty_cache()


def compare_rows(ref: list, got: list) -> dict:
    """How many rollouts have the same tokens, and the log-prob differences over those rows."""
    same = [a[0] == b[0] for a, b in zip(ref, got)]
    diffs = [(a[1] - b[1]).abs().max().item() for a, b, s in zip(ref, got, same) if s and len(a[0])]
    return {"rollouts": len(same), "identical_fraction": sum(same) / len(same),
            "first_different_rows": [i for i, s in enumerate(same) if not s][:10],
            "max_logprob_diff_identical_rows": max(diffs, default=None),
            "mean_of_row_max_logprob_diff": statistics.mean(diffs) if diffs else None}


def part_agreement(chk: Check, res: dict) -> None:
    chk.need_device()
    sampling_agreement(chk, res)
    # The main job on the device and on the CPU with the same arguments, at once (the CPU run needs no GPU).
    steps = 2 if chk.dry else 10 if chk.left() > 60 else 4
    toy = ["model=assets/warmed-tiny", "prompts_per_step=4", "eval_prompts=8", "eval_samples=1",
           "checkpoint_every=0"] if chk.dry else []  # the same start as model=tiny, without the large evaluations
    runs = {}
    for label, device in (("device", chk.device.type), ("cpu", "cpu")):
        out_dir = chk.workdir(f"main-{label}")
        argv = [sys.executable, "train.py", "--config", MAIN_CONFIG, f"device={device}", f"steps={steps}",
                *toy, f"out_dir={out_dir}"]
        runs[label] = (out_dir, chk.start(argv, f"agreement-train-{label}"))
    from dynamo.step_metrics import read_metrics
    texts = {label: chk.wait(job) for label, (_, job) in runs.items()}
    rows = {label: read_metrics(out_dir)["train"] for label, (out_dir, _) in runs.items()}
    first = rows["cpu"][0]  # every metric but the step number and the timings, where both runs logged it
    keys = [k for k in first if k != "step" and not k.startswith("time/") and k in rows["device"][0]
            and isinstance(first[k], (int, float))]
    res["train"] = {
        "args": f"--config {MAIN_CONFIG} steps={steps} {' '.join(toy)}".strip(),
        "step_lines": [{"device": a, "cpu": b} for a, b in zip(step_lines(texts["device"]), step_lines(texts["cpu"]))],
        "max_abs_diff": {k: max(abs(a[k] - b[k]) for a, b in zip(rows["device"], rows["cpu"])) for k in keys},
        "mean_step_s": {label: statistics.mean(r["time/step"] for r in rs) for label, rs in rows.items()}}


# ------------------------------------------------------------------------------------------------ 3. the 1.5B shape

def shape_model(chk: Check) -> str:
    """The 1.5B-shaped random model (or the toy one under --dry-run), written once per check under --work."""
    if "shape_model" not in chk.shared:
        path = chk.workdir("shape-model")
        name, shape = ("toy", TOY_SHAPE) if chk.dry else ("qwen2.5-math-1.5b", None)
        t = time.time()
        random_model = load_script("random_model")
        n = random_model.build(shape or random_model.SHAPES[name], path)  # bfloat16 on disk, as the script writes
        chk.log(f"wrote a random {name}-shaped model, {n / 1e9:.3f} B parameters, in {time.time() - t:.0f}s")
        chk.shared["shape_model"] = path
    return chk.shared["shape_model"]


def recipe_argv(chk: Check, model_dir: str, out_dir: str, cap: float) -> tuple[list[str], dict]:
    """train.py's arguments: the single-GPU recipe cut to fit minutes, on the built-in task (its data paths are
    placeholders); every row updated (a random model's advantages are all 0: the default would skip the update)."""
    if chk.dry:
        size = dict(prompts=4, n=2, new_tokens=8, steps=2)
    else:  # the recipe's 64 x 8 x 1024, 300 steps, cut; a short cap halves the responses
        size = dict(prompts=32, n=4, new_tokens=256 if cap >= 150 else 128, steps=2)
    argv = ["--config", RECIPE_1GPU, f"model={model_dir}", "data=arithmetic", "eval_data=[]",
            f"device={chk.device.type}", f"steps={size['steps']}", f"prompts_per_step={size['prompts']}",
            f"rollouts_per_prompt={size['n']}", f"allocator.n_min={max(1, size['n'] // 2)}",
            f"allocator.n_max={size['n'] * 3 // 2}",  # the recipe's n_min / n_max = 1/2 and 3/2 of n
            f"rollout.max_new_tokens={size['new_tokens']}", "eval_every=0", "eval_prompts=4", "eval_samples=1",
            "checkpoint_every=0", "sample_every=0", "skip_zero_advantage=false", "resume=", "overwrite=true",
            f"out_dir={out_dir}"]
    return argv, size


def child_cmd(argv: list[str], save: bool, torchrun: bool = False) -> list[str]:
    me = os.path.abspath(__file__)
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", me]
              if torchrun else [sys.executable, me])
    return [*launch, "--train-child", *([] if save else ["--no-save"]), "--", *argv]


def step_split(rows: list[dict]) -> list[dict]:
    return [{"step": r["step"], **{k: round(r[k], 3) for k in ("time/generate", "time/logprobs", "time/update",
                                                               "time/step")}} for r in rows]


def part_shape(chk: Check, res: dict) -> None:
    chk.need_device()
    from dynamo.step_metrics import read_metrics
    model_dir = shape_model(chk)
    out_dir = chk.workdir("shape-run")
    argv, size = recipe_argv(chk, model_dir, out_dir, chk.left())
    text = chk.run(child_cmd(argv, save=False), "shape-train")
    peak = child_report(text)
    res["memory_plan"] = next((line for line in text.splitlines() if line.startswith("memory plan")), None)
    rows = read_metrics(out_dir)["train"]
    arch, prompt = model_arch(model_dir), longest_prompt(argv, model_dir)
    n_rows, positions, fp32 = size["prompts"] * size["n"], prompt + size["new_tokens"], 4  # dtype float32
    kv_per_position = 2 * arch["layers"] * arch["kv_heads"] * arch["head_dim"] * fp32  # bytes per row
    expected = 16 * arch["params"] + kv_per_position * n_rows * positions
    res.update(size=size, argv=" ".join(argv), params=arch["params"], longest_prompt_tokens=prompt, peak=peak,
               memory={"measured_peak_gib": gib(peak["peak_loop"]), "arithmetic_gib": gib(expected),
                       "weights_grads_adamw_gib": gib(16 * arch["params"]),
                       "kv_cache_gib": gib(kv_per_position * n_rows * positions),
                       "measured_over_arithmetic": round(peak["peak_loop"] / expected, 3),
                       "note": "arithmetic: fp32 weights + grads + AdamW (16 B/param) + KV cache of every row at full "
                               "length; the rest of the peak is the update's activations and the log-prob blocks"},
               steps=step_split(rows))
    # Generation against the bound: each decode step reads every weight and the KV cache (at its mean length).
    last = rows[-1]
    tokens = n_rows * last["response_length"]
    bytes_per_decode = fp32 * arch["params"] + kv_per_position * n_rows * (prompt + size["new_tokens"] / 2)
    bound = n_rows * bandwidth(chk) / bytes_per_decode
    res["generation"] = {"step": last["step"], "tokens": tokens, "seconds": round(last["time/generate"], 3),
                         "tokens_per_s": round(tokens / last["time/generate"], 1),
                         "bound_tokens_per_s": round(bound, 1),
                         "fraction_of_bound": round(tokens / last["time/generate"] / bound, 4),
                         "bytes_per_decode_step_gib": gib(bytes_per_decode)}
    chk.shared["shape_peak"] = peak["peak_loop"]


# ------------------------------------------------------------------------------------------------ 4. FSDP2, bf16

def part_fsdp(chk: Check, res: dict) -> None:
    chk.need_device()
    if not torch.distributed.is_available():
        raise Skip("this torch has no torch.distributed")
    if chk.cuda and not torch.distributed.is_nccl_available():
        raise Skip("this torch has no NCCL")
    from dynamo.step_metrics import read_metrics
    model_dir = shape_model(chk)  # built by part `shape`, or here if that part did not run
    out_dir = chk.workdir("fsdp-run")
    argv = recipe_argv(chk, model_dir, out_dir, chk.left())[0] + ["parallel.fsdp=true", "parallel.mixed_precision=bf16"]
    save = chk.dry or chk.left() >= 150  # the sharded checkpoint of 1.5B weights + AdamW state: tens of seconds
    peak = child_report(chk.run(child_cmd(argv, save=save, torchrun=True), "fsdp-train"))
    res.update(argv=" ".join(argv), peak=peak, peak_gib=gib(peak["peak_loop"]), checkpoint_saved=save,
               steps=step_split(read_metrics(out_dir)["train"]))
    if chk.shared.get("shape_peak"):
        res["peak_over_single_process_fp32"] = round(peak["peak_loop"] / chk.shared["shape_peak"], 3)
    shutil.rmtree(out_dir, ignore_errors=True)  # its checkpoint is tens of GB at the real shape


# ------------------------------------------------------------------------------------------------ 5. bench_step

def decode_step(model, rows: int, cache: int, device: torch.device):
    """bench_step's decode setup with its tensors on `device`: one new token per row over a KV cache of `cache`
    positions, cropped back after each step; returns (step function, {'logits': last logits})."""
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, vocab, (rows, cache), generator=gen).to(device), use_cache=True,
                    logits_to_keep=1)
    kv = out.cache if hasattr(out, "cache") else out.past_key_values  # transformers 5 names it `cache`
    token, last = torch.randint(0, vocab, (rows, 1), generator=gen).to(device), {}

    def step():
        with torch.no_grad():
            last["logits"] = model(input_ids=token, cache=kv, use_cache=True).logits[:, -1]  # (rows, V)
        kv.crop(-1)  # back to `cache` positions: every step sees the same length
        sync(device)
    return step, last


def bench_sampler(chk: Check, bs, size: dict) -> list[dict]:
    from dynamo.rollout import SeededSampler
    dev, table = chk.device, []
    model = bs.narrow_model(size["hidden"], size["layers"], size["vocab"]).to(dev)
    for rows in size["rows"]:
        step, last = decode_step(model, rows, size["cache"], dev)
        seeds, ids = (t.to(dev) for t in bs._sampler_inputs(rows, size["vocab"]))
        sampler = SeededSampler(seeds, 5, 1.0, 1.0)

        def draw():
            sampler(ids, last["logits"].clone())  # it writes over its scores
            sync(dev)
        times = bs.interleaved({"decode": step, "sampler": draw}, size["repeats"])
        extra = peak_extra(draw, dev)
        table.append({"case": f"sampler N={rows}", "sampler_s": statistics.median(times["sampler"]),
                      "decode_step_s": statistics.median(times["decode"]),
                      "time_ratio": bs.ratio(times["sampler"], times["decode"]), "peak_extra_mib": extra / (1 << 20),
                      "mem_ratio_to_NxV_f32": extra / (rows * size["vocab"] * 4)})
    return table


def bench_logprobs(chk: Check, bs, size: dict) -> list[dict]:
    dev, table = chk.device, []
    model = bs.narrow_model(size["lp_hidden"], 1, size["vocab"]).to(dev)
    rows, tokens = size["lp_size"]
    ids, attn, weights = (t.to(dev) for t in bs._logprob_inputs(argparse.Namespace(vocab=size["vocab"]), rows, tokens))
    for backward in (False, True):
        def call(fn, backward=backward):
            bs._logprob_call(model, fn, ids, attn, weights, backward)
            sync(dev)
        fns = {name: (lambda fn=fn: call(fn)) for name, fn in bs.LOGPROB_FNS.items()}
        times = bs.interleaved(fns, size["repeats"])
        mem = {}
        for name, fn in fns.items():
            model.zero_grad(set_to_none=True)  # the gradients of the call before are not this call's
            mem[name] = peak_extra(fn, dev)
        table.append({"case": f"chunked {'fwd+bwd' if backward else 'fwd'} {rows}x{tokens}",
                      "chunked_s": statistics.median(times["chunked"]), "naive_s": statistics.median(times["naive"]),
                      "speed_over_naive": bs.ratio(times["naive"], times["chunked"]),
                      "peak_extra_mib": mem["chunked"] / (1 << 20), "naive_peak_extra_mib": mem["naive"] / (1 << 20),
                      "mem_ratio": bs.share(mem["chunked"], mem["naive"])})
    return table


def part_bench(chk: Check, res: dict) -> None:
    chk.need_device()
    bs = load_script("bench_step")
    if chk.dry:  # bench_step's --quick sizes
        size = dict(vocab=4096, rows=[8], cache=16, hidden=64, layers=1, repeats=1, lp_hidden=64, lp_size=[2, 32])
    else:  # bench_step's defaults (V = 151,936; Qwen2.5-0.5B's width, 4 layers; 4 x 512 log-prob tokens)
        size = dict(vocab=bs.VOCAB, rows=[64, 256], cache=256, hidden=896, layers=4, repeats=5, lp_hidden=512,
                    lp_size=[4, 512])
    res["sizes"] = size
    res["sampler"] = bench_sampler(chk, bs, size)
    res["logprobs"] = bench_logprobs(chk, bs, size)
    if chk.cuda:
        torch.cuda.empty_cache()
    # zero_adv as bench_step runs it: 4 train.py runs (default.yaml and grpo.yaml, skipping zero-advantage rows
    # or not); on the GPU machine they take device=auto, so they run on CUDA. The dry run only checks that the
    # flags used are still there: the 4 runs would take half its minute, and tests/test_bench_step.py runs them.
    cmd = [sys.executable, "scripts/bench_step.py", "--part", "zero_adv", "--za-steps", "4", "--repeats", "1"]
    if chk.dry:
        source = inspect.getsource(bs.main)
        missing = [flag for flag in cmd[2:] if flag.startswith("--") and f'"{flag}"' not in source]
        if missing or "zero_adv" not in bs.PARTS:
            raise RuntimeError(f"scripts/bench_step.py no longer has {missing or 'its zero_adv part'}")
        res["zero_adv"] = f"not run in a dry run; on a GPU: {' '.join(cmd[1:])}"
    elif chk.left() >= 90:
        text = chk.run(cmd, "bench-zero_adv")
        res["zero_adv"] = [line for line in text.splitlines() if line.startswith("zero_adv")]
    else:
        res["zero_adv"] = "skipped: under 90 s left in this part's cap for its 4 train.py runs"


# ------------------------------------------------------------------------------------------------ main

# (name, function(check, results), weight: share of the budget, seconds it needs at least on a GPU)
PARTS = [("environment", part_environment, 10, 5), ("agreement", part_agreement, 80, 30),
         ("shape", part_shape, 170, 90), ("fsdp", part_fsdp, 120, 60), ("bench", part_bench, 90, 20)]


def train_child(argv: list[str]) -> None:
    """train.main(argv) in this process, then one line with its peak memory (rank 0). --no-save leaves out the
    final evaluation and checkpoint (finish()), which at the 1.5B shape costs tens of seconds and no measurement."""
    import train
    save = argv[:1] != ["--no-save"]
    argv = argv[argv.index("--") + 1:]
    cuda = torch.cuda.is_available() and "device=cpu" not in argv  # a dry run on a GPU machine measures the CPU
    report = {}

    def peak() -> int:
        return torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def finish(cfg, *args):
        report.update(peak_loop=peak(), kind="cuda max_memory_allocated" if cuda else "cpu max rss",
                      backend=torch.distributed.get_backend() if torch.distributed.is_initialized() else None)
        if cuda:
            report["peak_reserved"] = torch.cuda.max_memory_reserved()
        if save:
            original_finish(cfg, *args)
        else:
            from dynamo import distributed
            distributed.shutdown()
        report["peak_end"] = peak()

    original_finish, train.finish = train.finish, finish
    train.main(argv)
    if int(os.environ.get("RANK", "0")) == 0:
        print(CHILD_MARK + json.dumps(report), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--train-child"]:  # internal: one training process (see child_cmd)
        return train_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "runs", "device_check"),
                        help="report directory (default: $OUT if set, else runs/device_check)")
    parser.add_argument("--budget-s", type=float, default=480, help="the whole check ends within this many seconds")
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU at toy sizes")
    parser.add_argument("--parts", default=",".join(p[0] for p in PARTS), help="comma-separated subset of: "
                        + ", ".join(p[0] for p in PARTS))
    parser.add_argument("--work", help="models and run directories (default: a temporary directory, removed)")
    args = parser.parse_args()
    names = args.parts.split(",")
    unknown = set(names) - {p[0] for p in PARTS}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    chk = Check(args)  # --out and --work made absolute first
    os.chdir(ROOT)  # the configs' relative paths, in this process and in the ones it starts
    if chk.dry:
        torch.set_num_threads(1)  # as its subprocesses (Check.env)

    def on_term(signum, frame):
        raise Terminated(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    chk.log(f"device check: {chk.device.type}{' (dry run)' if chk.dry else ''}, budget {args.budget_s:.0f}s, "
            f"report in {chk.out}")
    status = 0
    try:
        run_parts(chk, names)
        chk.report["finished"] = True
    except (Terminated, KeyboardInterrupt) as e:
        chk.log(f"stopped: {type(e).__name__} {e}")
        for entry in chk.report["parts"].values():
            if entry["status"] == "pending":
                entry.update(status="skipped", reason=f"the check was stopped ({type(e).__name__} {e}) before it")
        status = 128 + signal.SIGTERM
    finally:
        chk.save()
        if not args.work:
            shutil.rmtree(chk.work, ignore_errors=True)
    summary = {n: p["status"] for n, p in chk.report["parts"].items()}
    chk.log(f"done in {time.time() - chk.t0:.0f}s: {summary}; {os.path.join(chk.out, 'device_check.json')}")
    sys.exit(status or int("failed" in summary.values()))  # 1: a part failed (its error is in the report)


if __name__ == "__main__":
    main()
