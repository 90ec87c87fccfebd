"""Form-driven equivalence of two normalised answers with SymPy (the symbolic stage; runs in a worker).

The reference's form decides the test: bare comma lists and \\{...\\} are unordered sets, bracketed
tuples and intervals are ordered with their brackets, \\cup unions are unordered, matrices compare by
shape and entry, relations up to a scalar factor (positive for inequalities), an inequality in one
variable against interval notation (or another inequality form) as a set of reals, scalars by
exact / decimal-precision rules (see normalize.numbers_equal), expressions in variables numerically at
random points, with SymPy simplification as the last resort.
"""
import functools
import math
import random
import re
from fractions import Fraction

import sympy
from sympy.core.evalf import PrecisionExhausted
from sympy.core.function import AppliedUndef

from dynamo.verifier.latex import ParseError, check_bounds, to_sympy
from dynamo.verifier.normalize import (HIGH_PRECISION_DIGITS, Num, match_unordered, numbers_equal, parse_number,
                                      split_top, terminates)

MAX_ITEMS = 64  # elements in a list / tuple / matrix
MAX_MATRICES = 8  # matrices in one matrix expression (A + B, 2AB - C)
MAX_FACTORS = 3  # matrices in one product: symbolic entries grow with every factor
MAX_ABS = 4  # |.| terms in one inequality solved piecewise
N_POINTS = 6  # random points for expressions in variables
EXACT_DIGITS = 50  # working precision when a decimal is involved (exact pairs are compared exactly)
REL_TOL_DECIMAL_TERMINATING = sympy.Float("1e-25")  # 0.25 vs 2^{-2}: exact up to the Float's digits
REL_TOL_DECIMAL_RESPONSE = 1e-6  # a decimal response against an exact non-terminating reference
REL_TOL_DECIMAL_REFERENCE = 1e-4  # an expression reference containing decimals (rounded constants)
_REL_OPS = {"\\le": "<=", "\\ge": ">=", "\\ne": "!=", "\\lt": "<", "\\gt": ">", "<": "<", ">": ">", "=": "="}
_REL_RE = re.compile(r"\\(?:le|ge|ne|lt|gt)(?![A-Za-z])|[<>=]")
_MATRIX_RE = re.compile(r"\\begin\{([pbBvV]?matrix|smallmatrix)\}(.*)\\end\{\1\}", re.S)
_MATRIX_BEGIN_RE = re.compile(r"\\begin\{([pbBvV]?matrix|smallmatrix)\}")
_PRODUCT_OPS = ("", "\\cdot", "\\times")  # between two matrices of one product
_TINY = 1e-12


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
    """Structure of an answer: ('set', items) | ('set', items, 'braces') | ('seq', open, close, items) |
    ('union', parts) | ('ratio', items) | ('matrix', rows) | ('rel', op, lhs - rhs, interval) |
    ('chain', interval) | ('and', items) | ('expr', sympy, text). `interval` is the relation as a set of
    reals (see _real_set) or None."""
    check_bounds(s)
    parts = split_top(s)
    if len(parts) > MAX_ITEMS:
        raise ParseError("too many items")
    items = []
    for part in parts:
        pieces = split_top(part, "\\land")  # "x > 1 and x < 3"; "6 and 8" is the list 6, 8
        if len(pieces) > MAX_ITEMS:
            raise ParseError("too many items")
        sub = [_item(p) for p in pieces]
        items += [("and", sub)] if len(sub) > 1 and all(_is_inequality(x) for x in sub) else sub
    if len(items) > 1:
        return ("set", _flatten(items))
    return items[0]


def _flatten(items: list) -> list:
    out = []
    for it in items:  # \pm inside a list contributes both values to it; a set in braces stays one element
        out += it[1] if it[0] == "set" and not _braced(it) else [it]
    return out


