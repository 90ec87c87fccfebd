# python -m pytest -q tests/test_verifier.py
"""Verifier accuracy: extraction, benchmark references, normalisation and form-driven equivalence.

Hand-written rows only (never benchmark files). Each case is (boxed answer, gold as benchmarks store it).
"""
import pytest

from dynamo.verifier import extract_answer, reference_answer, stats, verify, verify_batch


def boxed(answer: str) -> str:
    return f"Let me work through it. 7+8=15, ... so the answer is $\\boxed{{{answer}}}$."


EQUAL = [
    # integers, AIME leading zeros, AMC floats, thousands separators, signs
    ("405", "405"),
    ("25", "025"),
    ("025", "25"),
    ("27", "27.0"),
    ("27.0", "27"),
    ("2125", "2,125"),
    ("2,125", "2125"),
    ("10,080", "10,\\!080"),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100"),
    ("-7", "-7"),
    ("+3", "3"),
    ("1000", "1e3"),
    # fractions and decimals
    ("\\frac{1}{4}", "\\frac14"),
    ("\\dfrac{17}{50}", "\\frac{17}{50}"),
    ("\\tfrac{3}{2}", "\\frac{3}{2}"),
    ("0.25", "\\frac{1}{4}"),
    ("1/4", "\\frac{1}{4}"),
    ("\\frac{2}{4}", "\\frac{1}{2}"),
    ("-\\frac{35}{9}", "-\\frac{35}{9}"),
    ("\\frac{-35}{9}", "-\\frac{35}{9}"),
    ("0.333333", "\\frac{1}{3}"),
    ("0.6666667", "\\frac{2}{3}"),
    ("1\\frac{4}{5}", "\\frac{9}{5}"),
    ("\\frac{275}{2}", "137 \\frac{1}{2}"),
    ("0.0000672", ".0000672"),
    ("18.9", "\\$18.90"),
    ("5.4", "5.4 \\text{ cents}"),
    ("1.25", "\\frac{5}{4}"),
    # Minerva E-notation, rounding at the gold's precision
    ("3.3 \\times 10^{12}", "3.3e12"),
    ("3.3\\cdot10^{12}", "3.3e12"),
    ("3.30e12", "3.3e12"),
    ("1.243\\times 10^{-8}", "1.24e-8"),
    ("1.24 \\times 10^{-8} \\mathrm{~cm}", "1.24e-8"),
    ("0.5544", "0.554"),
    ("6630", "6630"),
    ("\\frac{1}{3}", "0.333"),
    # units, degrees, percent, text, trailing period, x = 3
    ("90^\\circ", "90"),
    ("90", "90^\\circ"),
    ("76^{\\circ}", "76^\\circ"),
    ("8\\%", "8 \\%"),
    ("8", "8 \\%"),
    ("62.5", "62.5%"),
    ("864 \\mbox{ inches}^2", "864"),
    ("15\\text{ cm}^2", "15\\mbox{ cm}^2"),
    ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}"),
    ("32348", "\\$32,\\!348"),
    ("5.", "5"),
    ("x = 5", "x=5"),
    ("x=5", "5"),
    ("5", "x=5"),
    ("k=2n-1", "$k=2 n-1$"),
    ("2n-1", "$k=2 n-1$"),
    ("f(x) = 2x", "$f(x)=2 x$"),
    ("2x", "$f(x)=2 x$"),
    ("\\text{(C)}", "\\text{(C)}"),
    ("C", "\\text{(C)}"),
    ("(C)", "\\text{(C)}"),
    ("\\text{Evelyn}", "\\text{Evelyn}"),
    ("Evelyn", "\\text{Evelyn}"),
    ("East", "\\text{east}"),
    # spacing and delimiters
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("3\\,\\sqrt{13}", "3\\sqrt{13}"),
    ("3~\\sqrt{13}", "3\\sqrt{13}"),
    ("3\\!\\sqrt{13}", "3\\sqrt{13}"),
    ("3\\;\\sqrt{13}", "3\\sqrt{13}"),
    ("\\displaystyle\\frac{3}{56}", "\\frac{3}{56}"),
    # roots, pi, e, powers
    ("\\sqrt{52}", "2\\sqrt{13}"),
    ("2\\sqrt{13}", "\\sqrt{52}"),
    ("\\sqrt{2}\\cdot\\sqrt{26}", "2\\sqrt{13}"),
    ("11\\sqrt2", "11\\sqrt{2}"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("\\frac{8}{\\sqrt[3]{7}}", "$\\frac{8}{\\sqrt[3]{7}}$"),
    ("8\\cdot 7^{-1/3}", "$\\frac{8}{\\sqrt[3]{7}}$"),
    ("5 \\sqrt[3]{4}", "$5 \\sqrt[3]{4}$"),
    ("\\sqrt{3+2\\sqrt{2}}", "1+\\sqrt{2}"),
    ("288\\pi", "288 \\pi"),
    ("\\pi \\cdot 288", "288 \\pi"),
    ("\\frac{20000}{\\pi}", "\\frac{20000}{\\pi}"),
    ("18+2\\pi", "2\\pi+18"),
    ("2^{1009}", "$2^{1009}$"),
    ("4^{504.5}", "$2^{1009}$"),
    ("\\frac{100!}{2^{50}}", "$\\frac{100!}{2^{50}}$"),
    ("2021\\cdot505\\cdot337", "$2021 \\cdot 505 \\cdot 337$"),
    ("343943885", "$2021 \\cdot 505 \\cdot 337$"),
    ("6.32455532", "$2 \\sqrt{10}$"),
    ("3.14159", "\\pi"),  # a decimal with six correct digits stands for an irrational gold
    ("3.14159265", "\\pi"),
    ("e^{2}", "e^2"),
    ("\\exp(2)", "e^2"),
    ("\\log_{2} 8", "3"),
    ("\\frac{\\log 2}{\\log 2-\\log 3}", "$\\frac{\\log 2}{\\log 2-\\log 3}$"),
    ("-\\log_{10}250", "-\\log _{10} 250"),
    ("\\frac{\\ln 2}{\\ln\\frac{2}{3}}", "$\\frac{\\log 2}{\\log 2-\\log 3}$"),
    # complex numbers
    ("6+9i", "6+9i"),
    ("9i+6", "6+9i"),
    ("1+\\sqrt{3}i", "1+\\sqrt{3} i"),
    ("1+i\\sqrt{3}", "1+\\sqrt{3} i"),
    # intervals, unions, tuples, sets, lists
    ("(3,4]", "(3,4]"),
    ("(-\\infty, 0]", "(-\\infty, 0]"),
    ("(-\\infty,2)\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)"),
    ("(3,\\infty)\\cup(-\\infty,2)", "(-\\infty, 2) \\cup (3, \\infty)"),
    ("[-2,7]", "x \\in [-2,7]"),
    ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]"),
    ("(15,-29)", "(15,-29)"),
    ("15,-29", "(15,-29)"),
    ("(6,31,-1)", "(6,31,-1)"),
    ("-2,1", "-2,1"),
    ("1,-2", "-2,1"),
    ("\\{1,-2\\}", "-2,1"),
    ("x=1, x=-2", "-2,1"),
    ("7,5,3", "3, 5, 7"),
    ("1 \\pm \\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("1+\\sqrt{19}, 1-\\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("1-\\sqrt{19},1+\\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("-2, 1+\\sqrt5, 1-\\sqrt5", "\\{1\\pm\\sqrt{5},-2\\}"),
    ("\\frac{1}{3}, 1, 9", "$\\frac{1}{3}, 1, 9$"),
    ("(2,4),(1,1)", "$(1,1),(2,4)$"),
    ("x, 2-x", "$f(x)=x$,$f(x)=2-x$"),
    ("\\frac{\\pi}{6}, \\frac{5\\pi}{6}", "$\\frac{1}{6} \\pi, \\frac{5}{6} \\pi$"),
    # matrices
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}"),
    ("\\begin{bmatrix}-1&0\\\\0&-1\\end{bmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}"),
    ("\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}"),
    # equations and inequalities up to a scalar factor
    ("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z + 4 = 0"),
    ("-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0"),
    ("10x-14y+22z=-8", "5x - 7y + 11z + 4 = 0"),
    ("y = 2x + 3", "y = 2x + 3"),
    ("2x+3", "y = 2x + 3"),
    ("2x - y + 3 = 0", "y = 2x + 3"),
    ("k \\ge 2", "$k \\geqslant 2$"),
    ("2 \\le k", "$k \\geqslant 2$"),
    # expressions in variables
    ("p - q", "p - q"),
    ("-q+p", "p - q"),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5 - x^4 + x^3 - x^2 + x - 1"),
    ("(x-1)(x^4+x^2+1)", "x^5 - x^4 + x^3 - x^2 + x - 1"),
    ("(a+5)(b+2)", "(a+5)(b+2)"),
    ("ab+2a+5b+10", "(a+5)(b+2)"),
    ("\\frac{n(n+1)}{2}", "$\\frac{n(n+1)}{2}$"),
    ("\\frac{n^2+n}{2}", "$\\frac{n(n+1)}{2}$"),
    ("\\frac{1}{4}n(n+1)", "$\\frac{n(n+1)}{4}$"),
    ("\\frac{11+9a}{20}", "\\frac{11+9a}{20}"),
    ("0.55+0.45a", "\\frac{11+9a}{20}"),
    ("2RC+R+C", "$2RC+R+C$"),
    ("R(2C+1)+C", "$2RC+R+C$"),
    ("\\cot x", "\\cot x"),
    ("\\frac{\\cos x}{\\sin x}", "\\cot x"),
    ("\\sin^2 x + \\cos^2 x", "1"),
    ("\\binom{2n}{n}", "$\\binom{2n}{n}$"),
    ("\\frac{(2n)!}{(n!)^2}", "$\\binom{2n}{n}$"),
    ("\\frac{e^{t}}{3}", "e^{t} / 3"),
    ("\\frac{1}{2a}(e^{at}-e^{-at})", "\\frac{1}{2a}(\\exp{a*t} - \\exp{-a*t})"),
    ("\\sqrt{2} \\cos (2 t-\\pi / 4)", "\\cos(2t)+\\sin(2t)"),
    ("\\lfloor \\log_2 n \\rfloor + 1", "$\\left\\lfloor\\log _{2} n\\right\\rfloor+1$"),
    ("|x-1|", "|1-x|"),
    ("2516_8", "2516_8"),
    ("2516", "2516_8"),
    ("4210_5", "4210_{5}"),
    # a decimal against an exact value SymPy computes (a power, a product): the plain-number rules apply
    ("0.5", "2^{-1}"),
    ("0.125", "\\frac{1}{2^3}"),
    ("0.333333", "3^{-1}"),
    ("2^{-1}", "0.50"),
    # subscripts: x_{1} and x_1 are one name; v_0 is a name, not a numeral in base 0
    ("x_{1}+x_{2}", "x_2+x_1"),
    ("v_{0}t", "tv_0"),
]

