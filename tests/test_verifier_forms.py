# python -m pytest -q tests/test_verifier_forms.py
"""Verifier recall by answer form (tests/verifier_cases.py, also the benchmark's recall table), and the
pieces behind it: answer extraction without a box, math spans, units, thousands separators."""
import glob
import json
import os

import pytest

from dynamo.verifier import extract_answer, reference_answer, verify, verify_batch
from dynamo.verifier.extract import math_spans
from dynamo.verifier.normalize import (canonical_unit, group_answers, is_prose, normalize, normalize_pair,
                                      normalize_with_unit)
from tests.verifier_cases import CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_form(case):
    assert verify(case.response, case.gold, fallbacks=True) is case.equal, (case.response, case.gold)


UNBOXED = [c for c in CASES if c.equal and "\\boxed" not in c.response]


@pytest.mark.parametrize("case", UNBOXED, ids=[c.id for c in UNBOXED])
def test_training_reward_needs_the_box(case):
    assert verify(case.response, case.gold) is False  # boxed mode: unboxed text earns nothing


def test_forms_batch_matches_single():
    assert verify_batch([(c.response, c.gold) for c in CASES], workers=2, fallbacks=True) == [c.equal for c in CASES]


# ---------------------------------------------------------------------------
# Extraction without a box (evaluation mode) and with several boxes (both modes)

EXTRACT_FALLBACKS = [
    ("minerva", "Final Answer: The final answer is $12,\\!000$. I hope it is correct.", "12,\\!000"),
    ("minerva-split-math", "Final Answer: The final answer is $x_0 \\cos t+$ $\\dot{x}_0 \\sin t$. I hope it is correct.",
     "x_0 \\cos t+ \\dot{x}_0 \\sin t"),
    ("answer-is-first-math", "So the answer is $x \\in [-2, 7]$, which we check below.", "x \\in [-2, 7]"),
    ("hashes", "Total: 3 * 6 = 18 dollars.\n#### 18", "18"),
    ("answer-heading-display", "**Final Answer**\n\n\\[\n\\frac{3}{4}\n\\]", "\\frac{3}{4}"),
    ("answer-heading-sentence", "### Final Answer\nThe probability is $\\frac{1}{6}$.", "\\frac{1}{6}"),
    ("answer-copula-unit", "Final Answer: The volume is 120 cubic units.", "120 cubic units"),
    ("prose-answer-word-no-anchor", "To answer this, note that $x = 3$. So $y = 4$.", "y = 4"),
    ("last-sentence-skips-remarks", "Therefore $n = 7$. I hope it is correct. Hope this helps!", "n = 7"),
    ("display-math-ends-sentence", "We get $$\\frac{2}{1}.$$ Therefore it increases by 100%.", "100%"),
    ("turn-end-cuts", "Thus $x = 2$. <|im_start|>user\nWhat is $3+3$? The answer is 6.", "x = 2"),
    ("currency-pair-is-no-math", "It costs $2 each. So she pays $18 in total.", "18"),
    ("after-box-anchor", "$\\boxed{255}$ ... Final Answer: The final answer is $10,455$. I hope it is correct.", "10,455"),
    ("after-box-wordy", "So $x = \\boxed{5}$. Hence the answer is correct.", "5"),
    ("after-box-words-with-number", "So $x = \\boxed{5}$.\n\nThe answer is 5 apples.", "5"),
    ("inline-across-lines", "Answer $ \n 9 \n $", None),
    ("cut-off", "We get 3 + 4 = 7 and then multiply by", None),
    ("no-conclusion", "So $x = 12$. This took 3 steps.", None),
]


@pytest.mark.parametrize("response,expected", [c[1:] for c in EXTRACT_FALLBACKS], ids=[c[0] for c in EXTRACT_FALLBACKS])
def test_extract_fallbacks_forms(response, expected):
    assert extract_answer(response, fallbacks=True) == expected


EXTRACT_BOXES = [
    ("adjacent", "$\\boxed{1}\\boxed{2}$", "1, 2"),
    ("and", "The integers are $\\boxed{-2}$ and $\\boxed{1}$.", "-2, 1"),
    ("text-and-quad", "$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$", "(2, 2), (6, 2)"),
    ("repeated", "$\\boxed{4}$, that is $\\boxed{4}$", "4"),
    ("words-between", "First $\\boxed{3}$, then the final value is $\\boxed{4}$.", "4"),
    ("paragraph-between", "$\\boxed{3}$\n\n$\\boxed{4}$", "4"),
    ("hedging-is-a-list", "$\\boxed{4}, \\boxed{5}$", "4, 5"),
]