def _item(s: str):
    s = s.strip()
    if not s:
        raise ParseError("empty item")
    if s.startswith("\\{") and _matching(s, 0) == len(s) - 1:
        inner = s[2:-2]
        builder = re.fullmatch(r"([A-Za-z])(?:\\mid|\||:)(.+)", inner)
        if builder and re.search(r"\\(?:le|ge|ne)(?![A-Za-z])|[<>]", builder.group(2)):
            return _item(builder.group(2))  # \{x \mid x < 3\} is the set x < 3 describes
        items = _flatten([_item(p) for p in _split_items(inner)]) if inner else []
        return ("set", items, "braces")  # {{1}} is not {1}
    member = split_top(s, "\\in")
    if len(member) == 2 and re.fullmatch(r"[A-Za-z]", member[0]):  # x \in [-2,7] is the set [-2,7]
        return _item(member[1])
    union = split_top(s, "\\cup")
    if len(union) > MAX_ITEMS:
        raise ParseError("too many union pieces")
    if len(union) > 1:
        return _union([_item(p) for p in union])
    if s[0] in "([" and _matching(s, 0) == len(s) - 1 and _MATRIX_RE.fullmatch(s[1:-1].strip()):
        return _item(s[1:-1].strip())  # (\begin{pmatrix}...\end{pmatrix}): the brackets add nothing
    spans = _matrix_spans(s)
    if len(spans) > 1 or spans and spans[0] != (0, len(s)):
        return _matrix_expression(s, spans)  # A + B, 2AB: evaluated to the matrix it denotes
    m = _MATRIX_RE.fullmatch(s)
    if m:
        rows = [split_top(r, "&") for r in split_top(m.group(2), "\\\\") if r.strip()]
        if not rows or len({len(r) for r in rows}) != 1 or sum(map(len, rows)) > MAX_ITEMS:
            raise ParseError("ragged or oversized matrix")  # checked before any cell is parsed
        return ("matrix", [[_item(c) for c in r] for r in rows])
    if s[0] in "([" and s[-1] in ")]" and _matching(s, 0) == len(s) - 1:
        inner = split_top(s[1:-1])
        if len(inner) > 1:
            if len(inner) > MAX_ITEMS:
                raise ParseError("too many items")
            return ("seq", s[0], s[-1], [_item(p) for p in inner])
    if re.search(r"\\(?:pm|mp)(?![A-Za-z])", s):
        return ("set", [_item(v) for v in _expand_pm(s)])
    sides, ops = split_relations(s)
    if len(ops) == 1:
        lhs, rhs = to_sympy(sides[0]), to_sympy(sides[1])
        op = ops[0]
        if op in (">", ">="):  # a > b is b < a
            op, lhs, rhs, sides = op.replace(">", "<"), rhs, lhs, sides[::-1]
        return ("rel", op, lhs - rhs, _relation_interval(op, lhs, rhs, sides))
    if len(ops) == 2:
        return ("chain", _chain_interval(sides, ops))
    if ops:
        raise ParseError("chained relation")
    terms = split_top(s, ":")
    if len(terms) > 1:  # a ratio 11:21 compares term by term (2:4 is not written for 1:2)
        if len(terms) > MAX_ITEMS:
            raise ParseError("too many items")
        return ("ratio", [_item(t) for t in terms])
    return ("expr", to_sympy(s), s)


def _split_items(s: str) -> list[str]:
    """Elements of a set literal: commas, or semicolons between elements that hold commas (\\{(1,2); (3,4)\\})."""
    parts = [p for group in split_top(s, ";") for p in split_top(group)]
    if len(parts) > MAX_ITEMS:
        raise ParseError("too many items")
    return parts


def _union(parts: list):
    """A union of finite sets is the finite set of their elements ({1} \\cup {2} is {1, 2}); a union with an
    interval in it stays a union of sets of reals."""
    if not all(_braced(p) for p in parts):
        return ("union", parts)
    out, seen = [], set()
    for item in (x for p in parts for x in p[1]):
        key = _structure(item)
        if key is None or key not in seen:  # {1,2} \cup {2,3} is {1,2,3}: an element written twice is one
            out.append(item)
        seen.add(key)
    return ("set", out, "braces")


