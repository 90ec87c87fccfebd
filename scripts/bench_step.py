"""Per-step costs at a real vocabulary (V = 151,936) on CPU, each measured against its baseline in the same run.

    python scripts/bench_step.py --quick                  # smoke sizes: prints the table (seconds)
    python scripts/bench_step.py --part sampler           # sampler vs decode step, N = 64 and 256
    python scripts/bench_step.py --part logprobs          # log-probs vs naive log-softmax at 4 x 512 tokens,
                                                          # and the chunked form alone at 64 x 512
    python scripts/bench_step.py --part sampler --rows 256 --layers 24 --repeats 5 --threads 2

Parts (PARTS below maps a name to a function returning table rows; a new part is one more entry):
  sampler   time of one SeededSampler call (one generated token) against the model's own decode step (one
            forward of one new token per row over a KV cache of --cache positions), and its peak extra memory
            against one (N, V) float32 tensor; for the sampler before the int32 race (a private copy here,
            OldSampler) and the current one, which must draw the same tokens (checked on every repeat).
            Model: random Qwen2, width --hidden 896 and the head/MLP ratios of Qwen2.5-0.5B (the smallest
            Qwen2.5 with this vocabulary), --layers 4 of its 24, float32: a shallow model, so the sampler weighs
            as much as it can against the step. The logits are the model's own (near-uniform: every token is a
            contender, the sampler's worst case).
  zero_adv  seconds in old log-probs + update of whole train.py runs (the main job's config and GRPO's, --za-steps
            steps from the shipped start), skip_zero_advantage false against true, the runs alternated.
  padding   the old-log-prob pass with each micro-batch at its own width (objective.trim_padding) against the
            full padded width, on SmolLM2-135M's shape with uneven response lengths; log-probs compared.
  logprobs  peak memory and time of dynamo.logprobs.response_token_stats against the naive form (logits for
            all positions, log_softmax, gather, entropy), forward alone (no_grad) and forward + backward of a
            weighted sum of the log-probs, temperature 0.7; values and gradients are compared (max |diff|).
            Model: random Qwen2 of width --lp-hidden 512 and --lp-layers 1 (the LM head dominates), tied
            embeddings, float32; the naive form at --lp-naive-size 4 x 512 positions peaks near 4.8 GiB.

Timing: A and B alternate within one process (A, B, A, B, ...) after one warm-up call each; a ratio is the
median over repeats of the per-repeat ratio. On a shared machine the absolute times drift, the ratios less.
--threads defaults to 1: on a 2-core machine that other jobs share, a 2-thread op waits at its barrier for
whichever thread was preempted, which stalls the sampler's many small ops far more than the decode's matmuls.
Memory: every peak is measured in a fresh subprocess (this script with --measure): it builds its inputs, resets
the kernel's resident-set high-water mark (writes 5 to /proc/self/clear_refs), reads VmRSS, runs the call once
and reads VmHWM; the peak extra memory is VmHWM - VmRSS. Where clear_refs cannot be written it falls back to
ru_maxrss after minus before, which under-reports a call that peaks below the setup. torch's CPU allocations
are plain malloc/mmap, so RSS sees them (tracemalloc does not). --quick measures in-process (a smoke test).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformers import LogitsProcessor, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from dynamo.logprobs import response_token_stats  # noqa: E402
from dynamo.rollout import SeededSampler, top_p_filter  # noqa: E402
from dynamo.step_metrics import read_metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 151_936
MIB = 1 << 20

# ---------------------------------------------------------------------------------------------------------
# The sampler as it was before the int32 race (kept here as the baseline): (N, V) int64 passes, float64 logs.
M32 = 0xFFFFFFFF


def _old_mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def _old_mix32(x: torch.Tensor) -> torch.Tensor:
    x = _old_mul32(x ^ (x >> 16), 0x85EBCA6B)
    x = _old_mul32(x ^ (x >> 13), 0xC2B2AE35)
    return x ^ (x >> 16)


def old_exponential_noise(seeds: torch.Tensor, t: int, vocab: int) -> torch.Tensor:
    lo, hi = seeds & M32, (seeds >> 32) & M32
    key = _old_mix32(lo ^ _old_mix32(hi ^ _old_mix32(torch.full_like(seeds, t & M32))))
    v = _old_mix32(torch.arange(vocab, device=seeds.device) ^ 0x9E3779B9)
    h = _old_mix32((_old_mix32(key[:, None] ^ v[None, :]) + key[:, None]) & M32)
    return -torch.log((h.double() + 0.5) / 2.0 ** 32)


class OldSampler(LogitsProcessor):
    def __init__(self, seeds: torch.Tensor, prompt_length: int, temperature: float, top_p: float):
        self.seeds, self.prompt_length, self.temperature, self.top_p = seeds, prompt_length, temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        z = scores.float() / self.temperature
        if self.top_p < 1.0:
            z = top_p_filter(z, self.top_p)
        t = input_ids.shape[1] - self.prompt_length
        return z - old_exponential_noise(self.seeds, t, z.shape[-1]).log().float()


SAMPLERS = {"old": OldSampler, "new": SeededSampler}


# ---------------------------------------------------------------------------------------------------------
# Shared helpers: model, timing, memory.

def narrow_model(hidden: int, layers: int, vocab: int, seed: int = 0) -> Qwen2ForCausalLM:
    """Random Qwen2 with `vocab` rows: 64-dim heads, 2 key-value heads, MLP 5.43x (Qwen2.5-0.5B's ratios)."""
    heads = max(2, hidden // 64)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 38 // 7,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2 if heads % 2 == 0
                         else 1, max_position_embeddings=4096, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """{name: [seconds per repeat]}: one warm-up call each, then the functions in turn, `repeats` times."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


def ratio(num: list[float], den: list[float]) -> float:
    """Median over repeats of the per-repeat ratio num / den."""
    return statistics.median(a / b for a, b in zip(num, den))


def share(part: float, whole: float) -> float:
    """part / whole, or nan where the whole measured 0: under --quick the measurements share one process, and
    memory freed by an earlier one can serve a later one without raising the resident high-water mark."""
    return part / whole if whole else float("nan")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_high_water_mark() -> bool:
    """VmHWM := VmRSS for this process; False where /proc/self/clear_refs cannot be written."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_bytes(fn) -> int:
    """Peak resident memory of fn() above the resident memory just before it (see the module docstring)."""
    if _reset_high_water_mark():
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


def measure(spec: dict, args) -> dict:
    """Run one memory measurement (MEASURES[spec['kind']]) in a fresh subprocess, or here under --quick."""
    spec = dict(spec, threads=args.threads)
    if args.quick:
        return MEASURES[spec["kind"]](spec)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", json.dumps(spec)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"measurement {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------
# Part `sampler`.

def _decode_setup(model, rows: int, cache: int):
    """A KV cache of `cache` positions for `rows` rows, and a function running one decode step on it."""
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, vocab, (rows, cache), generator=gen), use_cache=True, logits_to_keep=1)
    kv = out.cache if hasattr(out, "cache") else out.past_key_values
    token = torch.randint(0, vocab, (rows, 1), generator=gen)
    last = {}

    def step():
        with torch.no_grad():
            last["logits"] = model(input_ids=token, cache=kv, use_cache=True).logits[:, -1]  # (rows, V)
        kv.crop(-1)  # back to `cache` positions, so every step sees the same length

    return step, last


def _sampler_inputs(rows: int, vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    seeds = torch.randint(0, 2 ** 62, (rows,), generator=gen)
    return seeds, torch.zeros(rows, 8, dtype=torch.long)  # input ids: response position 3 after a 5-token prompt


def measure_sampler(spec: dict) -> dict:
    """Peak extra memory of one call of sampler spec['which'] on random (rows, vocab) float32 scores."""
    rows, vocab = spec["rows"], spec["vocab"]
    seeds, ids = _sampler_inputs(rows, vocab)
    sampler = SAMPLERS[spec["which"]](seeds, 5, spec["temperature"], spec["top_p"])
    scores = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(2))
    return {"peak_extra": peak_extra_bytes(lambda: sampler(ids, scores))}


def part_sampler(args) -> list[dict]:
    model = narrow_model(args.hidden, args.layers, args.vocab)
    table = []
    for rows in args.rows:
        step, last = _decode_setup(model, rows, args.cache)
        seeds, ids = _sampler_inputs(rows, args.vocab)
        samplers = {name: cls(seeds, 5, args.temperature, args.top_p) for name, cls in SAMPLERS.items()}
        times = {"decode": [], **{name: [] for name in samplers}}
        same = True
        for _ in range(args.repeats + 1):  # the first round warms up and is dropped below
            times["decode"].append(timed(step))
            picks = {}
            for name, sampler in samplers.items():
                scores = last["logits"].clone()  # the new sampler writes over its scores
                start = time.perf_counter()
                out = sampler(ids, scores)
                times[name].append(time.perf_counter() - start)
                picks[name] = out.argmax(-1)  # what generate() does next
            same &= torch.equal(picks["old"], picks["new"])
        times = {name: t[1:] for name, t in times.items()}
        decode = times["decode"]
        unit = rows * args.vocab * 4  # one (N, V) float32 tensor
        for name in samplers:
            mem = measure(dict(kind="sampler", which=name, rows=rows, vocab=args.vocab,
                               temperature=args.temperature, top_p=args.top_p), args)
            table.append({"part": "sampler", "case": f"{name} N={rows}", "time_s": statistics.median(times[name]),
                          "baseline_s": statistics.median(decode), "time_ratio": ratio(times[name], decode),
                          "peak_mib": mem["peak_extra"] / MIB, "mem_ratio": mem["peak_extra"] / unit,
                          "note": f"/ decode step; / (N,V) f32 = {unit / MIB:.0f} MiB; same tokens: {same}"})
    return table


# ---------------------------------------------------------------------------------------------------------
# Part `logprobs`.

def naive_token_stats(model, input_ids, attention_mask, prompt_length: int, temperature: float = 1.0):
    """Logits for every response position at once, log_softmax, gather; entropy detached."""
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, prompt_length - 1:-1]).float() / temperature  # (N, T, V)
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, input_ids[:, prompt_length:, None]).squeeze(-1)  # (N, T)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N, T)
    return {"logp": logp, "entropy": entropy}


