# python -m pytest -q tests/test_verifier_safety.py
"""Verifier safety: adversarial inputs, the hard time limit, worker processes, fuzzing (hypothesis)."""
import concurrent.futures
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo.verifier import pool, shutdown, stats, verify, verify_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYMBOLIC_PAIR = ("\\boxed{\\sqrt{52}}", "2\\sqrt{13}")  # needs SymPy, so it runs in a worker


@pytest.fixture(scope="module", autouse=True)
def warm_worker():
    assert verify(*SYMBOLIC_PAIR)  # start-up (python + sympy import) is not what the 2 s limit is about


ADVERSARIAL = [
    "\\boxed{10^{10^{10}}}",
    "\\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "\\boxed{(10^{400})!}",
    "\\boxed{9!!!!!!!!}",
    "\\boxed{\\binom{10^{9}}{5\\cdot 10^{8}}}",
    "\\boxed{1e999999999}",
    "\\boxed{10^{-10^{10}}}",
    "\\boxed{x^{10^{4}}-(x+1)^{10^{4}}}",
    "\\boxed{\\sqrt[10^{9}]{2}}",
    "\\boxed{" + "9" * 100_000 + "}",
    "x" * 100_000,
    "\\boxed{" + "1+" * 50_000 + "1}",
    "\\boxed{" + "{" * 5000 + "5" + "}" * 5000 + "}",
    "\\boxed{" + "(" * 5000 + "5" + ")" * 5000 + "}",
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "\\boxed{" + "\\sqrt" * 400 + "{2}}",
    "\\boxed{" + "-" * 5000 + "5}",
    "\\boxed{" + "x^" * 2000 + "2}",
    "\\boxed{" + ",".join(["1"] * 5000) + "}",
    "\\boxed{\\begin{pmatrix}" + "&".join(["1"] * 3000) + "\\end{pmatrix}}",
    "\\boxed{__import__('os').system('touch /tmp/verifier_pwned')}",
    "\\boxed{exec(\"import os; os.system('touch /tmp/verifier_pwned')\")}",
    "\\boxed{eval('1+1')}",
    "\\boxed{lambda: 5}",
    "\\boxed{Symbol('x').__class__.__mro__}",
    "\\boxed{\\input{/etc/passwd}}",
    "\\boxed{\\def\\x{\\x}\\x}",
    "\\boxed{5",
    "\\boxed{{5}",
    "\\boxed{6}}}}}",  # the box holds 6; stray braces after it are ignored
    "}}}}{{{{\\boxed{",
    "\\boxed{\\frac{1}}",
    "\\boxed{\\sqrt[}",
    "\\boxed{٥}",  # Arabic-Indic five: not the digit 5 here
    "\\boxed{𝟓}",
    "\\boxed{５}",
    "\\boxed{5\u200b}",
    "\\boxed{\x00}",
    "\\boxed{\ud800}",
    "",
    "\\boxed{}",
    "\\boxed{ }",
    "<think>",
    "</think>",
    "\\boxed{\\left(}",
    "\\boxed{|||||}",
    "\\boxed{\\lfloor\\lfloor}",
    "\\boxed{$$$$}",
    "\\boxed{%}",
    "\\boxed{\\\\\\\\}",
    "\\boxed{&&&}",
    "\\boxed{\\begin{pmatrix}}",
    "\\boxed{\\end{pmatrix}}",
    "\\boxed{f(f(f(f(f(f(x))))))}",
    "\\boxed{\\pm\\pm\\pm\\pm}",
]


@pytest.mark.parametrize("response", ADVERSARIAL)
def test_adversarial_not_equal_fast(response):
    before = stats()
    t0 = time.monotonic()
    assert verify(response, "5") is False
    assert verify_batch([(response, "\\frac{1}{2}"), (response, "x+1")]) == [False, False]
    assert time.monotonic() - t0 < 2.0
    assert stats()["internal_errors"] == before["internal_errors"]
    assert not os.path.exists("/tmp/verifier_pwned")