def _braced(x) -> bool:
    """A set written with braces, \\{1, 2\\} (not a bare list 1, 2 or the values of 1 \\pm 2)."""
    return x[0] == "set" and x[2:] == ("braces",)


def _structure(item):
    """A hashable form of a number or a tuple of numbers, for spotting an element written twice; else None."""
    if item[0] == "expr":
        return item[1]
    if item[0] == "seq":
        keys = tuple(_structure(x) for x in item[3])
        return None if None in keys else (item[1], item[2], keys)
    return None


# ---------------------------------------------------------------------------
# Matrix expressions: sums of products of matrices with scalar coefficients, evaluated (A + B against its sum)


def _matrix_spans(s: str) -> list[tuple[int, int]]:
    """(start, end) of each matrix environment in s, with a bracket pair right around one counted in it."""
    spans, i = [], 0
    while True:
        m = _MATRIX_BEGIN_RE.search(s, i)
        if not m:
            return spans
        close = "\\end{" + m.group(1) + "}"
        j = s.find(close, m.end())
        if j < 0 or _MATRIX_BEGIN_RE.search(s, m.end(), j):
            raise ParseError("unclosed or nested matrix")
        start, end = m.start(), j + len(close)
        if start > 0 and end < len(s) and s[start - 1] + s[end] in ("()", "[]"):
            start, end = start - 1, end + 1  # [\begin{matrix}...\end{matrix}] from \left[ array \right]
        spans.append((start, end))
        if len(spans) > MAX_MATRICES:
            raise ParseError("too many matrices")
        i = end


def _matrix_expression(s: str, spans: list[tuple[int, int]]):
    """c1 M M' + c2 M'' - ... -> ('matrix', rows). Between two matrices of a product only nothing, \\cdot or
    \\times; a new term starts with + or - and an optional scalar coefficient. Shapes must agree."""
    if s[spans[-1][1] :].strip():
        raise ParseError("text after the last matrix")
    terms = []  # [coefficient, [matrices]] per term
    for k, (start, end) in enumerate(spans):
        gap = s[spans[k - 1][1] if k else 0 : start].strip()
        if k and gap in _PRODUCT_OPS:
            terms[-1][1].append(_matrix_value(s[start:end]))
            if len(terms[-1][1]) > MAX_FACTORS:
                raise ParseError("too many matrices in a product")
        else:
            terms.append([_coefficient(gap, first=k == 0), [_matrix_value(s[start:end])]])
    total = None
    for coefficient, factors in terms:
        value = coefficient * _product(factors)
        if total is not None and total.shape != value.shape:
            raise ParseError("sum of matrices of different shapes")
        total = value if total is None else total + value
    return ("matrix", [[("expr", total[r, c], "") for c in range(total.shape[1])] for r in range(total.shape[0])])


def _coefficient(gap: str, first: bool):
    """The scalar before a term's first matrix: `-`, `+2`, `\\frac12 \\cdot`; the first term needs no sign."""
    sign = 1
    if gap[:1] in ("+", "-"):
        sign, gap = (-1 if gap[0] == "-" else 1), gap[1:].strip()
    elif not first:
        raise ParseError("no operator between two matrices")
    for op in _PRODUCT_OPS[1:]:
        gap = gap[: -len(op)].strip() if gap.endswith(op) else gap
    if not gap:
        return sympy.Integer(sign)
    if len(split_top(gap, "+")) > 1 or len(split_top(gap, "-")) > 1:
        raise ParseError("a sum is no coefficient")  # A + 2 + 3B adds a scalar to a matrix
    return sign * to_sympy(gap)


def _matrix_value(text: str):
    item = _item(text)
    if item[0] != "matrix" or any(cell[0] != "expr" for row in item[1] for cell in row):
        raise ParseError("matrix entries must be scalars")
    return sympy.Matrix([[cell[1] for cell in row] for row in item[1]])


