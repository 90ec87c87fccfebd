"""Answer-string normalisation and the exact in-process fast path (plain numbers; no SymPy, no processes).

Everything here is string and `fractions.Fraction` work on bounded input, so it is safe on model text
and costs microseconds. `fast_compare` returns None when the pair needs the symbolic stage.
"""
import re
from dataclasses import dataclass
from fractions import Fraction

MAX_ANSWER_CHARS = 1000  # longer extracted answers are "not equal" without parsing
MAX_NUMBER_DIGITS = 400  # digits in one plain-number literal; longer is rejected, not parsed
MAX_DECIMAL_EXPONENT = 1000  # |k| in 1.5e<k> or 1.5 \times 10^{k}
MAX_GROUPS = 64  # `;`-separated groups of assignments (p=5,q=2; p=7,q=2)
HIGH_PRECISION_DIGITS = 6  # a decimal may stand for a non-terminating exact value only with this many significant digits

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": r"\times ", "\u00b7": r"\cdot ", "\u22c5": r"\cdot ", "\u00f7": r"\div ",
    "\u03c0": r"\pi ", "\u221e": r"\infty ", "\u2264": r"\le ", "\u2265": r"\ge ", "\u00b0": r"^\circ ",
    "\u221a": r"\sqrt ", "\u00b1": r"\pm ", "\u222a": r"\cup ", "\u00a0": " ", "\uff05": "%", "\uff0c": ",",
    "\u2260": r"\ne ", "\u2205": r"\emptyset ", "\u2248": r"\approx ", "\u00b2": "^2", "\u00b3": "^3",
    "\u2a7d": r"\le ", "\u2a7e": r"\ge ", "\u211d": r"\mathbb{R}",
    "\u20ac": "", "\u00a3": "",  # euro and pound signs, like \$, are presentation
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))