LOGPROB_FNS = {"naive": naive_token_stats, "chunked": response_token_stats}
PROMPT = 16  # prompt positions before the responses


def _logprob_inputs(args, rows: int, tokens: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, args.vocab, (rows, PROMPT + tokens), generator=gen)
    weights = torch.randn(rows, tokens, generator=gen)  # d loss / d logp
    return ids, torch.ones_like(ids), weights


def _logprob_call(model, fn, ids, attn, weights, backward: bool) -> dict:
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(backward):
        out = fn(model, ids, attn, PROMPT, temperature=0.7)
        if backward:
            (out["logp"] * weights).sum().backward()
    return out


def measure_logprobs(spec: dict) -> dict:
    """Peak extra memory, time and parameter-gradient bytes of one call of LOGPROB_FNS[spec['which']]."""
    args = argparse.Namespace(**spec)
    model = narrow_model(args.lp_hidden, args.lp_layers, args.vocab)
    ids, attn, weights = _logprob_inputs(args, spec["rows"], spec["tokens"])
    start = time.perf_counter()
    peak = peak_extra_bytes(lambda: _logprob_call(model, LOGPROB_FNS[spec["which"]], ids, attn, weights,
                                                  spec["backward"]))
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return {"peak_extra": peak, "seconds": time.perf_counter() - start, "grads": grads}