NOT_EQUAL = [
    ("404", "405"),
    ("25", "026"),
    ("27.01", "27.0"),
    ("2.9999999", "3"),
    ("0.33", "\\frac{1}{3}"),
    ("0.3333", "\\frac{1}{3}"),
    ("0.2500001", "\\frac{1}{4}"),
    ("0.26", "\\frac{1}{4}"),
    ("\\frac{1}{3}", "\\frac{1}{4}"),
    ("\\frac{3}{1}", "\\frac{1}{3}"),
    ("-\\frac{1}{4}", "\\frac{1}{4}"),
    ("1.2e-8", "1.24e-8"),
    ("1.25\\times10^{-8}", "1.24e-8"),
    ("3.3e13", "3.3e12"),
    ("0.55", "0.554"),
    ("3.14", "\\pi"),
    ("3.1416", "\\pi"),
    ("3.141599", "\\pi"),  # seven digits, but off by more than one unit in the last place

    ("0.08", "8\\%"),
    ("800", "8\\%"),
    ("6.32", "$2 \\sqrt{10}$"),
    ("\\sqrt{53}", "\\sqrt{52}"),
    ("2\\sqrt{3}", "3\\sqrt{2}"),
    ("\\sqrt[3]{4}", "\\sqrt{4}"),
    ("\\pi", "2\\pi"),
    ("e", "\\pi"),
    ("2^{1008}", "$2^{1009}$"),
    ("\\frac{99!}{2^{50}}", "$\\frac{100!}{2^{50}}$"),
    ("\\frac{100!}{2^{50}}+1", "$\\frac{100!}{2^{50}}$"),  # exact means exact, however large
    ("10^{50}\\sqrt{2}+1", "10^{50}\\sqrt{2}"),
    ("x+10^{40}+1", "x+10^{40}"),
    ("6-9i", "6+9i"),
    ("6", "6+9i"),
    ("(3,4)", "(3,4]"),
    ("[3,4]", "(3,4]"),
    ("(3,4]", "[3,4)"),
    ("(-\\infty, 0)", "(-\\infty, 0]"),
    ("(2,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)"),
    ("(-29,15)", "(15,-29)"),
    ("-29,15", "(15,-29)"),
    ("(15,-29,0)", "(15,-29)"),
    ("15", "(15,-29)"),
    ("1", "-2,1"),
    ("1,2", "-2,1"),
    ("-2,1,3", "-2,1"),
    ("(1,-2)", "-2,1"),
    ("1+\\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("1\\pm\\sqrt{20}", "1 \\pm \\sqrt{19}"),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}"),
    ("\\begin{pmatrix} -1 & 0 & 0 \\\\ 0 & -1 & 0 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}"),
    ("\\begin{pmatrix} -1 \\\\ 0 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\end{pmatrix}"),
    ("5x - 7y + 11z - 4 = 0", "5x - 7y + 11z + 4 = 0"),
    ("5x - 7y + 11z + 4", "5x - 7y + 11z + 4 = 0"),
    ("y = 2x - 3", "y = 2x + 3"),
    ("k \\le 2", "$k \\geqslant 2$"),
    ("k > 2", "$k \\geqslant 2$"),
    ("-k \\ge -2", "$k \\geqslant 2$"),
    ("p + q", "p - q"),
    ("q - p", "p - q"),
    ("x^5 - x^4 + x^3 - x^2 + x + 1", "x^5 - x^4 + x^3 - x^2 + x - 1"),
    ("\\frac{n(n-1)}{2}", "$\\frac{n(n+1)}{2}$"),
    ("2k", "$2n$"),
    ("n^2", "$2n$"),
    ("2RC+R", "$2RC+R+C$"),
    ("\\tan x", "\\cot x"),
    ("\\sin^2 x - \\cos^2 x", "1"),
    ("\\binom{2n}{n+1}", "$\\binom{2n}{n}$"),
    ("\\frac{e^{t}}{2}", "e^{t} / 3"),
    ("x - 1", "|x-1|"),
    ("1358", "2516_8"),
    ("2516_9", "2516_8"),
    ("\\text{(B)}", "\\text{(C)}"),
    ("D", "\\text{(C)}"),
    ("Evelyn Navin", "\\text{Evelyn}"),
    ("west", "\\text{east}"),
    ("x=6", "x=5"),
    ("k=2n+1", "$k=2 n-1$"),
    ("5\\sqrt{2}", "5"),
    ("\\infty", "5"),
    ("-\\infty", "\\infty"),
    ("\\frac{1}{0}", "1"),
    ("\\frac{0}{0}", "0"),
    ("x", "5"),
    ("\\text{no solution}", "5"),
    ("", "5"),
    ("0.33", "3^{-1}"),  # too few digits for a non-terminating value, however the value is written
    ("0.5", "2^{-2}"),
    ("0.5000001", "2^{-1}"),  # a terminating value compares exactly
    ("x_{1}", "x_{2}"),
    ("v_1t", "tv_0"),
    ("\\{1,2\\}", "(1,2)"),  # a set in braces is no tuple (nor an open interval)
    ("\\{\\{1\\}\\}", "\\{1\\}"),  # a set inside a set stays one element
]