def _product(factors: list):
    out = factors[0]
    for f in factors[1:]:
        if out.shape[1] != f.shape[0] or out.shape[0] * f.shape[1] > MAX_ITEMS:
            raise ParseError("matrix shapes do not multiply")
        out = out * f
    return out


def split_relations(s: str) -> tuple[list[str], list[str]]:
    """Sides and operators of a relation outside brackets: '0<x\\le 5' -> (['0', 'x', '5'], ['<', '<='])."""
    sides, ops, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and s[i + 1 : i + 2] in ("{", "}"):
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            m = _REL_RE.match(s, i)
            if m:
                sides.append(s[start:i])
                ops.append(_REL_OPS[m.group(0)])
                i = start = m.end()
                continue
        i += 1
    sides.append(s[start:])
    return sides, ops


# ---------------------------------------------------------------------------
# Inequalities in one variable as sets of reals: x < 3 is (-oo, 3), -2 <= x <= 7 is [-2, 7].
# A set is (variable name or None, [(lo, hi, lo_closed, hi_closed, lo_text, hi_text), ...]).


def _linear(e):
    """(variable name, a, b) when e = a*v + b in one variable v (a symbol or f(x)), a and b real constants."""
    calls = e.atoms(AppliedUndef)
    atoms = calls | {x for x in e.free_symbols if not any(x in f.free_symbols for f in calls)}
    if len(atoms) != 1:
        return None
    v = atoms.pop()
    ab = _affine(e, v)
    if ab is None:
        return None  # not linear (x^2 < 4), or a second variable
    a, b = ab
    va, vb = _value(a), _value(b)
    if va is None or vb is None or abs(va[1]) > _TINY or abs(vb[1]) > _TINY or abs(va[0]) < _TINY:
        return None
    return str(v), a, b


def _relation_interval(op: str, lhs, rhs, sides: list[str]):
    """lhs op rhs (op one of < <= != =) as a set of reals, or None when it is not one (two variables)."""
    lin = _linear(lhs - rhs)
    if lin is None:
        return _abs_relation_set(lhs - rhs, op)  # |x - 1| < 2; None when that is no one-variable |.| form
    name, a, b = lin
    c = -b / a
    text = sides[1].strip() if lhs.is_Symbol or isinstance(lhs, AppliedUndef) else (
        sides[0].strip() if rhs.is_Symbol or isinstance(rhs, AppliedUndef) else "")
    if op == "=":
        return name, [(c, c, True, True, text, text)]
    if op == "!=":
        return name, [(-sympy.oo, c, False, False, "", text), (c, sympy.oo, False, False, text, "")]
    closed = op == "<="
    if _value(a)[0] > 0:  # a*x + b < 0 with a > 0 is x < c
        return name, [(-sympy.oo, c, False, closed, "", text)]
    return name, [(c, sympy.oo, closed, False, text, "")]


def _chain_interval(sides: list[str], ops: list[str]):
    """lo < x <= hi (or hi >= x > lo) as a set of reals; anything else is not a supported answer."""
    if all(op in ("<", "<=") for op in ops):
        lo_text, hi_text, lo_closed, hi_closed = sides[0], sides[2], ops[0] == "<=", ops[1] == "<="
    elif all(op in (">", ">=") for op in ops):
        lo_text, hi_text, lo_closed, hi_closed = sides[2], sides[0], ops[1] == ">=", ops[0] == ">="
    else:
        raise ParseError("chained relation")
    lo, mid, hi = to_sympy(lo_text), to_sympy(sides[1]), to_sympy(hi_text)
    if lo.free_symbols or hi.free_symbols:
        raise ParseError("chained relation")
    lin = _linear(mid)
    if lin is None:
        return _abs_chain(lo, mid, hi, lo_closed, hi_closed)  # 1 \le |z| \le 3/2
    name, a, b = lin
    lo, hi = (lo - b) / a, (hi - b) / a
    if _value(a)[0] < 0:  # -2 < -x < 3 is -3 < x < 2
        lo, hi, lo_closed, hi_closed, lo_text, hi_text = hi, lo, hi_closed, lo_closed, hi_text, lo_text
    if not (a == 1 and b == 0):
        lo_text = hi_text = ""
    if not _less(lo, hi):
        raise ParseError("empty interval")
    return name, [(lo, hi, lo_closed, hi_closed, lo_text.strip(), hi_text.strip())]