@pytest.mark.parametrize("response,expected", [c[1:] for c in EXTRACT_BOXES], ids=[c[0] for c in EXTRACT_BOXES])
def test_extract_joined_boxes(response, expected):
    assert extract_answer(response) == expected
    assert extract_answer(response, fallbacks=True) == expected


def test_hedged_boxes_do_not_earn_the_reward():
    assert not verify("$\\boxed{4}, \\boxed{5}$", "5")  # the last box alone would have matched
    assert verify("$\\boxed{4}, \\boxed{5}$", "4, 5")


MATH_SPANS = [
    ("inline", "a $x$ b", ["x"]),
    ("display-dollars-multiline", "$$\n1\n$$", ["\n1\n"]),
    ("brackets-multiline", "\\[\n2\n\\]", ["\n2\n"]),
    ("parens", "\\(3\\) and \\(4\\)", ["3", "4"]),
    ("inline-not-across-lines", "$a\nb$", []),
    ("parens-not-across-lines", "\\(a\nb\\)", []),
    ("escaped-dollar-inside", "$\\$5 = x$", ["\\$5 = x"]),
    ("escaped-dollar-outside", "costs \\$5 and $y$", ["y"]),
    ("currency-then-prose", "$2 each and then $3", []),
    ("unclosed", "$x + 1", []),
]


@pytest.mark.parametrize("text,contents", [c[1:] for c in MATH_SPANS], ids=[c[0] for c in MATH_SPANS])
def test_math_spans(text, contents):
    assert [c for _, _, c in math_spans(text)] == contents


# ---------------------------------------------------------------------------
# Normalisation: thousands separators, relations, empty set, units

NORMALIZE = [
    ("brace-separator", "12{,}000", "12000"),
    ("spaced-brace-separator", "14 {, }916", "14916"),
    ("bang-separator", "1,\\!000,\\!000", "1000000"),
    ("lone-number-commas", "7,425,000", "7425000"),
    ("comma-space-list", "32, 349", "32,349"),
    ("short-group-list", "1,2", "1,2"),
    ("brace-one-digit", "1{,}2", "1{,}2"),
    ("tuple-commas-stay", "(1,000)", "(1,000)"),
    ("ascii-relations", "x <= 2, y >= 3, z != 4", "x\\le2,y\\ge3,z\\ne4"),
    ("factorial-is-not-neq", "5!=120", "5!=120"),
    ("lt-gt", "0 \\lt x \\gt -1", "0<x>-1"),
    ("emptyset", "\\varnothing", "\\{\\}"),
    ("array-is-matrix", "\\left[\\begin{array}{cc}1&2\\end{array}\\right]", "[\\begin{matrix}1&2\\end{matrix}]"),
    ("cfrac", "\\cfrac{1}{2}", "\\frac{1}{2}"),
    ("or-is-a-list", "x < 2 \\text{ or } x > 3", "x<2,x>3"),
    ("and-of-relations", "x > 1 \\text{ and } x < 3", "x>1\\land x<3"),
    ("words-keep-and", "\\text{black and white}", "black and white"),
    ("approx-name", "x \\approx 11", "x=11"),
    ("approx-after-exact", "\\frac{1}{3} \\approx 0.33", "\\frac{1}{3}"),
    ("doubled-backslashes", "\\\\frac{1}{2}", "\\frac{1}{2}"),
    ("tex-group", "{1, 3}", "1,3"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in NORMALIZE], ids=[c[0] for c in NORMALIZE])
def test_normalize_forms(text, expected):
    assert normalize(text) == expected


# A decimal comma is read only against a point decimal on the other side, and never in a thousands grouping.
DECIMAL_COMMAS = [
    ("comma-vs-point", "1000,99", "1000.99", "1000.99", "1000.99"),
    ("gold-comma", "0.111", "0,111", "0.111", "0.111"),
    ("tex-brace-comma", "0{,}111", "0.111", "0.111", "0.111"),
    ("thousands-stays-thousands", "1,000", "1.000", "1000", "1.000"),
    ("gold-thousands-stays-thousands", "1.234", "1,234", "1.234", "1234"),
    ("list-against-integer", "1,5", "15", "1,5", "15"),
    ("spaced-list-against-decimal", "1, 5", "1.5", "1,5", "1.5"),
    ("lone-zero-is-no-thousands-group", "0,111", "111", "0,111", "111"),
    ("tuple", "(1,5)", "1.5", "(1,5)", "1.5"),
    ("same-value-only", "1,50", "1.5", "1.50", "1.5"),
    ("no-rounding-to-the-gold", "1.26", "1,3", "1.26", "1,3"),
]


@pytest.mark.parametrize("answer,ref,norm_answer,norm_ref", [c[1:] for c in DECIMAL_COMMAS],
                         ids=[c[0] for c in DECIMAL_COMMAS])
