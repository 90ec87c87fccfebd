"""Verifier benchmark: recall by answer form, time per (response, reference) pair and batch throughput.

    python scripts/bench_verifier.py                              # recall table by form (no data needed)
    python scripts/bench_verifier.py --data DIR --workers 2       # + timing on DIR/<benchmark>/test.jsonl
    python scripts/bench_verifier.py --samples runs/eval/x/samples.jsonl   # + boxed vs fallbacks on rollouts

Recall: the hand-written cases of tests/verifier_cases.py, graded in evaluation mode (fallbacks) and in
training mode (box only), counted per answer form (right = verdict as labelled; recall = "equal" cases judged
equal; false positives = "not equal" cases judged equal). Timing: typical responses built from each benchmark's
gold answers: a worked-looking response ending in the gold (most rollouts), a wrong answer, and the gold in
another form that needs the symbolic stage; start-up excluded. Goal: median < 1 ms and p99 < 50 ms per pair.
`--samples` grades eval.py's samples.jsonl both ways and counts the responses where the two disagree.
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dynamo.verifier as verifier  # noqa: E402
from dynamo.verifier import reference_answer, stats, verify, verify_batch  # noqa: E402
from tests.verifier_cases import CASES, CATEGORIES  # noqa: E402

FILLER = "Let me think step by step. We have 7+8=15, so $x^2 - 15x + 56 = 0$ gives $x = 7$ or $x = 8$. " * 12


def typical_pairs(golds: list[str]) -> list[tuple[str, str, str]]:
    """(kind, response, reference): 6 of 10 correct as written, 3 wrong, 1 correct in another form."""
    out = []
    for i, gold in enumerate(golds):
        slot = i % 10
        if slot < 6:
            kind, answer = "same", gold
        elif slot < 9:
            kind = "wrong"
            answer = str(int(gold) + 1) if re.fullmatch(r"-?\d+", gold) else gold + "+1"
        else:
            kind, answer = "other_form", f"\\left({gold}\\right)\\cdot 1"  # the symbolic stage must see through it
        out.append((kind, f"{FILLER}Therefore the answer is $\\boxed{{{answer}}}$.", gold))
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def recall_table() -> None:
    """Markdown table: per answer form, cases right in evaluation mode, false positives, right in training mode."""
    pairs = [(c.response, c.gold) for c in CASES]
    evaluation, training = verify_batch(pairs, workers=2, fallbacks=True), verify_batch(pairs, workers=2)
    print("recall by answer form (tests/verifier_cases.py; evaluation mode = fallbacks, training = box only)\n")
    print("| form | n (equal / not equal) | right | recall | false positives | right, training mode |")
    print("|---|---|---|---|---|---|")
    rows = [[c for c in CASES if c.category == cat] for cat in CATEGORIES] + [CASES]
    for name, cases in zip(CATEGORIES + ["total"], rows):
        idx = [CASES.index(c) for c in cases]
        n_eq = sum(c.equal for c in cases)
        right = sum(evaluation[i] == CASES[i].equal for i in idx)
        found = sum(evaluation[i] and CASES[i].equal for i in idx)  # recall: "equal" cases judged equal
        fp = sum(evaluation[i] and not CASES[i].equal for i in idx)
        right_train = sum(training[i] == CASES[i].equal for i in idx)
        print(f"| {name} | {len(cases)} ({n_eq} / {len(cases) - n_eq}) | {right} | {found} / {n_eq} "
              f"| {fp} / {len(cases) - n_eq} | {right_train} |")
    print()


def policy_disagreement(path: str) -> None:
    """How often the training reward's two extraction choices give different verdicts on real rollouts."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    pairs = [(r["response"], r["reference"]) for r in rows]
    boxed, fallbacks = verify_batch(pairs, workers=2), verify_batch(pairs, workers=2, fallbacks=True)
    differ = sum(a != b for a, b in zip(boxed, fallbacks))
    unboxed = sum("\\boxed" not in r for r, _ in pairs)
    print(f"reward.extraction on {len(pairs)} responses of {path}: boxed {sum(boxed)} correct, fallbacks "
          f"{sum(fallbacks)} correct, {differ} verdicts differ ({unboxed} responses have no box)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="folder of <benchmark>/test.jsonl for the timing part")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the batch run")
    parser.add_argument("--samples", default=None, help="eval.py samples.jsonl: boxed vs fallbacks verdicts")
    args = parser.parse_args()

    recall_table()
    if args.samples:
        policy_disagreement(args.samples)
    if args.data is None:
        print("timing skipped: give --data DIR, a folder of <benchmark>/test.jsonl (MATH-500, AIME, GSM8K, ...)")
        return
    timing(args.data, args.workers)


def timing(data: str, n_workers: int) -> None:
    golds = []
    for path in sorted(glob.glob(os.path.join(data, "*", "test.jsonl"))):
        with open(path) as f:
            golds += [reference_answer(json.loads(line)) for line in f]
    if not golds:
        sys.exit(f"no benchmark files under {data} (expected {data}/<benchmark>/test.jsonl)")
    pairs = typical_pairs(golds)

    verify("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")  # start one worker: start-up is excluded from the timings
    verifier._CACHE.clear()  # every timed pair is new to the verifier
    verifier.reset_stats()
    times: dict[str, list[float]] = {}
    correct = 0
    for kind, response, gold in pairs:
        t0 = time.perf_counter()
        verdict = verify(response, gold)
        times.setdefault(kind, []).append(time.perf_counter() - t0)
        correct += verdict == (kind != "wrong")
    all_times = [t for ts in times.values() for t in ts]
    ms = 1e3
    print(f"pairs: {len(pairs)} from {len(golds)} gold answers; verdicts as built: {correct}/{len(pairs)}")
    print(f"per pair (verify, sequential): median {statistics.median(all_times) * ms:.3f} ms, "
          f"p90 {percentile(all_times, 0.9) * ms:.3f} ms, p99 {percentile(all_times, 0.99) * ms:.3f} ms, "
          f"max {max(all_times) * ms:.1f} ms")
    for kind, ts in times.items():
        print(f"  {kind:10s} n={len(ts):5d}  median {statistics.median(ts) * ms:.3f} ms  p99 {percentile(ts, 0.99) * ms:.3f} ms")
    ints = [(r, g) for k, r, g in pairs if re.fullmatch(r"\d+", g)]
    t0 = time.perf_counter()
    for r, g in ints:
        verify(r, g)
    print(f"integer-gold pairs (training path): {(time.perf_counter() - t0) / len(ints) * 1e6:.1f} us per pair")

    for workers in sorted({1, n_workers}):
        verify_batch([("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"), ("\\boxed{\\sqrt{12}}", "2\\sqrt{3}")], workers=workers)
        verifier._CACHE.clear()
        t0 = time.perf_counter()
        verify_batch([(r, g) for _, r, g in pairs], workers=workers)
        dt = time.perf_counter() - t0
        print(f"verify_batch, workers={workers}: {len(pairs) / dt:,.0f} pairs/s ({dt:.2f} s for {len(pairs)})")
    print("stats:", stats())


if __name__ == "__main__":
    main()