def _abs_chain(lo, mid, hi, lo_closed: bool, hi_closed: bool):
    """lo < mid < hi with |.| in mid: the intersection of the two one-sided relations' sets."""
    left = _abs_relation_set(lo - mid, "<=" if lo_closed else "<")
    right = _abs_relation_set(mid - hi, "<=" if hi_closed else "<")
    if left is None or right is None:
        raise ParseError("chained relation")
    pieces = [iv for a in left[1] for b in right[1] for iv in [_intersect(a, b)] if iv is not None]
    if not pieces:
        raise ParseError("empty set")
    return left[0], pieces


def _abs_relation_set(d, op: str):
    """{v : d(v) op 0} (op one of < <= = !=) when d is linear in one variable v but for |linear| terms.
    Between the zeros of the |.| arguments every |u| is u or -u, so d is linear there and each stretch is
    solved exactly; the zeros themselves are checked one by one, and touching pieces are joined:
    1 <= |z| is (-oo, -1] and [1, oo). None when d is not of that form (x^2 < 4, |x| + y < 1, |x^2-1| < 3)."""
    if not d.has(sympy.Abs) or d.atoms(AppliedUndef) or len(d.free_symbols) != 1:
        return None
    v = next(iter(d.free_symbols))
    absolutes = list(d.atoms(sympy.Abs))
    if len(absolutes) > MAX_ABS:
        return None
    cuts = []
    for u in absolutes:
        lin = _affine(u.args[0], v)
        if lin is None or _zero_constant(lin[0]) is not False:
            return None  # nested |.| or a non-linear argument
        cuts.append(-lin[1] / lin[0])
    if any(_key(c) is None for c in cuts):
        return None
    cuts = sorted({_key(c): c for c in cuts}.values(), key=_key)  # a zero shared by two terms counts once
    pieces = []
    bounds = [-sympy.oo] + cuts + [sympy.oo]
    for lo, hi in zip(bounds, bounds[1:]):
        t = _inside(lo, hi)
        at_t = [_key(u.args[0].xreplace({v: t})) for u in absolutes]
        if None in at_t:
            return None
        lin = _affine(d.xreplace({u: u.args[0] if k > 0 else -u.args[0] for u, k in zip(absolutes, at_t)}), v)
        if lin is None:
            return None
        pieces += _linear_pieces(lin[0], lin[1], op, lo, hi)
    for c in cuts:
        holds = _holds(d.xreplace({v: c}), op)
        if holds is None:
            return None
        pieces += [(c, c, True, True, "", "")] if holds else []
    return str(v), _joined(pieces)


def _affine(e, v):
    """(a, b) with e = a*v + b for real constants a, b (a may be 0); None otherwise."""
    t = sympy.Dummy("t")
    et = e.xreplace({v: t})
    try:
        a = sympy.diff(et, t)
        b = et.xreplace({t: sympy.S.Zero})
    except (ArithmeticError, ValueError, TypeError, AttributeError, NotImplementedError):
        return None
    if a.free_symbols or b.free_symbols or _key(a) is None or _key(b) is None:
        return None
    return a, b


def _inside(lo, hi):
    """A point strictly between lo and hi (either may be infinite) to read the signs of the |.| arguments at."""
    if lo == -sympy.oo:
        return sympy.S.Zero if hi == sympy.oo else hi - 1
    return lo + 1 if hi == sympy.oo else (lo + hi) / 2