# The answer forms and unboxed fallbacks: sizes, nesting and repetition that could make a scan or a parse slow.
ADVERSARIAL_FORMS = [
    "\\boxed{\\begin{bmatrix}" + "1&" * 20000 + "1\\end{bmatrix}}",
    "\\boxed{\\left[\\begin{array}{" + "c" * 400 + "}" + "1&" * 299 + "1\\end{array}\\right]}",
    "\\boxed{\\begin{pmatrix}" + "1\\\\" * 300 + "\\end{pmatrix}}",
    "\\boxed{" + "(" * 30 + "\\begin{pmatrix}1\\end{pmatrix}" + ")" * 30 + "}",
    "\\boxed{" + "x<" * 5000 + "1}",
    "\\boxed{" + "x<" * 400 + "1}",
    "\\boxed{0<" + "(" * 39 + "x" + ")" * 39 + "<1}",
    "\\boxed{" + "\\cup".join(["(0,1)"] * 5000) + "}",
    "\\boxed{" + "\\cup".join(["(0,1)"] * 150) + "}",
    "\\boxed{" + " or ".join(["x<1"] * 3000) + "}",
    "\\boxed{" + " and ".join(["x \\ne %d" % k for k in range(60)]) + "}",
    "\\boxed{x \\ne " + "1" * 400 + "}",
    "\\boxed{x < 10^{10^{10}}}",
    "\\boxed{0 < x < 2^{2^{2^{2^{2}}}}}",
    "\\boxed{x^{10^{4}} < 1}",
    "\\boxed{1" + "{,}000" * 20000 + "}",
    "\\boxed{1" + ",\\!000" * 150 + "}",
    "\\boxed{5" + "\\text{ cm}" * 5000 + "}",
    "\\boxed{5" + " cm" * 300 + "}",
    "\\boxed{x" + "\\approx 1" * 5000 + "}",
    "\\boxed{(p,q)" + "=(1,2)" * 3000 + "}",
    "\\boxed{" + "\\\\frac" * 5000 + "}",
    "\\boxed{" + "{" * 39 + "1,3" + "}" * 39 + "}",
    "\\boxed{1} and " * 20000,
    "Answer " + "$" * 100000,
    "Answer: " + "$1$ " * 30000,
    "Final Answer: " + "9 " * 50000,
    "Final Answer: The final answer is " * 5000,
    "The answer is " * 20000,
    "#### " * 20000 + "1" + " " * 50000 + "x",
    "$" + "x" * 100000 + "$",
    "\\(" * 50000,
    "\\[" * 50000 + "1",
    "$$" * 50000,
    "Therefore " + "1 " * 50000 + ".",
    "<|im_start|>" * 10000,
    "$2 and then " * 20000,
    # Matrix expressions, unions of sets, decimal commas, |.| relations, ;-groups, ratios, a brace-less box
    "\\boxed{" + "+".join(["\\begin{pmatrix}1\\end{pmatrix}"] * 300) + "}",
    "\\boxed{" + "\\begin{pmatrix}" + "\\\\".join(["1"] * 64) + "\\end{pmatrix}\\begin{pmatrix}" + "&".join(["1"] * 64)
    + "\\end{pmatrix}}",  # a 64 x 64 outer product: over the entry bound before it is formed
    "\\boxed{" + "\\begin{pmatrix}a+b&c\\\\d&e^{f}\\end{pmatrix}" * 3 + "}",
    "\\boxed{" + "\\begin{pmatrix}" * 60 + "}",
    "\\boxed{" + "\\cup".join(["\\{%d\\}" % k for k in range(60)]) + "}",
    "\\boxed{" + "\\{" * 35 + "1" + "\\}" * 35 + "\\cup\\{2\\}}",
    "\\boxed{1," + "9" * 100000 + "}",
    "\\boxed{0{,}" + "1" * 900 + "}",
    "\\boxed{" + "|x-1|+" * 100 + "1<5}",
    "\\boxed{" + "|" * 200 + "x" + "|" * 200 + "<1}",
    "\\boxed{1<|x|<10^{10^{10}}}",
    "\\boxed{" + "; ".join(["p=%d,q=2" % k for k in range(150)]) + "}",
    "\\boxed{" + ";" * 5000 + "}",
    "\\boxed{" + ":".join(["x^{99}"] * 100) + "}",
    "\\boxed" + "7" * 100000,
    "\\boxed{|AB|" + "=1" * 3000 + "}",
]


