"""Math answer verifier: is a model's final answer equivalent to the gold answer?

    from dynamo.verifier import verify, verify_batch
    verify("7+8=15, ... so \\\\boxed{405}.", "405")          # True; the training reward
    verify(output, gold, fallbacks=True)                   # evaluation: also "The answer is ..."
    verify_batch(pairs, workers=4)                         # many pairs, verdicts in order

Pipeline per pair: extract the answer (extract.py) -> normalise both sides (normalize.py) -> exact
in-process fast path for plain numbers (microseconds; no SymPy, no process) -> otherwise the symbolic
stage (latex.py + equivalence.py) in a worker process under a hard wall-clock limit (pool.py).
Nothing here raises: any failure is "not equal" and is counted in `stats()`.
"""
import threading
from dataclasses import asdict, dataclass

from dynamo.verifier import pool as _pool
from dynamo.verifier.extract import anchored_answer, extract_answer, final_boxed, reference_answer
from dynamo.verifier.normalize import MAX_ANSWER_CHARS, align_sides, fast_compare, group_answers, is_prose, normalize_pair

__all__ = ["verify", "verify_batch", "extract_answer", "reference_answer", "VerifierStats", "stats", "reset_stats", "shutdown"]

DEFAULT_TIMEOUT_S = 1.0  # per pair in the symbolic stage; a worker past it is killed and replaced
CACHE_SIZE = 1 << 16  # symbolic verdicts kept in-process: a GRPO group repeats the same answers


@dataclass
class VerifierStats:
    """Counters since start (or reset_stats); log them with stats()."""

    calls: int = 0  # pairs verified
    parse_failures: int = 0  # no final answer in the response (or no usable reference)
    fast_path: int = 0  # decided in-process without SymPy
    symbolic: int = 0  # sent to a worker process
    cache_hits: int = 0  # symbolic verdicts reused from an identical earlier pair
    rejected: int = 0  # answers over the size bound: "not equal" without parsing
    timeouts: int = 0  # symbolic jobs killed at the time limit
    internal_errors: int = 0  # bugs or library errors caught and turned into "not equal"


STATS = VerifierStats()
_STATS_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str], bool] = {}


def stats() -> dict:
    """The counters as a dict (a snapshot)."""
    with _STATS_LOCK:
        return asdict(STATS)


def reset_stats() -> None:
    with _STATS_LOCK:
        for name in asdict(STATS):
            setattr(STATS, name, 0)


def _count(**deltas: int) -> None:
    with _STATS_LOCK:
        for name, d in deltas.items():
            setattr(STATS, name, getattr(STATS, name) + d)


def _reference_text(reference) -> str | None:
    """Accept the gold as benchmarks store it: '025', 27.0, '... #### 2,125', a solution with a box."""
    if isinstance(reference, float) and reference.is_integer():
        return str(int(reference))
    ref = reference if isinstance(reference, str) else str(reference)
    if "####" in ref:
        ref = ref.rsplit("####", 1)[1].replace(",", "")
    elif "\\boxed" in ref or "\\fbox" in ref:
        ref = final_boxed(ref)
    elif "nswer" in ref or "NSWER" in ref:  # a worked text: "... Final Answer: The final answer is $28\%$."
        ref = anchored_answer(ref) or ref
    return ref.strip() if ref and ref.strip() else None


def _prepare(response: str, reference, fallbacks: bool):
    """A final verdict (bool), or the normalised (response, reference) pair for the symbolic stage."""
    ref = _reference_text(reference)
    answer = extract_answer(response, fallbacks=fallbacks)
    if answer is None or ref is None:
        _count(parse_failures=1)
        return False
    if answer == ref:
        _count(fast_path=1)
        return True
    if len(answer) > MAX_ANSWER_CHARS or len(ref) > MAX_ANSWER_CHARS:
        _count(rejected=1)
        return False
    (a, unit_a), (b, unit_b) = normalize_pair(answer, ref)
    if unit_a and unit_b and unit_a != unit_b:  # 5 cm is not 5 m; a unit on one side only is presentation
        _count(fast_path=1)
        return False
    a, b = align_sides(*group_answers(a, b))
    if not a or not b:
        _count(parse_failures=1)
        return False
    verdict = fast_compare(a, b)
    if verdict is None and (is_prose(a) or is_prose(b)):
        verdict = False  # an extracted sentence: no symbolic reading of prose
    if verdict is not None:
        _count(fast_path=1)
        return verdict
    return a, b


def verify_batch(
    pairs: list[tuple[str, str]], workers: int = 0, timeout_s: float = DEFAULT_TIMEOUT_S, fallbacks: bool = False
) -> list[bool]:
    """Verdicts for many (response, reference) pairs, in order. Plain-number pairs are decided in-process;
    the rest go to up to `workers` worker processes (0 means one), each pair under `timeout_s`."""
    out = [False] * len(pairs)
    try:
        _count(calls=len(pairs))
        pending: dict[tuple[str, str], list[int]] = {}  # identical pairs are checked once
        for i, pair in enumerate(pairs):
            try:
                response, reference = pair
                r = _prepare(response, reference, fallbacks)
            except Exception:
                _count(internal_errors=1)
                continue
            if isinstance(r, bool):
                out[i] = r
            elif r in _CACHE:
                _count(cache_hits=1)
                out[i] = _CACHE[r]
            else:
                pending.setdefault(r, []).append(i)
        if not pending:
            return out
        keys = list(pending)
        _count(symbolic=len(keys))
        codes = _pool.POOL.run(keys, workers, timeout_s)
        for key, code in zip(keys, codes):
            verdict = code == _pool.EQUAL
            if code == _pool.TIMEOUT:
                _count(timeouts=1)
            elif code in (_pool.EQUAL, _pool.NOT_EQUAL):
                if len(_CACHE) >= CACHE_SIZE:
                    _CACHE.clear()
                _CACHE[key] = verdict
            else:
                _count(internal_errors=1)
            for i in pending[key]:
                out[i] = verdict
    except Exception:
        _count(internal_errors=1)
    return out


def verify(response: str, reference: str, fallbacks: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Is the final answer in `response` (a full model output) equivalent to the gold `reference`?"""
    return verify_batch([(response, reference)], workers=0, timeout_s=timeout_s, fallbacks=fallbacks)[0]


def shutdown() -> None:
    """Stop the worker processes now (they are also stopped at interpreter exit)."""
    _pool.POOL.close()