def _linear_pieces(a, b, op: str, lo, hi) -> list:
    """The part of the open stretch (lo, hi) where a*v + b op 0."""
    stretch = (lo, hi, False, False, "", "")
    if _zero_constant(a):
        return [stretch] if _holds(b, op) else []  # constant on the stretch
    c = -b / a
    if op == "=":
        rays = [(c, c, True, True, "", "")]
    elif op == "!=":
        rays = [(-sympy.oo, c, False, False, "", ""), (c, sympy.oo, False, False, "", "")]
    elif _key(a) > 0:  # a*v + b < 0 with a > 0 is v < c
        rays = [(-sympy.oo, c, False, op == "<=", "", "")]
    else:
        rays = [(c, sympy.oo, op == "<=", False, "", "")]
    return [iv for ray in rays for iv in [_intersect(stretch, ray)] if iv is not None]


def _holds(x, op: str) -> bool | None:
    """Does the constant x satisfy x op 0? None when x has no real value."""
    zero = _zero_constant(x)
    if zero is None or _key(x) is None:
        return None
    if op in ("=", "!="):
        return zero == (op == "=")
    return op == "<=" if zero else _key(x) < 0


def _joined(pieces: list) -> list:
    """Sorted pieces, those that overlap or touch at a point one of them holds joined into one interval."""
    pieces = sorted(pieces, key=lambda iv: (_key(iv[0]), not iv[2]))
    out = []
    for iv in pieces:
        prev = out[-1] if out else None
        if prev is None or not _meets(prev, iv):
            out.append(iv)
            continue
        if _less(prev[1], iv[1]):
            out[-1] = (prev[0], iv[1], prev[2], iv[3], prev[4], iv[5])
        elif not _less(iv[1], prev[1]):
            out[-1] = (prev[0], prev[1], prev[2], prev[3] or iv[3], prev[4], prev[5])
    return out


def _meets(a, b) -> bool:
    """b (starting no earlier than a) overlaps a, or starts where a ends with that point in one of them."""
    if _less(b[0], a[1]):
        return True
    return not _less(a[1], b[0]) and (a[3] or b[2])


@functools.lru_cache(maxsize=4096)  # endpoints are compared many times when intervals are intersected
def _key(e) -> float | None:
    """A float to order endpoints by (+-inf for infinities); None when e has no real value."""
    if e in (sympy.oo, -sympy.oo):
        return float(e)
    v = _value(e)
    return None if v is None or abs(v[1]) > _TINY else float(v[0])


def _less(x, y) -> bool:
    kx, ky = _key(x), _key(y)
    if kx is None or ky is None or kx == ky:
        return False
    if math.isinf(kx) or math.isinf(ky):
        return kx < ky
    return kx < ky - _TINY * max(1.0, abs(kx), abs(ky))


def _is_inequality(x) -> bool:
    """A one-variable relation that reads as a set of reals (an equation x = 3 alone is not one)."""
    if x[0] == "rel":
        return x[3] is not None and x[1] != "="
    if x[0] in ("chain", "and"):
        return True
    return x[0] == "set" and bool(x[1]) and all(i[0] in ("rel", "chain", "and") for i in x[1]) and any(
        _is_inequality(i) for i in x[1])


def _real_set(x, in_union: bool = False):
    """The answer as a union of real intervals (see above), or None when it is not one."""
    kind = x[0]
    if kind == "rel":
        return x[3]
    if kind == "chain":
        return x[1]
    if kind == "seq" and len(x[3]) == 2 and all(i[0] == "expr" for i in x[3]):
        (_, lo, lo_text), (_, hi, hi_text) = x[3]
        if not _less(lo, hi):
            return None  # (4, 3) is a point, not an interval
        return None, [(lo, hi, x[1] == "[", x[2] == "]", lo_text, hi_text)]
    if kind == "set" and in_union and all(i[0] == "expr" for i in x[1]):  # (-oo, 0) \cup \{1\}
        return None, [(i[1], i[1], True, True, i[2], i[2]) for i in x[1]]
    if kind in ("union", "set", "and"):
        parts = [_real_set(p, in_union=kind == "union") for p in x[1]]
        if any(p is None for p in parts) or len({p[0] for p in parts if p[0]}) > 1:
            return None
        name = next((p[0] for p in parts if p[0]), None)
        if kind != "and":
            return name, [iv for p in parts for iv in p[1]]
        out = parts[0][1]
        for p in parts[1:]:
            out = [iv for a in out for b in p[1] for iv in [_intersect(a, b)] if iv is not None]
            if len(out) > MAX_ITEMS:
                return None
        return name, out
    return None