def test_decimal_commas(answer, ref, norm_answer, norm_ref):
    (a, _), (b, _) = normalize_pair(answer, ref)
    assert (a, b) == (norm_answer, norm_ref)


# Semicolons separate whole answers; groups of assignments become tuples (in the reference's name order).
GROUPS = [
    ("semicolon-list", "(5,2);(7,2)", "(5,2),(7,2)", ("(5,2),(7,2)", "(5,2),(7,2)")),
    ("assignment-groups", "p=5,q=2;p=7,q=2", "(5,2),(7,2)", ("(5,2),(7,2)", "(5,2),(7,2)")),
    ("reference-name-order", "q=2,p=5;q=2,p=7", "p=5,q=2;p=7,q=2", ("(5,2),(7,2)", "(5,2),(7,2)")),
    ("one-unknown", "x=1;x=-2", "-2,1", ("1,-2", "-2,1")),
    ("other-names-per-group", "x=1;y=2", "(1,2)", ("x=1,y=2", "(1,2)")),
    ("name-twice-in-group", "p=1,p=2;p=3,p=4", "1", ("p=1,p=2,p=3,p=4", "1")),
    ("no-semicolon", "p=5,q=2", "(5,2)", ("p=5,q=2", "(5,2)")),
]


@pytest.mark.parametrize("resp,ref,expected", [c[1:] for c in GROUPS], ids=[c[0] for c in GROUPS])
def test_group_answers(resp, ref, expected):
    assert group_answers(resp, ref) == expected


def test_matrices_are_not_prose():
    matrix = "\\begin{pmatrix}1&2\\end{pmatrix}"
    assert not is_prose(matrix + "+" + matrix + "+" + matrix)
    assert is_prose("\\text{the sum of the three given matrices}")


UNITS = [
    ("text", "5\\text{ cm}", ("5", "cm")),
    ("bare", "5 cm", ("5", "cm")),
    ("glued", "1cm", ("1", "cm")),
    ("squared", "15\\mbox{ cm}^2", ("15", "cm^2")),
    ("square-word", "864 \\text{ square inches}", ("864", "inch^2")),
    ("percent-sign", "28\\%", ("28", "%")),
    ("percent-word", "28 percent", ("28", "%")),
    ("degrees", "90^\\circ", ("90", "degree")),
    ("degrees-word", "90 \\text{ degrees}", ("90", "degree")),
    ("plural", "125 miles", ("125", "mile")),
    ("variable-not-unit", "5x", ("5x", "")),
    ("single-letter-not-unit", "5 m", ("5m", "")),
    ("pi-not-unit", "2\\pi", ("2\\pi", "")),
    ("text-alone-is-the-answer", "\\text{Evelyn}", ("evelyn", "")),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in UNITS], ids=[c[0] for c in UNITS])
def test_units(text, expected):
    assert normalize_with_unit(text) == expected


@pytest.mark.parametrize("a,b", [("inches", "in"), ("feet", "ft"), ("square units", "units^2"), ("pct", "percent"),
                                 ("\\ hours", "hr"), ("cm^{2}", "sq cm")])
def test_unit_spellings(a, b):
    assert canonical_unit(a) == canonical_unit(b)


# ---------------------------------------------------------------------------
# The symbolic stage's readings of the harder forms (in-process: this imports SymPy)


def _intervals(answer: str):
    from dynamo.verifier.equivalence import _real_set, parse_answer

    name, pieces = _real_set(parse_answer(answer))
    return name, [(str(lo), str(hi), lo_closed, hi_closed) for lo, hi, lo_closed, hi_closed, _, _ in pieces]


ABS_SETS = [
    ("chain", "1\\le|z|\\le3/2", ("z", [("-3/2", "-1", True, True), ("1", "3/2", True, True)])),
    ("lt", "|x-1|<2", ("x", [("-1", "3", False, False)])),
    ("gt", "|x|>2", ("x", [("-oo", "-2", False, False), ("2", "oo", False, False)])),
    ("ge-scaled", "|2x-3|\\ge1", ("x", [("-oo", "1", False, True), ("2", "oo", True, False)])),
    ("two-terms", "|x|+|x-2|\\le4", ("x", [("-1", "3", True, True)])),
    ("ne", "|x|\\ne3", ("x", [("-oo", "-3", False, False), ("-3", "3", False, False), ("3", "oo", False, False)])),
    ("all-reals", "|x|\\ge0", ("x", [("-oo", "oo", False, False)])),
    ("no-reals", "|x|<-1", ("x", [])),
    ("lower-end-below-zero", "-1<|x|<2", ("x", [("-2", "2", False, False)])),
]