@pytest.mark.parametrize("response", ADVERSARIAL_FORMS, ids=range(len(ADVERSARIAL_FORMS)))
def test_adversarial_forms_not_equal_fast(response):
    before = stats()
    t0 = time.monotonic()
    golds = ["5", "(-\\infty, 3)", "x < 3", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", "12000", "1, 2"]
    assert verify_batch([(response, g) for g in golds], fallbacks=True) == [False] * len(golds)
    assert verify_batch([(response, g) for g in golds]) == [False] * len(golds)
    assert time.monotonic() - t0 < 2.0
    assert stats()["internal_errors"] == before["internal_errors"]


@pytest.mark.parametrize("reference", ["", "\\boxed{", "10^{10^{10}}", "#### ", "9" * 5000, None, 1e308, float("nan")])
def test_adversarial_references(reference):
    t0 = time.monotonic()
    assert verify("\\boxed{5}", reference) is False
    assert time.monotonic() - t0 < 2.0


def test_non_string_inputs_never_raise():
    assert verify(None, "5") is False
    assert verify(5, "5") is False
    assert verify_batch("not a list of pairs") == [False] * len("not a list of pairs")


def test_no_model_text_reaches_eval():
    """No verifier module calls eval, exec, compile, __import__, sympify, parse_expr, parse_latex or sympy.S(...):
    the project builds its SymPy objects itself (latex.py), so model text is never code."""
    import ast

    forbidden = {"eval", "exec", "__import__", "sympify", "parse_expr", "parse_latex", "S"}  # as f(...) or x.f(...)
    folder = os.path.join(REPO, "dynamo", "verifier")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
            called = {c.attr for c in calls if isinstance(c, ast.Attribute)}
            called |= {c.id for c in calls if isinstance(c, ast.Name)}
            bare = {c.id for c in calls if isinstance(c, ast.Name)}
            assert not called & forbidden and "compile" not in bare, (name, called & forbidden)  # re.compile is fine


def test_fast_path_needs_no_process():
    shutdown()
    t0 = time.perf_counter()
    results = verify_batch([("7+8=15, so \\boxed{405}.", "405"), ("\\boxed{404}", "405"), ("\\boxed{0.5}", "\\frac12")] * 100)
    elapsed = time.perf_counter() - t0
    assert results == [True, False, True] * 100
    assert pool.POOL.workers == []  # no worker started, no SymPy
    assert elapsed < 0.5


def test_time_limit_kills_and_replaces_worker():
    assert verify("\\boxed{\\sqrt{75}}", "5\\sqrt{3}")  # a pair not seen before (verdicts are cached)
    pid = pool.POOL.workers[0].proc.pid
    before = stats()["timeouts"]
    os.kill(pid, signal.SIGSTOP)  # a hung worker: it can never answer
    t0 = time.monotonic()
    k = random.randrange(10**6, 10**7)  # a pair never seen before, so no cached verdict
    assert verify("\\boxed{\\sqrt{%d}}" % (9 * k), "3\\sqrt{%d}" % k, timeout_s=0.2) is False
    assert 0.2 <= time.monotonic() - t0 < 2.0
    assert stats()["timeouts"] == before + 1
    assert pool.POOL.workers[0].proc.pid != pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the hung worker was killed (and reaped)
    assert verify("\\boxed{\\sqrt{%d}}" % (9 * k), "3\\sqrt{%d}" % k)  # the replacement works; no cached False


def test_time_limit_off_main_thread():
    results = []
    threads = [threading.Thread(target=lambda: results.append(verify(*SYMBOLIC_PAIR))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [True, True, True]


def _verify_in_child(pair):
    return verify(*pair), verify(pair[0], "7", timeout_s=1e-4)


def test_time_limit_inside_worker_processes():
    for method in ("fork", "spawn"):
        ctx = multiprocessing.get_context(method)
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
            assert ex.submit(_verify_in_child, SYMBOLIC_PAIR).result(timeout=60) == (True, False)
    assert verify(*SYMBOLIC_PAIR)  # the parent's pool survived the fork


def test_batch_parallel_workers_in_order():
    pairs = [("\\boxed{\\sqrt{%d}}" % (4 * k), "2\\sqrt{%d}" % k) for k in range(2, 30)]
    pairs += [("\\boxed{\\sqrt{%d}}" % (4 * k + 1), "2\\sqrt{%d}" % k) for k in range(2, 30)]
    assert verify_batch(pairs, workers=2) == [True] * 28 + [False] * 28


def test_import_is_cheap_and_workers_do_not_leak():
    code = (
        "import sys, time\n"
        "t = time.perf_counter(); import dynamo.verifier as v; t = time.perf_counter() - t\n"
        "assert 'sympy' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n"
        "assert v.verify('\\\\boxed{\\\\sqrt{8}}', '2\\\\sqrt{2}')\n"
        "assert v.verify_batch([('\\\\boxed{\\\\sqrt{12}}', '2\\\\sqrt{3}'), ('\\\\boxed{x+x}', '2x')], workers=2)\n"
        "print(t, ' '.join(str(w.proc.pid) for w in v.pool.POOL.workers))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import_s, *pids = out.stdout.split()
    assert float(import_s) < 0.5
    assert len(pids) == 2
    time.sleep(0.2)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


# ---------------------------------------------------------------------------
# Property-based fuzzing: no input crashes, and no internal error is ever counted

LATEXISH = st.lists(st.sampled_from(list("0123456789.,+-*/^_{}()[]|!=<> xyzeipn\\$%&~") + [
    "\\frac", "\\sqrt", "\\pi", "\\infty", "\\pm", "\\cdot", "\\left(", "\\right)", "\\{", "\\}", "\\cup", "\\sin",
    "\\log", "\\text{", "\\boxed{", "\\begin{pmatrix}", "\\end{pmatrix}", "\\\\", "^{\\circ}", "\\le", "\\lfloor",
    "\\rfloor", "e12", "10^{", "</think>",
]), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LATEXISH, LATEXISH)
def test_fuzz_latex_pairs(answer, gold):
    before = stats()["internal_errors"]
    assert isinstance(verify("\\boxed{" + answer + "}", gold), bool)
    assert isinstance(verify(answer, gold, fallbacks=True), bool)
    assert stats()["internal_errors"] == before


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200), st.text(max_size=40))
def test_fuzz_any_text(response, gold):
    assert isinstance(verify(response, gold), bool)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=30), st.sampled_from(["1", "\\frac12", "x+1", "(1,2]"])), max_size=8))
def test_fuzz_batch_matches_single(pairs):
    boxed_pairs = [("\\boxed{" + a + "}", g) for a, g in pairs]
    assert verify_batch(boxed_pairs, workers=2) == [verify(r, g) for r, g in boxed_pairs]