def _intersect(a, b):
    lo = a if _less(b[0], a[0]) else b if _less(a[0], b[0]) else None
    hi = a if _less(a[1], b[1]) else b if _less(b[1], a[1]) else None
    lo_e, lo_c, lo_t = (lo[0], lo[2], lo[4]) if lo else (a[0], a[2] and b[2], a[4])
    hi_e, hi_c, hi_t = (hi[1], hi[3], hi[5]) if hi else (a[1], a[3] and b[3], a[5])
    if _less(lo_e, hi_e) or (not _less(hi_e, lo_e) and lo_c and hi_c):
        return (lo_e, hi_e, lo_c, hi_c, lo_t, hi_t)
    return None


def _endpoint_equal(x, y, text_x: str, text_y: str) -> bool:
    if x in (sympy.oo, -sympy.oo) or y in (sympy.oo, -sympy.oo):
        return x == y
    return scalar_equal(x, y, text_x, text_y)


def _interval_equal(a, b) -> bool:
    """Same endpoints and brackets; a bracket at an infinite end carries no meaning."""
    return (
        _endpoint_equal(a[0], b[0], a[4], b[4]) and _endpoint_equal(a[1], b[1], a[5], b[5])
        and (a[2] == b[2] or b[0] == -sympy.oo) and (a[3] == b[3] or b[1] == sympy.oo)
    )


def _real_sets_equal(a, b) -> bool:
    (name_a, ivs_a), (name_b, ivs_b) = a, b
    if name_a and name_b and name_a != name_b:
        return False  # x < 3 does not answer y < 3
    return len(ivs_a) == len(ivs_b) and match_unordered(ivs_a, ivs_b, _interval_equal)


# ---------------------------------------------------------------------------
# Matching: `a` is the response, `b` the reference; the reference's kind decides


def match(a, b) -> bool:
    if (_is_inequality(a) or _is_inequality(b)) and not (a[0] == b[0] == "rel"):
        # An inequality against interval notation (or another inequality form): compare the sets of reals.
        ra, rb = _real_set(a), _real_set(b)
        return ra is not None and rb is not None and _real_sets_equal(ra, rb)
    if b[0] == "set":
        if a[0] not in ("set", "union") or len(a[1]) != len(b[1]):
            return False
        return _unordered(a[1], b[1])
    if b[0] == "seq":
        if a[0] == "set" and not _braced(a) and b[1:3] == ("(", ")"):  # a bare list may answer a tuple, in order
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
        return a[0] == "rel" and a[1] == b[1] and _proportional(a[2], b[2], positive=b[1] not in ("=", "!="))
    if b[0] == "ratio":
        return a[0] == "ratio" and len(a[1]) == len(b[1]) and all(match(x, y) for x, y in zip(a[1], b[1]))
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


def _number_of(e, text: str) -> Num | None:
    """The number as written (parse_number), or the exact rational SymPy made of it: 2^{-1} is 1/2, so that
    0.5 against 2^{-1} follows the plain-number rules (a terminating value compares exactly)."""
    num = parse_number(text)
    if num is None and e.is_Rational:
        num = Num(Fraction(int(e.p), int(e.q)), True, Fraction(0), 0)
    return num


def scalar_equal(a, b, text_a: str, text_b: str) -> bool:
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
        return False  # infinities are equal only structurally
    num_b = parse_number(text_b)
    exact_a, exact_b = _number_of(a, text_a), _number_of(b, text_b)
    if exact_a is not None and exact_b is not None:
        return numbers_equal(exact_a, exact_b)
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
