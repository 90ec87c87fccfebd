"""Form-driven equivalence of two normalised answers with SymPy (the symbolic stage; runs in a worker).

The reference's form decides the test: bare comma lists and \\{...\\} are unordered sets, bracketed
tuples and intervals are ordered with their brackets, \\cup unions are unordered, matrices compare by
shape and entry, relations up to a scalar factor (positive for inequalities), scalars by
exact / decimal-precision rules (see normalize.numbers_equal), expressions in variables numerically at
random points, with SymPy simplification as the last resort.
"""
import random
import re
from fractions import Fraction

import sympy
from sympy.core.evalf import PrecisionExhausted

from dynamo.verifier.latex import ParseError, check_bounds, to_sympy
from dynamo.verifier.normalize import (HIGH_PRECISION_DIGITS, match_unordered, numbers_equal, parse_number,
                                      split_top, terminates)

MAX_ITEMS = 64  # elements in a list / tuple / matrix
N_POINTS = 6  # random points for expressions in variables
EXACT_DIGITS = 50  # working precision when a decimal is involved (exact pairs are compared exactly)
REL_TOL_DECIMAL_TERMINATING = sympy.Float("1e-25")  # 0.25 vs 2^{-2}: exact up to the Float's digits
REL_TOL_DECIMAL_RESPONSE = 1e-6  # a decimal response against an exact non-terminating reference
REL_TOL_DECIMAL_REFERENCE = 1e-4  # an expression reference containing decimals (rounded constants)
_RELATIONS = [("\\le", "<="), ("\\ge", ">="), ("\\lt", "<"), ("\\gt", ">"), ("<", "<"), (">", ">"), ("=", "=")]
_MATRIX_RE = re.compile(r"\\begin\{([pbBv]?matrix)\}(.*)\\end\{\1\}", re.S)


def _matching(s: str, i: int) -> int:
    """Index of the bracket closing the one at s[i] (any of ( [ \\{), or -1."""
    depth, j = 0, i
    while j < len(s):
        if s.startswith("\\{", j) or s.startswith("\\}", j):
            depth += 1 if s[j + 1] == "{" else -1
            j += 2
        else:
            depth += s[j] in "([{"
            depth -= s[j] in ")]}"
            j += 1
        if depth == 0:
            return j - 1
    return -1


def _expand_pm(s: str) -> list[str]:
    """1 \\pm \\sqrt{19} -> ['1+\\sqrt{19}', '1-\\sqrt{19}'] (at most two signs, i.e. four values)."""
    out = [s]
    for _ in range(2):
        nxt = []
        for t in out:
            m = re.search(r"\\(pm|mp)(?![A-Za-z])", t)
            if not m:
                nxt.append(t)
                continue
            first, second = ("+", "-") if m.group(1) == "pm" else ("-", "+")
            nxt += [t[: m.start()] + first + t[m.end() :], t[: m.start()] + second + t[m.end() :]]
        out = nxt
    if any(re.search(r"\\(pm|mp)(?![A-Za-z])", t) for t in out):
        raise ParseError("too many \\pm")
    return out


def parse_answer(s: str):
    """Structure of an answer: ('set', items) | ('seq', open, close, items) | ('union', parts) |
    ('matrix', rows) | ('rel', op, lhs - rhs) | ('expr', sympy, text)."""
    check_bounds(s)
    parts = split_top(s)
    if len(parts) > MAX_ITEMS:
        raise ParseError("too many items")
    if len(parts) > 1:
        return ("set", _flatten([_item(p) for p in parts]))
    return _item(s)


def _flatten(items: list) -> list:
    out = []
    for it in items:  # \pm inside a list contributes both values to it
        out += it[1] if it[0] == "set" else [it]
    return out