@pytest.mark.parametrize("answer,expected", [c[1:] for c in ABS_SETS], ids=[c[0] for c in ABS_SETS])
def test_abs_relation_sets(answer, expected):
    assert _intervals(answer) == expected


@pytest.mark.parametrize("answer", ["x^2<4", "|x|+|y|<1", "|x^2-1|<3", "||x|-1|<1", "|x|<y"])
def test_abs_relations_outside_the_solved_form(answer):
    from dynamo.verifier.equivalence import parse_answer

    assert parse_answer(answer)[3] is None  # a relation, but not read as a set of reals


MATRIX_EXPRESSIONS = [
    ("sum", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}+\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", [[2, 2], [3, 5]]),
    ("product", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}\\begin{pmatrix}0&1\\\\1&0\\end{pmatrix}", [[2, 1], [4, 3]]),
    ("combination", "2\\begin{pmatrix}1\\\\0\\end{pmatrix}-\\frac{1}{2}\\cdot\\begin{pmatrix}0\\\\2\\end{pmatrix}", [[2], [-1]]),
]


@pytest.mark.parametrize("answer,entries", [c[1:] for c in MATRIX_EXPRESSIONS], ids=[c[0] for c in MATRIX_EXPRESSIONS])
def test_matrix_expressions_evaluate(answer, entries):
    from dynamo.verifier.equivalence import parse_answer

    kind, rows = parse_answer(answer)
    assert kind == "matrix" and [[cell[1] for cell in row] for row in rows] == entries


@pytest.mark.parametrize("answer", [
    "\\begin{pmatrix}1&2\\end{pmatrix}+\\begin{pmatrix}1\\\\2\\end{pmatrix}",  # shapes do not add
    "\\begin{pmatrix}1\\\\2\\end{pmatrix}\\begin{pmatrix}1\\\\2\\end{pmatrix}",  # shapes do not multiply
    "\\begin{pmatrix}1\\end{pmatrix}+1",  # a scalar added to a matrix
    "\\begin{pmatrix}1\\end{pmatrix}+2+3\\begin{pmatrix}1\\end{pmatrix}",  # a sum is no coefficient
    "\\begin{pmatrix}1\\end{pmatrix}^{2}",  # powers are not evaluated
    "\\begin{pmatrix}1\\end{pmatrix}" * 4,  # more matrices in one product than MAX_FACTORS
])
def test_matrix_expressions_rejected(answer):
    from dynamo.verifier.equivalence import ParseError, parse_answer

    with pytest.raises(ParseError):
        parse_answer(answer)


# ---------------------------------------------------------------------------
# The training reward's extraction policy (reward.extraction; train.py passes it to reward.score)


def test_reward_extraction_config():
    from dynamo.config import ConfigError, load_config
    from dynamo.reward import score

    assert load_config([]).reward.extraction == "boxed"
    cfg = load_config(["reward.extraction=fallbacks"])
    responses = ["so $\\boxed{7}$.", "Thus the answer is 7."]
    assert score(responses, ["7", "7"], fallbacks=cfg.reward.extraction == "fallbacks") == [True, True]
    assert score(responses, ["7", "7"]) == [True, False]
    with pytest.raises(ConfigError, match="reward.extraction"):
        load_config(["reward.extraction=anything"])


# ---------------------------------------------------------------------------
# Every benchmark gold against itself in each ending (benchmark files are not part of the repository)

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "benchmarks")
BENCHMARK_FILES = sorted(glob.glob(os.path.join(BENCHMARKS, "*", "test.jsonl")))


@pytest.mark.skipif(not BENCHMARK_FILES, reason="benchmark files not found next to the repository")
def test_benchmark_golds_in_every_ending():
    golds = []
    for path in BENCHMARK_FILES:
        with open(path) as f:
            golds += [reference_answer(json.loads(line)) for line in f if line.strip()]
    endings = [
        (lambda g: f"Adding up, the result is $\\boxed{{{g}}}$.", False),
        (lambda g: f"Final Answer: The final answer is ${g}$. I hope it is correct.", True),
        (lambda g: f"**Final Answer**\n\n$$\n{g}\n$$", True),
    ]
    for write, fallbacks in endings:
        verdicts = verify_batch([(write(g), g) for g in golds], workers=2, fallbacks=fallbacks)
        assert [g for g, ok in zip(golds, verdicts) if not ok] == [], write("GOLD")
    big = [g for g in golds if g.isdigit() and len(g) >= 4]  # GSM8K and AIME-size integers with separators
    pairs = [(f"$\\boxed{{{int(g):,}}}$".replace(",", "{,}"), g) for g in big]
    assert all(verify_batch(pairs, workers=2))