@pytest.mark.parametrize("answer,gold", EQUAL)
def test_equal(answer, gold):
    assert verify(boxed(answer), gold), (answer, gold)


@pytest.mark.parametrize("answer,gold", NOT_EQUAL)
def test_not_equal(answer, gold):
    assert not verify(boxed(answer), gold), (answer, gold)


# ---------------------------------------------------------------------------
# Extraction

EXTRACT = [
    ("so \\boxed{5}.", "5"),
    ("first \\boxed{3}, then \\boxed{4}", "4"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\fbox{12}", "12"),
    ("the answer is $\\boxed 5$.", "5"),
    ("\\boxed{x^{2^{3}}}", "x^{2^{3}}"),
    ("<think>maybe \\boxed{1}</think> so \\boxed{2}", "2"),
    ("<think>maybe \\boxed{1}</think> The answer is 2.", None),
    ("<think>still thinking \\boxed{1}", None),
    ("\\boxed{unbalanced", None),
    ("\\boxed{}", None),
    ("no answer here", None),
    ("", None),
    ("\\boxedfoo{3}", None),
    # \boxed without braces boxes one token; where more could follow it TeX and the writer disagree: no answer
    ("so $\\boxed7$.", "7"),
    ("\\boxed7.", "7"),
    ("\\(\\boxed7\\)", "7"),
    ("\\boxed\\pi", "\\pi"),
    ("\\boxed72", None),
    ("\\boxed7.5", None),
    ("\\boxed-7", None),
    ("\\boxed\\frac12", None),
]


@pytest.mark.parametrize("response,expected", EXTRACT)
def test_extract(response, expected):
    assert extract_answer(response) == expected


FALLBACKS = [
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("Thus the answer is 42.", "42"),
    ("So the final answer is $3\\sqrt{2}$.\n", "3\\sqrt{2}"),
    ("**Answer:** 17", "17"),
    ("Answer: 3/4", "3/4"),
    ("The answer is 7. Later: the answer is 8.", "8"),
    ("I could not solve it.", None),
]


@pytest.mark.parametrize("response,expected", FALLBACKS)
def test_extract_fallbacks(response, expected):
    assert extract_answer(response, fallbacks=True) == expected
    assert extract_answer(response) is None  # training never uses the fallbacks


def test_verify_fallbacks_only_for_evaluation():
    response = "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."
    assert verify(response, "0.5", fallbacks=True)
    assert not verify(response, "0.5")
    assert verify_batch([(response, "\\frac12")], fallbacks=True) == [True]


# ---------------------------------------------------------------------------
# Benchmark reference formats (hand-written rows in each benchmark's layout)

REFERENCES = [
    ({"problem": "p", "answer": "025", "url": "u"}, "025"),  # AIME 2024
    ({"id": "I-1", "problem": "p", "answer": "70", "solution": ""}, "70"),  # AIME 2025 part I
    ({"id": 0, "problem": "p", "answer": 27.0}, "27"),  # AMC 2023
    ({"question": "q", "answer": "He pays 5 + 7 = <<5+7=12>>12.\n#### 2,125"}, "2125"),  # GSM8K
    ({"question": "q", "answer": "Loss.\n#### -3"}, "-3"),
    ({"problem": "p", "solution": "So $x = \\boxed{3.3e12} \\mathrm{~cm}$.", "type": "t"}, "3.3e12"),  # Minerva
    ({"problem": "p", "solution": "\\boxed{1} and \\boxed{\\frac{1}{s+a}}\n\\]"}, "\\frac{1}{s+a}"),
    ({"question": "q", "final_answer": ["$\\frac{2}{3}$"], "is_multiple_answer": False}, "\\frac{2}{3}"),  # OlympiadBench
    ({"question": "q", "final_answer": ["$69$,$84$"], "is_multiple_answer": True}, "69,84"),
    ({"question": "q", "final_answer": ["4.2"], "is_multiple_answer": False, "unit": "%"}, "4.2"),
    ({"problem": "p", "answer": "\\frac{14}{3}", "solution": "...\\boxed{\\frac{14}{3}}"}, "\\frac{14}{3}"),  # MATH
]


@pytest.mark.parametrize("row,expected", REFERENCES)
def test_reference_answer(row, expected):
    assert reference_answer(row) == expected


@pytest.mark.parametrize(
    "row",
    [{}, {"question": "q"}, {"answer": ""}, {"answer": "#### "}, {"solution": "no box"}, {"final_answer": ["$$"]}, {"answer": True}],
)
def test_reference_answer_errors(row):
    with pytest.raises(ValueError, match="row|answer|solution|####"):
        reference_answer(row)


def test_benchmark_rows_end_to_end():
    rows = [
        ({"question": "q", "final_answer": ["$69$,$84$"], "is_multiple_answer": True}, "\\boxed{84, 69}", True),
        ({"question": "q", "final_answer": ["$69$,$84$"], "is_multiple_answer": True}, "\\boxed{69}", False),
        ({"question": "q", "answer": "...\n#### 2,125"}, "\\boxed{2,125}", True),
        ({"problem": "p", "answer": "033"}, "\\boxed{33}", True),
        ({"problem": "p", "solution": "$\\boxed{2.55e-10} \\mathrm{~m}$"}, "\\boxed{2.55 \\times 10^{-10}\\text{ m}}", True),
    ]
    for row, response, expected in rows:
        assert verify(response, reference_answer(row)) is expected, (row, response)


def test_reference_as_stored():
    """verify also accepts golds in their stored form: AMC floats, GSM8K '####', Minerva solutions."""
    assert verify("\\boxed{27}", 27.0)
    assert verify("\\boxed{2125}", "steps\n#### 2,125")
    assert verify("\\boxed{3.3e12}", "so $\\boxed{3.3e12}$ cm")


def test_batch_in_order_and_stats():
    pairs = [(boxed(a), g) for a, g in EQUAL[:40] + NOT_EQUAL[:40]]
    before = stats()
    out = verify_batch(pairs, workers=2)
    assert out == [True] * 40 + [False] * 40
    after = stats()
    assert after["calls"] - before["calls"] == 80
    assert set(after) >= {"calls", "parse_failures", "timeouts", "internal_errors"}


def test_batch_bad_items_never_raise():
    out = verify_batch([("\\boxed{1}", "1"), None, (1, 2), ("\\boxed{1}",), ("\\boxed{2}", None), ("\\boxed{1}", "1")])
    assert out == [True, False, False, False, False, True]