# Trailing unit: \text{ cm}, \mathrm{~m}^{2}, \mbox{ inches}^2 (the remainder must still hold the answer).
_UNIT_RE = re.compile(
    r"\\(?:text|textrm|textnormal|textbf|textit|mbox|mathrm|operatorname)\s*\{([^{}]*)\}(\s*\^\s*(?:\{[^{}]*\}|-?\w))?\s*$"
)
# Units written as bare words ("5 cm", "28 percent", "125 miles"): only these, and only after a number or a
# closing bracket, so that a variable (5x, 2\pi, 5m) is never taken for a unit.
_UNIT_WORDS = (
    "mm cm km meters meter metres metre centimeters centimeter millimeters kilometers kilometer inches inch "
    "feet foot ft yards yard miles mile kg grams gram kilograms pounds pound lbs lb ounces ounce oz tons ton "
    "liters liter litres litre ml seconds second sec minutes minute mins min hours hour hrs hr days day weeks "
    "week months month years year mph kph dollars dollar cents cent yuan euros euro rupees rupee percentage "
    "percent pct degrees degree deg radians radian units unit"
).split()
_BARE_UNIT_RE = re.compile(
    r"(?<=[\d})])\s*((?:(?:square|sq\.?|cubic)\s+)?(?:" + "|".join(_UNIT_WORDS) + r")(?![A-Za-z])(?:\s*\^\s*\{?[23]\}?)?)\s*$",
    re.I,
)
_UNIT_ALIASES = {
    "in": "inch", "inches": "inch", "feet": "foot", "ft": "foot", "meters": "m", "meter": "m", "metres": "m",
    "metre": "m", "centimeters": "cm", "centimeter": "cm", "millimeters": "mm", "kilometers": "km",
    "kilometer": "km", "grams": "g", "gram": "g", "kilograms": "kg", "lbs": "lb", "pounds": "lb", "pound": "lb",
    "seconds": "s", "second": "s", "sec": "s", "minutes": "min", "minute": "min", "mins": "min", "hours": "h",
    "hour": "h", "hrs": "h", "hr": "h", "percent": "%", "pct": "%", "percentage": "%", "\\%": "%",
    "degrees": "degree", "deg": "degree", "\\circ": "degree", "^\\circ": "degree",
}
_CONNECTIVE_RE = re.compile(r"\s*,?\s*(?<![A-Za-z\\])(and|or)(?![A-Za-z])\s*")
_PLAIN_NUMBER_RE = re.compile(r"\s*[+-]?\d+(?:\.\d+)?\s*", re.ASCII)
# A thousands grouping: 1-3 leading digits (never a lone 0: "0,111" is no thousands number), then groups of 3.
_THOUSANDS_NUMBER_RE = re.compile(r"[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?", re.ASCII)
# Thousands separators that are never anything else: 10,\!080 and 12{,}000 (but 0{,}111 is a decimal comma)
_TEX_SEPARATOR_RE = re.compile(r"(\d+)\s*(?:,\\!|\{\s*,\s*\})\s*(?=\d{3}(?!\d))", re.ASCII)
# One number with a decimal comma (1000,99; 0{,}111), read as such only against a point decimal (see normalize_pair)
_DECIMAL_COMMA_RE = re.compile(r"[+-]?\d+(?:,|\{,\})\d+", re.ASCII)
_POINT_DECIMAL_RE = re.compile(r"[+-]?\d*\.\d+", re.ASCII)
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textrm|textnormal|textbf|textit|mbox|mathrm|mathbf|mathit|boxed)\s*\{([^{}]*)\}")
_BASE_RE = re.compile(r"([0-9A-Za-z]+)_\{?(\d+)\}?", re.ASCII)  # 2516_8, 4210_{5}: a numeral in another base
_NAME = r"(?:[A-Za-z]+|\\[A-Za-z]+)(?:_(?:\{[^{}=]*\}|\w))?"
# Names of geometric quantities: |AB| and \overline{AB} (a segment's length: capitals only, since |x| is an
# absolute value and `|x| = 2` an equation), \angle ABC and m\angle ABC.
_GEOMETRY_NAME = r"\|[A-Z]{2,}\||\\overline\{[A-Z]{2,}\}|(?:m ?)?\\angle ?[A-Z]{1,3}"
# x, AB, m_{\max}, f(x), \tau, |AB|, a ratio of names (V_1:V_2 = 11:21), and a tuple of names:
# (p,q) = (3,2) assigns the pair
_NAME_RE = re.compile(_NAME)
_SIMPLE_LHS_RE = re.compile(
    rf"{_NAME}(?:\([^()=]*\))?|{_GEOMETRY_NAME}|{_NAME}(?::{_NAME})+|\({_NAME}(?:,{_NAME})+\)"
)


def normalize(s: str) -> str:
    """Canonical text of an answer: presentation (spacing, \\left, \\dfrac, units, degrees, percent, $) removed."""
    return normalize_with_unit(s)[0]