def _item(s: str):
    s = s.strip()
    if not s:
        raise ParseError("empty item")
    if s.startswith("\\{") and _matching(s, 0) == len(s) - 1:
        inner = s[2:-2]
        return ("set", _flatten([_item(p) for p in split_top(inner)]) if inner else [])
    member = split_top(s, "\\in")
    if len(member) == 2 and re.fullmatch(r"[A-Za-z]", member[0]):  # x \in [-2,7] is the set [-2,7]
        return _item(member[1])
    union = split_top(s, "\\cup")
    if len(union) > 1:
        return ("union", [_item(p) for p in union])
    m = _MATRIX_RE.fullmatch(s)
    if m:
        rows = [r for r in split_top(m.group(2), "\\\\") if r.strip()]
        cells = [[_item(c) for c in split_top(r, "&")] for r in rows]
        if not cells or len({len(r) for r in cells}) != 1 or sum(map(len, cells)) > MAX_ITEMS:
            raise ParseError("ragged or oversized matrix")
        return ("matrix", cells)
    if s[0] in "([" and s[-1] in ")]" and _matching(s, 0) == len(s) - 1:
        inner = split_top(s[1:-1])
        if len(inner) > 1:
            if len(inner) > MAX_ITEMS:
                raise ParseError("too many items")
            return ("seq", s[0], s[-1], [_item(p) for p in inner])
    if re.search(r"\\(?:pm|mp)(?![A-Za-z])", s):
        return ("set", [_item(v) for v in _expand_pm(s)])
    for macro, op in _RELATIONS:
        sides = split_top(s, macro)
        if len(sides) == 2:
            lhs, rhs = to_sympy(sides[0]), to_sympy(sides[1])
            if op in (">", ">="):  # a > b is b < a
                return ("rel", op.replace(">", "<"), rhs - lhs)
            return ("rel", op, lhs - rhs)
        if len(sides) > 2:
            raise ParseError("chained relation")
    return ("expr", to_sympy(s), s)


# ---------------------------------------------------------------------------
# Matching: `a` is the response, `b` the reference; the reference's kind decides


def match(a, b) -> bool:
    if b[0] == "set":
        if a[0] not in ("set", "union") or len(a[1]) != len(b[1]):
            return False
        return _unordered(a[1], b[1])
    if b[0] == "seq":
        if a[0] == "set" and b[1:3] == ("(", ")"):  # a bare list may answer a parenthesised tuple, in order
            items = a[1]
        elif a[0] == "seq" and a[1:3] == b[1:3]:  # brackets matter: (3,4] is not [3,4]
            items = a[3]
        else:
            return False
        return len(items) == len(b[3]) and all(match(x, y) for x, y in zip(items, b[3]))
    if b[0] == "union":
        return a[0] == "union" and len(a[1]) == len(b[1]) and _unordered(a[1], b[1])
    if b[0] == "matrix":
        return (
            a[0] == "matrix"
            and [len(r) for r in a[1]] == [len(r) for r in b[1]]
            and all(match(x, y) for ra, rb in zip(a[1], b[1]) for x, y in zip(ra, rb))
        )
    if b[0] == "rel":
        return a[0] == "rel" and a[1] == b[1] and _proportional(a[2], b[2], positive=b[1] != "=")
    return a[0] == "expr" and scalar_equal(a[1], b[1], a[2], b[2])


def _unordered(xs: list, ys: list) -> bool:
    return match_unordered(xs, ys, match)


def _value(e, subs=None):
    """Complex value of e (optionally at a point) at working precision, or None when not a finite number."""
    try:
        v = sympy.N(e.xreplace(subs) if subs else e, EXACT_DIGITS)
    except (ArithmeticError, ValueError, TypeError):
        return None
    if not v.is_number or v.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return None
    re_, im = v.as_real_imag()
    if not (re_.is_Float or re_.is_zero) or not (im.is_Float or im.is_zero):
        return None  # an unevaluated function such as f(0.5): no number to compare
    return re_, im


def _rational(x: Fraction):
    return sympy.Rational(x.numerator, x.denominator)


def _close(va, vb, rel) -> bool:
    diff = sympy.sqrt((va[0] - vb[0]) ** 2 + (va[1] - vb[1]) ** 2)
    scale = abs(vb[0]) + abs(vb[1])
    return bool(diff <= rel * (scale if scale > 0 else 1))


def _points(symbols, n: int, seed: str):
    rng = random.Random(seed)  # deterministic: the same pair always gets the same verdict
    syms = sorted(symbols, key=str)
    return [{s: sympy.Float(rng.uniform(0.2, 2.0), 30) for s in syms} for _ in range(n)]