def _max_diffs(model, ids, attn, weights) -> str:
    """Largest |chunked - naive| over logp, entropy, the gradient of the decoder's last hidden states, of the LM
    head (tied to the embedding) and of all parameters (with the largest |gradient|, for scale)."""
    base = getattr(model, model.base_model_prefix)
    hidden = []

    def keep(module, inputs, out) -> None:  # returns None: the output is left as it is
        out.last_hidden_state.retain_grad()
        hidden.append(out.last_hidden_state)

    hook = base.register_forward_hook(keep)
    res = {}
    for name, fn in LOGPROB_FNS.items():
        out = _logprob_call(model, fn, ids, attn, weights, backward=True)
        res[name] = (out["logp"].detach(), out["entropy"], hidden.pop().grad,
                     model.get_output_embeddings().weight.grad.clone(),
                     torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    hook.remove()
    diffs = [(a - b).abs().max().item() for a, b in zip(res["naive"], res["chunked"])]
    return ("max|diff| logp {:.1e} entropy {:.1e} grad hidden {:.1e} grad head {:.1e} grad all {:.1e}".format(*diffs)
            + f" (max |grad| {res['naive'][-1].abs().max().item():.1e})")


def part_logprobs(args) -> list[dict]:
    model = narrow_model(args.lp_hidden, args.lp_layers, args.vocab)
    rows, tokens = args.lp_naive_size
    ids, attn, weights = _logprob_inputs(args, rows, tokens)
    spec = dict(kind="logprobs", rows=rows, tokens=tokens, vocab=args.vocab, lp_hidden=args.lp_hidden,
                lp_layers=args.lp_layers, threads=args.threads)
    table, check = [], _max_diffs(model, ids, attn, weights)
    for backward in (False, True):
        mode = "fwd+bwd" if backward else "fwd"
        fns = {name: (lambda fn=fn: _logprob_call(model, fn, ids, attn, weights, backward))
               for name, fn in LOGPROB_FNS.items()}
        times = interleaved(fns, args.repeats)
        mem = {name: measure(dict(spec, which=name, backward=backward), args) for name in fns}
        note = f"speed = naive/chunked; naive peak {mem['naive']['peak_extra'] / MIB:.0f} MiB"
        if backward:  # the parameter gradients (embedding and LM head: V x D each) are part of both peaks
            note += f"; of each peak {mem['chunked']['grads'] / MIB:.0f} MiB are parameter gradients; {check}"
        table.append({"part": "logprobs", "case": f"chunked {mode} {rows}x{tokens}",
                      "time_s": statistics.median(times["chunked"]), "baseline_s": statistics.median(times["naive"]),
                      "time_ratio": ratio(times["naive"], times["chunked"]),
                      "peak_mib": mem["chunked"]["peak_extra"] / MIB,
                      "mem_ratio": share(mem["chunked"]["peak_extra"], mem["naive"]["peak_extra"]), "note": note})
    if args.lp_big_size:
        rows, tokens = args.lp_big_size
        logits_gib = rows * tokens * args.vocab * 4 / 2 ** 30  # one (N*T, V) float32 tensor
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            res = measure(dict(spec, rows=rows, tokens=tokens, which="chunked", backward=backward), args)
            note = f"alone: one (N*T,V) f32 tensor of the naive form is {logits_gib:.1f} GiB"
            if backward:
                note += f"; {res['grads'] / MIB:.0f} MiB of the peak are parameter gradients"
            table.append({"part": "logprobs", "case": f"chunked {mode} {rows}x{tokens}", "time_s": res["seconds"],
                          "baseline_s": None, "time_ratio": None, "peak_mib": res["peak_extra"] / MIB,
                          "mem_ratio": None, "note": note})
    return table


# ---------------------------------------------------------------------------------------------------------
# zero_adv: seconds in old log-probs + update of whole train.py runs, every row against skip_zero_advantage


def _train_seconds(config: str, steps: int, skip: str, out: str, threads: int) -> tuple[float, float]:
    """(seconds in old log-probs + update summed over the steps, mean fraction of rows skipped) of one run."""
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", config),
           f"model={os.path.join(ROOT, 'assets', 'warmed-tiny')}",  # the main job's start, with no warm-up
           f"steps={steps}", "eval_prompts=8", "eval_samples=1", "eval_every=0", "checkpoint_every=0",
           "sample_every=0", f"skip_zero_advantage={skip}", f"out_dir={out}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    rows = read_metrics(out)["train"]
    return (sum(r["time/logprobs"] + r["time/update"] for r in rows),
            statistics.mean(r["rows_skipped"] for r in rows))


def part_zero_adv(args) -> list[dict]:
    """The main job (default.yaml) and GRPO (grpo.yaml) from the shipped start, `skip_zero_advantage` false
    against true, the two runs alternated; ratio = (every row) / (rows skipped), median over the pairs."""
    table = []
    for config in ("default.yaml", "grpo.yaml"):
        every, skipped, frac = [], [], 0.0
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                every.append(_train_seconds(config, args.za_steps, "false", os.path.join(tmp, "a"), args.threads)[0])
                seconds, frac = _train_seconds(config, args.za_steps, "true", os.path.join(tmp, "b"), args.threads)
                skipped.append(seconds)
        table.append({"part": "zero_adv", "case": f"{config} {args.za_steps} steps", "time_s": statistics.median(skipped),
                      "baseline_s": statistics.median(every), "time_ratio": ratio(every, skipped),
                      "peak_mib": None, "mem_ratio": None,
                      "note": f"old log-probs + update, every row / rows skipped ({frac:.2f} of rows skipped)"})
    return table


# ---------------------------------------------------------------------------------------------------------

# A part is a function (parsed arguments) -> rows of the table (dicts with the keys print_table reads); a new
# part (e.g. the update with and without the zero-advantage rows) is one more entry here, with its options in
# main() and, if it measures memory in a subprocess, its measurement function in MEASURES.
# ---------------------------------------------------------------------------------------------------------
# padding: the old-log-prob pass at each micro-batch's own width against the full padded width


def part_padding(args) -> list[dict]:
    """Objective's pass over a rank's rows in micro-batches of --pad-micro rows, each run at the rows' own width
    (objective.trim_padding) against the full width every micro-batch had before (longest prompt + longest
    response of the step). Model: random, SmolLM2-135M's shape (a Llama: width 576, 30 layers, 9 heads, 3 KV
    heads, MLP 1536, V 49,152), float32. Responses of uneven lengths: most short, a few long (--pad-lengths)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from dynamo.objective import trim_padding
    from dynamo.rollout import Rollouts
    torch.manual_seed(0)
    layers = 2 if args.quick else 30
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    short, long, n_long = args.pad_lengths
    n, lp, micro = args.pad_rows, 64, args.pad_micro
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(short // 2, short + 1, (n,), generator=g)
    lengths[torch.randperm(n, generator=g)[:n_long]] = long  # the step's longest rows, anywhere in the order
    t = int(lengths.max())
    resp = (torch.arange(t)[None, :] < lengths[:, None]).long()  # (N, T)
    prompt_len = torch.randint(lp // 2, lp + 1, (n,), generator=g)
    prompt_att = (torch.arange(lp)[None, :] >= lp - prompt_len[:, None]).long()  # left padding
    ro = Rollouts(input_ids=torch.randint(0, 49152, (n, lp + t), generator=g),
                  attention_mask=torch.cat([prompt_att, resp], 1), response_mask=resp,
                  prompt_index=torch.arange(n), truncated=torch.zeros(n, dtype=torch.bool), prompt_length=lp)
    batches = [torch.arange(s, min(n, s + micro)) for s in range(0, n, micro)]

    def padded():
        with torch.no_grad():
            return [response_token_stats(model, ro.input_ids[r], ro.attention_mask[r], lp)["logp"] for r in batches]

    by_length = torch.argsort(lengths, descending=True, stable=True)  # Objective's order where sorting is exact
    sorted_batches = [by_length[s:s + micro] for s in range(0, n, micro)]

    def trimmed(groups):
        out = []
        with torch.no_grad():
            for r in groups:
                ids, att, p, w = trim_padding(ro, r)
                out.append(F.pad(response_token_stats(model, ids, att, p)["logp"], (0, t - w)))
        return out

    diff = max(((a - b).abs() * resp[r]).max().item() for a, b, r in zip(padded(), trimmed(batches), batches))
    times = interleaved({"padded": padded, "trimmed": lambda: trimmed(batches),
                         "sorted": lambda: trimmed(sorted_batches)}, args.repeats)
    cells = sum(len(r) * (lp + t) for r in batches)
    table = []
    for name, groups in (("trimmed", batches), ("sorted", sorted_batches)):
        kept = sum(trim_padding(ro, r)[0].numel() for r in groups)
        table.append({"part": "padding", "case": f"{name} {n} rows, {micro} a micro", "time_s": statistics.median(times[name]),
                      "baseline_s": statistics.median(times["padded"]), "time_ratio": ratio(times["padded"], times[name]),
                      "peak_mib": None, "mem_ratio": None,
                      "note": f"speed = padded/{name}; tokens run {kept / cells:.2f} of the padded; responses "
                              f"{short // 2}-{short} tokens, {n_long} of {long}; max |logp diff| {diff:.1e}"})
    return table


PARTS = {"sampler": part_sampler, "logprobs": part_logprobs, "zero_adv": part_zero_adv, "padding": part_padding}
MEASURES = {"sampler": measure_sampler, "logprobs": measure_logprobs}  # kind -> fn(spec dict) -> JSON-able dict


def print_table(table: list[dict]) -> None:
    print(f"{'part':9s} {'case':28s} {'time s':>8s} {'base s':>8s} {'time ratio':>10s} {'peak MiB':>9s} "
          f"{'mem ratio':>9s}  note")

    def fmt(x, spec):
        return format(x, spec) if x is not None else "-"

    for r in table:
        print(f"{r['part']:9s} {r['case']:28s} {fmt(r['time_s'], '8.3f')} {fmt(r['baseline_s'], '8.3f'):>8s} "
              f"{fmt(r['time_ratio'], '10.3f'):>10s} {fmt(r['peak_mib'], '9.1f'):>9s} {fmt(r['mem_ratio'], '9.3f'):>9s}"
              f"  {r['note']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="small smoke sizes, memory measured in-process")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see the module docstring)")
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 256], help="sampler: rows N")
    parser.add_argument("--cache", type=int, default=256, help="sampler: KV-cache positions of the decode step")
    parser.add_argument("--hidden", type=int, default=896, help="sampler: model width (896 = Qwen2.5-0.5B)")
    parser.add_argument("--layers", type=int, default=4, help="sampler: decoder layers")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampler temperature")
    parser.add_argument("--top-p", type=float, default=1.0, help="sampler nucleus (the main job uses 1.0)")
    parser.add_argument("--lp-hidden", type=int, default=512, help="logprobs: model width")
    parser.add_argument("--lp-layers", type=int, default=1, help="logprobs: decoder layers")
    parser.add_argument("--lp-naive-size", type=int, nargs=2, default=[4, 512], metavar=("ROWS", "TOKENS"),
                        help="logprobs: responses x tokens compared with the naive form (peaks near 4.8 GiB here)")
    parser.add_argument("--lp-big-size", type=int, nargs=2, default=[64, 512], metavar=("ROWS", "TOKENS"),
                        help="logprobs: size measured for the chunked form alone (0 0: skip)")
    parser.add_argument("--za-steps", type=int, default=16, help="zero_adv: RL steps per train.py run")
    parser.add_argument("--pad-rows", type=int, default=32, help="padding: rows of the step")
    parser.add_argument("--pad-micro", type=int, default=8, help="padding: rows per micro-batch")
    parser.add_argument("--pad-lengths", type=int, nargs=3, default=[128, 512, 2], metavar=("SHORT", "LONG", "N_LONG"),
                        help="padding: most responses SHORT/2..SHORT tokens, N_LONG of them LONG")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one memory measurement, JSON spec
    args = parser.parse_args()
    if args.measure:
        spec = json.loads(args.measure)
        torch.set_num_threads(spec["threads"])
        print(json.dumps(MEASURES[spec["kind"]](spec)))
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.vocab, args.rows, args.cache, args.hidden, args.layers, args.repeats = 4096, [8], 16, 64, 1, 1
        args.lp_hidden, args.lp_naive_size, args.lp_big_size, args.za_steps = 64, [2, 32], [4, 32], 1
        args.pad_rows, args.pad_micro, args.pad_lengths = 8, 4, [16, 48, 1]
    if args.lp_big_size == [0, 0]:
        args.lp_big_size = None
    print(f"bench_step: V={args.vocab}, {args.threads} threads, {args.repeats} repeats"
          + (" (quick smoke sizes)" if args.quick else "") + f"; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs", flush=True)
    table = []
    for name, part in PARTS.items():
        if args.part in (name, "all"):
            table += part(args)
    print_table(table)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
