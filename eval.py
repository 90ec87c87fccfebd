r"""Evaluate a checkpoint on math benchmarks: avg@k, unbiased pass@k, verl's bootstrap best@k, 95 % CIs.

    python eval.py --model runs/default/final --data arithmetic --k 32         # the embedded default, CPU
    python eval.py --model /models/Qwen2.5-Math-1.5B --data /path/to/benchmarks/*/test.jsonl --k 32 \
        max_new_tokens=3072 dtype=bfloat16
    torchrun --standalone --nproc_per_node 8 eval.py --config my_eval.yaml      # problems split by rank

What the table reports (docs/ALGORITHM.md §7): P@1 is avg@k, the mean accuracy of k samples per problem; P@k is
the unbiased pass@k (Chen et al. 2021) in one row and verl's bootstrap best@k, which the paper's P@32
most likely is and which understates pass@k, in the other. Avg weighs every benchmark the same.
Benchmark files: any JSONL in the usual formats of MATH-500, AIME, AMC, GSM8K, Minerva and
OlympiadBench (docs/VERIFIER.md), the format found from the fields
(dynamo.verifier.reference_answer); `arithmetic` is the built-in task's held-out split.
Writes to `output`: samples.jsonl (one line per sample), summary.json (every metric with its bootstrap
CI) and table.md. Each rank appends to output/parts/rank<r>.jsonl as problems finish (so ranks need
one file system), and rank 0 folds the parts into samples.jsonl at the end. Rerunning with the same
output skips finished problems and recomputes the summary from the samples.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass, field

import torch
import yaml
from tqdm import tqdm

from dynamo import distributed as dist
from dynamo import metrics
from dynamo.config import ConfigError, dump, help_text, load_config, to_dict
from dynamo.data import benchmark_name, check_context, read_problems, render
from dynamo.evaluate import sample_and_score
from dynamo import memory
from dynamo.model import load_pretrained
from dynamo.task import LEVELS, split


@dataclass
class EvalConfig:
    model: str = ""  # local Hugging Face model directory, project checkpoint (e.g. runs/default/final) or .gguf file
    data: list = field(default_factory=lambda: ["arithmetic"])  # JSONL files; 'arithmetic' = built-in held-out split
    k: int = 32  # samples per problem: P@1 = avg@k, pass@j and best@j for j = 1, 2, 4, ..., k
    output: str = ""  # results directory; rerunning with the same one resumes; "" = runs/eval/<model>
    template: str = "auto"  # 'plain' | 'boxed' (base model) | 'chat' | 'auto': plain for arithmetic, else boxed
    temperature: float = 1.0  # sampling temperature (the paper's evaluation: 1.0, docs/ALGORITHM.md §7)
    top_p: float = 1.0  # nucleus sampling; 1.0 = the full distribution
    max_new_tokens: int = 48  # response length limit; longer responses are truncated and counted
    batch_rollouts: int = 0  # rollouts per generate call (batch_rollouts // k problems at a time); 0 = auto: 512 on
    # CPU, on CUDA as many as the KV cache of max_position_embeddings positions each leaves room for
    seed: int = 0  # sample j of a problem is drawn from a seed derived from (seed, problem id, j)
    bootstrap: int = 1000  # bootstrap resamples for best@k (as verl) and for the confidence intervals
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda'
    dtype: str = "float32"  # 'float32' | 'bfloat16'
    task_seed: int = 0  # built-in task: the training run's seed (it fixes the held-out split) ...
    task_levels: list = field(default_factory=lambda: list(LEVELS))  # ... its task_levels ...
    task_problems: int = 256  # ... and its eval_prompts


# What decides the samples: a rerun into the same output must keep them (weights: see weights_stamp).
SAMPLING_KEYS = ("model", "weights", "template", "temperature", "top_p", "max_new_tokens", "seed")
FLAGS = {"--model": "model", "--k": "k", "--output": "output"}
CHOICES = {"template": ("auto", "plain", "boxed", "chat"), "device": ("auto", "cpu", "cuda"),
           "dtype": ("float32", "bfloat16")}


def check(cfg: EvalConfig) -> None:
    """Inconsistent values stop the run before any work, each message naming its key."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"config key '{key}' = {getattr(cfg, key)!r}; choose one of {', '.join(allowed)}")
    if cfg.batch_rollouts < 0:
        raise ConfigError(f"config key 'batch_rollouts' must be >= 0 (0 = auto), got {cfg.batch_rollouts}")
    for key in ("k", "max_new_tokens", "bootstrap", "task_problems"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {getattr(cfg, key)}")
    if not 0.0 < cfg.temperature or not 0.0 < cfg.top_p <= 1.0:
        raise ConfigError(f"config keys 'temperature' > 0, 'top_p' in (0, 1] needed: {cfg.temperature}, {cfg.top_p}")
    if not (os.path.isdir(cfg.model) or (cfg.model.lower().endswith(".gguf") and os.path.isfile(cfg.model))):
        raise ConfigError(f"config key 'model': no model directory or .gguf file at {cfg.model!r} (give --model PATH)")
    if not cfg.data or not all(isinstance(d, str) for d in cfg.data):
        raise ConfigError(f"config key 'data': give a list of JSONL files or 'arithmetic', got {cfg.data!r}")
    for path in cfg.data:
        if path != "arithmetic" and not os.path.isfile(path):
            raise ConfigError(f"config key 'data': data file not found: {path}")


def parse_args(argv: list[str]) -> list[str]:
    """`--model DIR --data A B --k 32` as key=value overrides for load_config; other arguments pass as is."""
    out, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--data" or arg.startswith("--data="):
            paths = [arg.split("=", 1)[1]] if "=" in arg else []
            while args and not args[0].startswith("-") and "=" not in args[0]:
                paths.append(args.pop(0))
            out.append(f"data={json.dumps(paths)}")
        elif arg in FLAGS and args:  # paths as JSON strings, so that a directory named 123 stays a string
            value = args.pop(0)
            out.append(f"{FLAGS[arg]}={value if arg == '--k' else json.dumps(value)}")
        else:
            out.append(arg)
    return out


def load_benchmarks(cfg: EvalConfig) -> dict[str, list]:
    """{name: problems}; a file's name is its stem, or its folder's name for test.jsonl and the like."""
    out = {}
    for path in cfg.data:
        if path == "arithmetic":
            name, problems = "arithmetic", split(cfg.task_levels, cfg.task_seed, 0, cfg.task_problems)[1]
        else:
            name, problems = benchmark_name(path), read_problems(path)  # file:line on malformed rows or unknown formats
        if name in out:
            raise ValueError(f"two data sets are named {name!r}; rename one of the files")
        out[name] = problems
    return out


def weights_stamp(model_dir: str) -> list:
    """[file, size, mtime] of the weight files: a checkpoint re-saved under the same path is another model."""
    if os.path.isfile(model_dir):  # a .gguf file
        return [[os.path.basename(model_dir), os.path.getsize(model_dir), int(os.path.getmtime(model_dir))]]
    files = sorted(f for f in os.listdir(model_dir) if f.endswith((".safetensors", ".bin")))
    return [[f, os.path.getsize(os.path.join(model_dir, f)), int(os.path.getmtime(os.path.join(model_dir, f)))]
            for f in files]


def read_samples(output: str) -> dict[tuple[str, str], dict[int, dict]]:
    """{(benchmark, problem id): {sample index: record}} from samples.jsonl and the rank part files."""
    found: dict[tuple[str, str], dict[int, dict]] = {}
    parts = sorted(glob.glob(os.path.join(output, "parts", "*.jsonl")))  # read last: their records are newer
    for path in glob.glob(os.path.join(output, "samples.jsonl")) + parts:
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed run; that problem is redone
                    continue
                found.setdefault((r["benchmark"], r["id"]), {})[r["sample"]] = r
    return found


def main(argv: list[str]) -> None:
    # ---------------------------------------------------------------- config
    if {"-h", "--help"} & set(argv):
        print("usage: python eval.py --model DIR [--data FILE ... | arithmetic] [--k K] [--output DIR] [--config FILE] "
              "[key=value ...]\n" + __doc__ + "\nkeys (type = default; --model, --data, --k, --output set the first "
              "four):\n" + help_text(EvalConfig, CHOICES))
        return
    try:
        cfg = load_config(parse_args(argv), cls=EvalConfig, check=check)
        benchmarks = load_benchmarks(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    cfg.model = os.path.abspath(cfg.model)  # derived once: runs/default/final -> output runs/eval/default-final
    cfg.output = cfg.output or os.path.join("runs", "eval", "-".join(cfg.model.split(os.sep)[-2:]))
    rank, world = dist.init()
    log = dist.print0
    settings = {**to_dict(cfg), "weights": weights_stamp(cfg.model)}
    settings_path = os.path.join(cfg.output, "config.yaml")
    if os.path.exists(settings_path):  # never mix samples drawn under different settings
        with open(settings_path) as f:
            old = yaml.safe_load(f)
        differ = [k for k in SAMPLING_KEYS if old.get(k) != settings[k]]
        if differ:
            sys.exit(f"error: {cfg.output} holds samples drawn with other {', '.join(differ)} "
                     f"(there: {', '.join(f'{k}={old.get(k)!r}' for k in differ)}): choose another folder with "
                     f"output=DIR (or --output DIR), or delete {cfg.output}")
    done = read_samples(cfg.output)
    dist.barrier()  # every rank has read the old samples before any rank appends new ones
    if dist.is_main():
        os.makedirs(os.path.join(cfg.output, "parts"), exist_ok=True)
        with open(settings_path, "w") as f:
            yaml.safe_dump(settings, f, sort_keys=False)
    log(dump(cfg))
    dist.barrier()

    # ---------------------------------------------------------------- model
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    try:  # a checkpoint's files are checked against its manifest first; a damaged file is named
        model, tokenizer = load_pretrained(cfg.model, {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype])
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    model.to(device).eval()
    per_call = cfg.batch_rollouts or 512  # 0 = auto: on CUDA as many rollouts as fit next to the weights
    if not cfg.batch_rollouts and device.type == "cuda":
        shape = memory.Shape.of(model.config, sum(p.numel() for p in model.parameters()))
        per_call = memory.rollout_rows(shape, positions=model.config.max_position_embeddings,
                                       memory=torch.cuda.get_device_properties(device).total_memory,
                                       compute_bytes=next(model.parameters()).element_size(), optimizer=False)
        log(f"batch_rollouts=0 (auto): {per_call} rollouts a generate call, by the KV cache of "
            f"{model.config.max_position_embeddings} positions each")
    templates = {name: cfg.template if cfg.template != "auto" else "plain" if name == "arithmetic" else "boxed"
                 for name in benchmarks}
    try:  # every prompt rendered and measured before any sampling
        rendered = {name: [render(p, templates[name], tokenizer) for p in problems]
                    for name, problems in benchmarks.items()}
        for name, prompts in rendered.items():
            check_context(prompts, name, tokenizer, cfg.max_new_tokens, model)
    except ValueError as e:
        sys.exit(f"error: {e}")

    # ---------------------------------------------------------------- sample: rank r takes every world-th problem
    with open(os.path.join(cfg.output, "parts", f"rank{rank}.jsonl"), "a") as out:
        for name, problems in benchmarks.items():
            finished = {i for i, p in enumerate(problems)
                        if all(s in done.get((name, p.prompt_id), {}) for s in range(cfg.k))}
            log(f"{name}: {len(problems)} problems, {len(finished)} finished earlier (skipped), "
                f"{len(problems) - len(finished)} to sample")
            mine = list(range(rank, len(problems), world))
            skip = [j for j, i in enumerate(mine) if i in finished]
            prompts = [rendered[name][i] for i in mine]
            bar = tqdm(total=len(mine) - len(skip), desc=name, unit="problem", disable=not dist.is_main())
            for j, records in sample_and_score(model, tokenizer, [problems[i] for i in mine], prompts, samples=cfg.k,
                                               temperature=cfg.temperature, top_p=cfg.top_p,
                                               max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                                               batch_rollouts=per_call, fallbacks=True, skip=skip):
                p = problems[mine[j]]
                for s, r in enumerate(records):
                    out.write(json.dumps({"benchmark": name, "id": p.prompt_id, "sample": s, "reference": p.answer,
                                          **r}) + "\n")
                out.flush()  # a killed run loses at most the problem being written
                bar.update(1)
            bar.close()
    dist.barrier()  # note: a collective; ranks wait here for the slowest one

    # ---------------------------------------------------------------- summarise on rank 0
    if dist.is_main():
        found = merge_samples(cfg.output)
        summary = summarise(cfg, benchmarks, found)
        with open(os.path.join(cfg.output, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        text = table(summary)
        with open(os.path.join(cfg.output, "table.md"), "w") as f:
            f.write(text)
        print(text, flush=True)
        log(f"wrote {cfg.output}/table.md, summary.json, samples.jsonl")
    dist.shutdown()


def merge_samples(output: str) -> dict:
    """Rewrite samples.jsonl as one file holding every record (rank parts folded in) and return them."""
    found = read_samples(output)
    tmp = os.path.join(output, "samples.jsonl.tmp")
    with open(tmp, "w") as f:
        for per_problem in found.values():
            for s in sorted(per_problem):
                f.write(json.dumps(per_problem[s]) + "\n")
    os.replace(tmp, os.path.join(output, "samples.jsonl"))
    for part in glob.glob(os.path.join(output, "parts", "*.jsonl")):
        os.remove(part)
    return found


def summarise(cfg: EvalConfig, benchmarks: dict, found: dict) -> dict:
    """Metrics per benchmark and their average, from the first k samples of every problem."""
    verdicts, stats = {}, {}
    for name, problems in benchmarks.items():
        recs = [[found[(name, p.prompt_id)][s] for s in range(cfg.k)] for p in problems]  # (P, k)
        flat = [r for rs in recs for r in rs]  # (P * k,)
        verdicts[name] = [[r["correct"] for r in rs] for rs in recs]
        stats[name] = {"problems": len(problems),
                       "parse_failure_rate": sum(r["answer"] is None for r in flat) / len(flat),
                       "mean_response_length": sum(r["length"] for r in flat) / len(flat),
                       "truncation_rate": sum(r["truncated"] for r in flat) / len(flat)}
    scores = metrics.summarize(verdicts, resamples=cfg.bootstrap, seed=cfg.seed)
    keys = list(next(iter(stats.values())))
    stats["Avg"] = {key: sum(stats[n][key] for n in benchmarks) / len(benchmarks) for key in keys}
    stats["Avg"]["problems"] = sum(len(p) for p in benchmarks.values())  # a total, not a mean
    return {"model": cfg.model, "k": cfg.k,
            "definitions": {f"avg@{cfg.k}": "P@1, mean over problems of the fraction correct", "Avg": "unweighted mean",
                            "pass@j": "unbiased pass@j, 1 - C(n-c, j) / C(n, j)", "*_ci95": "95 % bootstrap CI",
                            "best@j": "verl's bootstrap best@j (with replacement): understates pass@j"},
            "benchmarks": {name: {**stats[name], **scores[name]} for name in scores},
            "config": to_dict(cfg)}


def table(summary: dict) -> str:
    """The paper's layout (docs/ALGORITHM.md §7): benchmarks as columns, 'P@1 / P@k' cells in percent, an Avg column."""
    k, rows = summary["k"], summary["benchmarks"]
    model = "/".join(os.path.abspath(summary["model"]).split(os.sep)[-2:])
    names = list(rows)
    lines = [f"| P@1 / P@{k} (%) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label in ((f"pass@{k}", f"pass@{k}, unbiased"), (f"best@{k}", f"best@{k}, verl bootstrap")):
        cells = [f"{100 * rows[n][f'avg@{k}']:.1f} / {100 * rows[n][key]:.1f}" for n in names]
        lines.append(f"| {model} ({label}) | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{n} {rows[n]['problems']}" for n in names if n != "Avg")
    return "\n".join(lines) + (f"\n\nP@1 = avg@{k} (mean accuracy of {k} samples per problem). Problems: {sizes}. "
                               "95 % CIs, pass@j for j < k and response statistics are in summary.json.\n")


if __name__ == "__main__":
    main(sys.argv[1:])