def scalar_equal(a, b, text_a: str, text_b: str) -> bool:
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
        return False  # infinities are equal only structurally
    num_b = parse_number(text_b)
    if num_b is not None:
        num_a = parse_number(text_a)
        if num_a is not None:
            return numbers_equal(num_a, num_b)
    decimal_ref, decimal_resp = b.has(sympy.Float), a.has(sympy.Float)
    symbols = a.free_symbols | b.free_symbols
    if not (decimal_ref or decimal_resp):  # exact against exact: no tolerance at all
        return _zero_everywhere(a - b, symbols, text_a + "|" + text_b)
    if decimal_ref:
        rel = REL_TOL_DECIMAL_REFERENCE
    elif decimal_resp:
        # A decimal response to an exact reference: only a non-terminating value may be approximated.
        terminating = b.is_Rational and terminates(Fraction(int(b.p), int(b.q)))
        rel = REL_TOL_DECIMAL_TERMINATING if terminating else REL_TOL_DECIMAL_RESPONSE
    if not symbols:
        va, vb = _value(a), _value(b)
        if va is None or vb is None:
            return _simplifies_to_zero(a - b)
        if num_b is not None and not num_b.exact:  # a decimal reference: round the response at its precision
            if abs(va[1]) > sympy.Float("1e-30"):
                return False
            return bool(abs(va[0] - _rational(num_b.value)) * 2 <= _rational(num_b.ulp) * (1 + sympy.Float("1e-20")))
        num_a = parse_number(text_a)
        if num_a is not None and not num_a.exact and not decimal_ref:
            # A plain decimal for an exact irrational value: the numbers_equal rule (enough correct digits).
            if num_a.sig_digits < HIGH_PRECISION_DIGITS or abs(vb[1]) > sympy.Float("1e-30"):
                return False
            return bool(abs(_rational(num_a.value) - vb[0]) <= _rational(num_a.ulp))
        return _close(va, vb, rel)
    checked = 0
    for point in _points(symbols, N_POINTS, text_a + "|" + text_b):
        va, vb = _value(a, point), _value(b, point)
        if va is None or vb is None:
            continue
        if not _close(va, vb, max(rel, sympy.Float("1e-20"))):  # points carry 30 digits
            return False
        checked += 1
    if checked >= 3:
        return True
    return _simplifies_to_zero(a - b)


def _zero_constant(c) -> bool | None:
    """Is the constant c exactly 0? None when it has no finite value (0/0, 1/0)."""
    if c.is_Rational:
        return c == 0
    if not c.is_number or c.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return None
    try:
        # evalf raises the working precision until it has 30 correct digits; a true zero never gets
        # them, so exhaustion means "zero to hundreds of digits" (sqrt(3+2sqrt2) - 1 - sqrt2).
        return sympy.N(c, 30, strict=True) == 0
    except PrecisionExhausted:
        return True
    except (ArithmeticError, ValueError, TypeError):
        return None


def _zero_everywhere(d, symbols, seed: str) -> bool:
    """Exact difference d is 0: as a constant, or at random rational points, else by simplification."""
    if not symbols:
        zero = _zero_constant(d)
        return _simplifies_to_zero(d) if zero is None else zero
    rng, checked = random.Random(seed), 0
    syms = sorted(symbols, key=str)
    for _ in range(N_POINTS):
        point = {s: sympy.Rational(rng.randint(2, 60), rng.randint(7, 23)) for s in syms}
        zero = _zero_constant(d.xreplace(point))
        if zero is False:
            return False
        checked += zero is True
    return True if checked >= 3 else _simplifies_to_zero(d)


def _simplifies_to_zero(d) -> bool:
    """Last resort, under the worker's time limit."""
    try:
        return sympy.simplify(d) == 0
    except (ArithmeticError, ValueError, TypeError, AttributeError, RecursionError):
        return False


def _proportional(ea, eb, positive: bool) -> bool:
    """ea = c * eb for one constant c != 0 (c > 0 for inequalities): 2x+2=0 is x+1=0."""
    symbols = ea.free_symbols | eb.free_symbols
    ratio, checked = None, 0
    for point in _points(symbols, N_POINTS, str(ea) + "|" + str(eb)) if symbols else [{}]:
        va, vb = _value(ea, point), _value(eb, point)
        if va is None or vb is None:
            continue
        na, nb = complex(va[0], va[1]), complex(vb[0], vb[1])
        if abs(nb) < 1e-12 or abs(na) < 1e-12:
            if abs(na) < 1e-12 and abs(nb) < 1e-12:
                continue
            return False
        r = na / nb
        if ratio is None:
            ratio = r
        elif abs(r - ratio) > 1e-9 * max(1.0, abs(ratio)):
            return False
        checked += 1
    if ratio is None or (symbols and checked < 3):
        return _simplifies_to_zero(ea - eb) or _simplifies_to_zero(ea + eb)
    return abs(ratio.imag) < 1e-9 and (ratio.real > 0 or not positive)


def symbolic_equal(resp: str, ref: str) -> bool:
    """Equivalence of two normalised answers; unsupported or over-bound input is 'not equal'."""
    try:
        b = parse_answer(ref)
        a = parse_answer(resp)
    except (ParseError, RecursionError):
        return False
    return match(a, b)