def normalize_pair(answer: str, ref: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """normalize_with_unit of both sides, reading a decimal comma on one side (1000,99 and 0{,}111 as
    1000.99 and 0.111) only where the other side is a decimal written with a point of exactly that value.
    A comma between digits is ambiguous: `1,3` may be the decimal 1.3 or the list 1, 3 (OlympiadBench joins
    its multiple answers so). The point decimal on the other side is the evidence that one non-integer is
    meant, and asking for exactly its value (no rounding at its precision) keeps the coincidence that could
    turn a wrong list into a right answer as narrow as it can be. Everywhere else a comma keeps its usual
    readings: a thousands separator in 1,000 and 12,345 (against a point decimal too), a list separator in
    `1, 5` (a space) and in `1,5` against anything but that decimal."""
    a, b = normalize_with_unit(answer), normalize_with_unit(ref)
    if "," in answer and _POINT_DECIMAL_RE.fullmatch(b[0]):
        a = _decimal_comma_reading(answer, b[0]) or a
    if "," in ref and _POINT_DECIMAL_RE.fullmatch(a[0]):
        b = _decimal_comma_reading(ref, a[0]) or b
    return a, b


def _decimal_comma_reading(s: str, decimal: str) -> tuple[str, str] | None:
    """normalize_with_unit of s with its comma read as a decimal point, when that gives exactly the value of
    `decimal` (1,50 for 1.5, not 1,26 for 1.3); else None."""
    read = normalize_with_unit(s, decimal_comma=True)
    x, y = parse_number(read[0]), parse_number(decimal)
    return read if x is not None and y is not None and x.value == y.value else None


def normalize_with_unit(s: str, decimal_comma: bool = False) -> tuple[str, str]:
    """(canonical text, canonical unit or ""): the unit is removed from the text but kept, so that a pair
    differing only by a unit on one side compares equal while `5 cm` and `5 m` do not. With
    `decimal_comma`, an answer that is one number with one comma and no space (1000,99) is read as a decimal
    unless it is also a valid thousands grouping (1,000 and 12,345 stay thousands: the reading that keeps
    a wrong answer wrong when the two disagree)."""
    if _PLAIN_NUMBER_RE.fullmatch(s):
        return s.strip(), ""  # nothing below changes a plain number: skip the regex passes (training path)
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    if re.search(r"(?<!\\)\\\\[A-Za-z]", s) and not re.search(r"(?<!\\)\\[A-Za-z]", s):
        s = s.replace("\\\\", "\\")  # every macro's backslash doubled (an escaped string): \\frac is \frac
    s = s.replace("\\$", "").replace("$", "")
    # Thousands separators: 10,\!080 and 12{,}000 always; a plain comma only in one lone number (below)
    s = _TEX_SEPARATOR_RE.sub(lambda m: m.group(0) if m.group(1) == "0" else m.group(1), s)
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|bigg|Bigg)\s*\.", "", s)  # invisible delimiters
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|bigg|Bigg|displaystyle|textstyle)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[lr]?vert(?![A-Za-z])", "|", s)  # \lvert x \rvert and \vert x \vert are |x|
    s = re.sub(r"\\[!,;:>]|(?<!\\)\\ |~|\\q?quad(?![A-Za-z])", " ", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\[dt]binom(?![A-Za-z])", r"\\binom", s)
    s = _relations(s)
    s = re.sub(r"\\(?:emptyset|varnothing)(?![A-Za-z])|\\\{\s*\\\}", r"\\{\\}", s)  # one spelling of the empty set
    s = re.sub(r"\\mathbb\s*(?:\{\s*R\s*\}|R(?![A-Za-z]))", r"(-\\infty,\\infty)", s)  # x \in \mathbb{R}: every real
    s = re.sub(r"\\begin\{array\}\s*\{[^{}]*\}", r"\\begin{matrix}", s).replace("\\end{array}", "\\end{matrix}")
    s = re.sub(r"\^\s*\{\s*\\prime\s*\}|\^\s*\\prime", "'", s)  # y^{\prime} is y'
    units = []
    s, n = re.subn(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree", "", s)  # degrees: 90^\circ is 90
    units += ["degree"] * bool(n)
    if "%" in s:  # percent: 8\% is 8 (no x100 leniency anywhere)
        s, units = s.replace("\\%", "").replace("%", ""), units + ["%"]
    s, trailing = _strip_units(s.strip())
    units += trailing
    unwrapped = s
    prev = None
    while prev != unwrapped:  # unwrap \text{...} and friends, innermost first
        prev, unwrapped = unwrapped, _TEXT_WRAP_RE.sub(lambda m: m.group(1), unwrapped)
    if unwrapped != s:  # \text{5 cm}: a unit may have been inside the text
        s, trailing = _strip_units(unwrapped.strip())
        units += trailing
    if re.search(r"[\d<>=]|\\[lgn]e(?![A-Za-z])", s):  # "6 and 8", "x < 2 or x > 3"; not "black and white"
        s = _CONNECTIVE_RE.sub(lambda m: "," if m.group(1) == "or" or "," in m.group(0) else r" \land ", s)
    s = re.sub(r"\s+", " ", s).strip()
    while s.startswith("{") and _closing_brace(s) == len(s) - 1:
        s = s[1:-1].strip()  # a TeX group around the whole answer: {1,3} is 1,3
    if _THOUSANDS_NUMBER_RE.fullmatch(s.rstrip(".")):  # 12,000 alone is a number; "32, 349" (a space) is a list
        s = s.replace(",", "")
    elif decimal_comma and _DECIMAL_COMMA_RE.fullmatch(s.rstrip(".")):  # spaces still tell "1,5" from "1, 5"
        s = s.replace("{,}", ".").replace(",", ".")
    s = re.sub(r"(?<=[^A-Za-z]) | (?=[^A-Za-z])", "", s)  # spaces only matter between two letters
    s = re.sub(r"(?:\.|\\\\)+$", "", s).rstrip()  # trailing period / line break
    if "\\approx" in s:
        s = ",".join(_exact_or_approx(p) for p in split_top(s))
    if re.fullmatch(r"\([A-Za-z]\)", s):  # multiple choice: (C) is C
        s = s[1].upper()
    elif re.fullmatch(r"[A-Za-z]+(?: [A-Za-z]+)*", s) and len(s) > 1:  # words compare case-insensitively
        s = s.lower()
    return s, " ".join(dict.fromkeys(units))


def _closing_brace(s: str) -> int:
    """Index of the `}` closing the `{` at s[0] (escaped \\{ \\} skipped), or -1."""
    depth, i = 0, 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        depth += (s[i] == "{") - (s[i] == "}")
        if depth == 0:
            return i
        i += 1
    return -1


def _relations(s: str) -> str:
    """One spelling per relation: \\le, \\ge, \\ne, <, > (from \\leq, \\leqslant, <=, \\neq, !=, \\lt, ...)."""
    s = s.replace("<=", "\\le ").replace(">=", "\\ge ")
    s = re.sub(r"(?<![\d)!])!=|\\not\s*=", r"\\ne ", s)  # x != 3, x \not= 3; but 5!=120 is a factorial
    s = re.sub(r"\\(?:leq|leqslant|leqq|le)(?![A-Za-z])", r"\\le ", s)
    s = re.sub(r"\\(?:geq|geqslant|geqq|ge)(?![A-Za-z])", r"\\ge ", s)
    s = re.sub(r"\\(?:neq|ne)(?![A-Za-z])", r"\\ne ", s)
    s = re.sub(r"\\lt(?![A-Za-z])", "<", s)
    return re.sub(r"\\gt(?![A-Za-z])", ">", s)


def ends_in_unit_word(s: str) -> bool:
    """`5 cm`, `28 percent`: the text ends in one of the unit words."""
    return _BARE_UNIT_RE.search(s) is not None


def _strip_units(s: str) -> tuple[str, list[str]]:
    """Strip trailing units (\\text{ cm}^2, `miles`) while something that is not the unit is left."""
    units = []
    while True:
        m = _UNIT_RE.search(s)
        unit = (m.group(1) + (m.group(2) or "")) if m else ""
        if not m:
            m = _BARE_UNIT_RE.search(s)
            unit = m.group(1) if m else ""
        rest = s[: m.start()].rstrip() if m else ""
        if not m or not re.search(r"[0-9A-Za-z}]", rest) or canonical_unit(unit) in ("e", "i"):
            return s, units[::-1]  # (2\mathrm{e} is twice Euler's number, not 2 of a unit "e")
        units.append(canonical_unit(unit))
        s = re.sub(r"(?:/|\\cdot|\\,)\s*$", "", rest).rstrip()


def canonical_unit(unit: str) -> str:
    """`\\text{ square inches}`, `in^{2}` and `sq. inch` all give "inch^2"; "percent" gives "%"."""
    u = re.sub(r"[{}\s~]|\\[,;!: ]", " ", unit.lower()).split()
    power = ""
    if u and u[0] in ("square", "sq", "sq.", "cubic"):
        power, u = ("^3" if u[0] == "cubic" else "^2"), u[1:]
    word = "".join(u)
    m = re.fullmatch(r"(.*?)\^([0-9]+)", word)
    if m:
        word, power = m.group(1), "^" + m.group(2)
    if word in _UNIT_ALIASES:
        word = _UNIT_ALIASES[word]
    elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]  # plural: miles, dollars, units
    return word + power


def _exact_or_approx(part: str) -> str:
    """`x \\approx 11` states the value 11; in `\\frac13 \\approx 0.33` the exact value comes first."""
    pieces = split_top(part, "\\approx")
    if len(pieces) > 1 and _SIMPLE_LHS_RE.fullmatch(pieces[0]):
        return pieces[0] + "=" + pieces[-1]
    return pieces[0]


def split_top(s: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside any bracket pair ((, [, {, \\{); intervals like (3,4] count as one pair."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i) and not (sep[-1].isalpha() and s[i + len(sep) : i + len(sep) + 1].isalpha()):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def is_prose(s: str) -> bool:
    """Six or more words (not macro or environment names): a sentence, which only an identical sentence can
    equal. (Three matrices are not prose: `pmatrix` in \\begin{pmatrix} is no word.)"""
    s = re.sub(r"\\(?:begin|end)\{[A-Za-z]*\}", "", s)
    return len(re.findall(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])", s)) >= 6


def _has_relation(s: str) -> bool:
    return len(split_top(s, "=")) > 1 or bool(re.search(r"\\(?:le|ge|ne|lt|gt|in)(?![A-Za-z])|[<>]", s))


def align_sides(resp: str, ref: str) -> tuple[str, str]:
    """`x = 3` against `3`: drop a definition's left side where the other answer has none, element-wise."""
    resp_parts, ref_parts = split_top(resp), split_top(ref)
    if not any(_has_relation(p) for p in ref_parts):
        # The reference is a bare value: keep what follows the last `=` / `\in` of each response element,
        # unless they describe a set of reals together (`x < 0 or x = 1` is a union with the point 1).
        if not any(re.search(r"\\(?:le|ge|ne)(?![A-Za-z])|[<>]", p) for p in resp_parts):
            resp_parts = [re.split(r"=|\\in(?![A-Za-z])", p)[-1] for p in resp_parts]
    elif not any(_has_relation(p) for p in resp_parts):
        # The reference defines a name (k=2n-1, f(x)=2x, y = 2x+3): compare its right side.
        new = []
        for p in ref_parts:
            sides = split_top(p, "=")
            new.append(sides[-1] if len(sides) >= 2 and _SIMPLE_LHS_RE.fullmatch(sides[0]) else p)
        ref_parts = new
    else:
        # Both are definitions: same left sides compare by right sides; otherwise as equations.
        # A chain `x = 5+5+1 = 11` states its last side.
        pairs = [(split_top(a, "="), split_top(b, "=")) for a, b in zip(resp_parts, ref_parts)]
        if len(resp_parts) == len(ref_parts) and all(
            len(a) >= 2 and len(b) >= 2 and a[0] == b[0] and _SIMPLE_LHS_RE.fullmatch(b[0]) for a, b in pairs
        ):
            resp_parts, ref_parts = [a[-1] for a, _ in pairs], [b[-1] for _, b in pairs]
    return ",".join(resp_parts), ",".join(ref_parts)


def group_answers(resp: str, ref: str) -> tuple[str, str]:
    """Semicolons outside brackets separate whole answers: `(5,2);(7,2)` is the list `(5,2),(7,2)`, and
    groups of assignments `p=5,q=2; p=7,q=2` are the tuples `(5,2),(7,2)` (in the reference's order of the
    names when it names them too, else in the order written). Runs before align_sides."""
    groups_resp, groups_ref = _assignment_groups(resp), _assignment_groups(ref)
    order = list(groups_ref[0]) if groups_ref else list(groups_resp[0]) if groups_resp else []
    return _grouped(resp, groups_resp, order), _grouped(ref, groups_ref, order)


def _grouped(s: str, groups: list[dict] | None, order: list[str]) -> str:
    if groups is None:
        return ",".join(split_top(s, ";"))
    if len(groups[0]) == 1:  # x=1; x=-2: one unknown, several values
        return ",".join(g[next(iter(g))] for g in groups)
    names = order if set(order) == set(groups[0]) else list(groups[0])
    return ",".join("(" + ",".join(g[n] for n in names) + ")" for g in groups)


def _assignment_groups(s: str) -> list[dict] | None:
    """`p=5,q=2;p=7,q=2` -> [{p: 5, q: 2}, {p: 7, q: 2}]: at least two `;` groups, each assigning the same
    names once (a name written twice, or another set of names, is no such list); else None."""
    parts = split_top(s, ";")
    if len(parts) < 2 or len(parts) > MAX_GROUPS:
        return None
    groups = []
    for part in parts:
        group = {}
        for item in split_top(part):
            sides = split_top(item, "=")
            if len(sides) != 2 or not _NAME_RE.fullmatch(sides[0]) or not sides[1] or sides[0] in group:
                return None
            group[sides[0]] = sides[1]
        if groups and set(group) != set(groups[0]):
            return None
        groups.append(group)
    return groups


# ---------------------------------------------------------------------------
# Plain numbers, exactly (Fraction), with their written precision


@dataclass(frozen=True)
class Num:
    value: Fraction
    exact: bool  # integer or fraction as written; False for a decimal (a rounded value)
    ulp: Fraction  # one unit in the last written digit (0 for exact numbers)
    sig_digits: int  # significant digits written (decimals only)


_NUM_RE = re.compile(
    r"(?P<sign>[+-]?)(?:"
    r"(?P<mixed>\d+)\\frac(?:\{(?P<mn>\d+)\}|(?P<mn1>\d))(?:\{(?P<md>\d+)\}|(?P<md1>\d))"
    r"|\\frac(?:\{(?P<fn>[+-]?\d+)\}|(?P<fn1>\d))(?:\{(?P<fd>[+-]?\d+)\}|(?P<fd1>\d))"
    r"|(?P<sn>\d+)/(?P<sd>\d+)"
    r"|(?P<mant>\d+\.?\d*|\.\d+)(?:[eE](?P<exp>[+-]?\d+)|(?:\\times|\\cdot)10\^(?:\{(?P<exp2>[+-]?\d+)\}|(?P<exp3>\d)))?"
    r")",
    re.ASCII,  # only ASCII digits are digits: int() would also read Arabic-Indic or fullwidth ones
)


def parse_number(s: str) -> Num | None:
    """A plain number (integer, decimal, E-notation, a\\times10^k, \\frac{p}{q}, p/q, mixed 1\\frac45) or None."""
    if len(s) > MAX_NUMBER_DIGITS + 40:
        return None
    m = _NUM_RE.fullmatch(s)
    if not m:
        return None
    g = m.groupdict()
    sign = -1 if g["sign"] == "-" else 1
    if g["mixed"] is not None:
        den = int(g["md"] or g["md1"])
        if den == 0:
            return None
        return Num(sign * (int(g["mixed"]) + Fraction(int(g["mn"] or g["mn1"]), den)), True, Fraction(0), 0)
    if g["fn"] is not None or g["fn1"] is not None or g["sn"] is not None:
        num, den = int(g["fn"] or g["fn1"] or g["sn"]), int(g["fd"] or g["fd1"] or g["sd"])
        if den == 0:
            return None
        return Num(sign * Fraction(num, den), True, Fraction(0), 0)
    mant, exp = g["mant"], int(g["exp"] or g["exp2"] or g["exp3"] or 0)
    if abs(exp) > MAX_DECIMAL_EXPONENT:
        return None
    int_part, _, frac_part = mant.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    scale = Fraction(10) ** (exp - len(frac_part))
    value = sign * int(int_part + frac_part or "0") * scale
    if not frac_part.strip("0") and exp == 0:  # 27, 025, 27.0: an integer, compared exactly
        return Num(value, True, Fraction(0), 0)
    return Num(value, False, scale, max(len(digits), 1))


def terminates(x: Fraction) -> bool:
    """True when x has a finite decimal expansion (denominator 2^a 5^b)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def numbers_equal(resp: Num, ref: Num) -> bool:
    """Form-driven: exact refs need exact values; decimal refs are matched by rounding at their precision."""
    if resp.value == ref.value:
        return True
    if not ref.exact:
        # A decimal reference is a rounded value: accept what rounds to it at its own precision.
        return abs(resp.value - ref.value) * 2 <= ref.ulp
    if resp.exact or terminates(ref.value):
        return False  # integers and terminating fractions must match exactly (0.25 is 1/4; 2.9999 is not 3)
    # A decimal can only approximate 1/3: require many correct significant digits (0.33 is not 1/3).
    return resp.sig_digits >= HIGH_PRECISION_DIGITS and abs(resp.value - ref.value) <= resp.ulp


def _outer(s: str) -> tuple[str, str, str] | None:
    """(open, close, inner) when s is one bracketed group, e.g. '(3,4]' -> ('(', ']', '3,4')."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    depth = 0
    for i, c in enumerate(s):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and i < len(s) - 1:
            return None
    return s[0], s[-1], s[1:-1]


def fast_compare(resp: str, ref: str) -> bool | None:
    """Exact verdict for normalised answers made of plain numbers, or None when the symbolic stage is needed."""
    if resp == ref:
        return True
    m = _BASE_RE.fullmatch(ref)
    if m and _is_numeral(*m.groups()):  # base-b numeral: 2516_8 also accepts 2516
        other = _BASE_RE.fullmatch(resp)
        return resp == m.group(1) or (other is not None and other.groups() == m.groups())
    a, b = parse_number(resp), parse_number(ref)
    if a is not None and b is not None:
        return numbers_equal(a, b)
    # Lists of plain numbers: bare lists are unordered (all solutions); bracketed ones are ordered tuples.
    oa, ob = _outer(resp), _outer(ref)
    tuple_a = oa is not None and len(split_top(oa[2])) > 1
    tuple_b = ob is not None and len(split_top(ob[2])) > 1
    pa, pb = split_top(oa[2] if tuple_a else resp), split_top(ob[2] if tuple_b else ref)
    if len(pb) < 2:
        return None
    na, nb = [parse_number(p) for p in pa], [parse_number(p) for p in pb]
    if None in na or None in nb:
        return None
    if len(na) != len(nb) or (tuple_a and (not tuple_b or oa[:2] != ob[:2])):
        return False  # other length, other brackets ((3,4] is not [3,4]), or a tuple for a list
    if tuple_b:  # ordered; a bare list may answer a parenthesised tuple, never an interval
        if not tuple_a and ob[:2] != ("(", ")"):
            return False
        return all(numbers_equal(x, y) for x, y in zip(na, nb))
    return match_unordered(na, nb, numbers_equal)


def _is_numeral(digits: str, base: str) -> bool:
    """2516_8 is a numeral in base 8; v_0, x_1 and t_{12} are names (no base 0 or 1, no digit t in base 12)."""
    b = int(base)
    return 2 <= b <= 36 and all(int(c, 36) < b for c in digits)


def match_unordered(xs: list, ys: list, equal) -> bool:
    """Every y pairs with a distinct x that `equal`s it (a multiset match; callers check lengths)."""
    unused = list(xs)
    for y in ys:
        hit = next((k for k, x in enumerate(unused) if equal(x, y)), None)
        if hit is None:
            return False
        unused.pop(hit)
    return True
