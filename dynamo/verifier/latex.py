"""LaTeX answer text -> SymPy expression, without eval/sympify/parse_expr.

pylatexenc turns the text into a node tree (groups and macro arguments kept, so \\frac{a+b}{c} and
\\sqrt[3]{x} keep their structure); the tree becomes a token list, and a small recursive-descent parser
builds SymPy objects from a whitelist of macros. Input size, nesting depth, digits and exponent
magnitudes are bounded before any SymPy arithmetic runs. Imported only in worker processes.
"""
import math
import re

import sympy
from pylatexenc.latexwalker import (
    LatexCharsNode, LatexCommentNode, LatexEnvironmentNode, LatexGroupNode, LatexMacroNode, LatexMathNode,
    LatexSpecialsNode, LatexWalker,
)
from pylatexenc.macrospec import EnvironmentSpec, LatexContextDb, MacroSpec, SpecialsSpec

from dynamo.verifier.normalize import MAX_ANSWER_CHARS

MAX_DEPTH = 40  # bracket nesting / parser recursion
MAX_DIGITS = 400  # digits in one number literal
MAX_EXPONENT = 10_000  # |n| in x^n
MAX_POWER_DIGITS = 10_000  # digits of an exact integer power such as 2^{1009}
MAX_FACTORIAL = 1000  # n in n! and binomials


class ParseError(ValueError):
    """The answer is not in the supported LaTeX subset, or exceeds a bound."""


_ACCENTS = ("dot", "ddot", "hat", "bar", "vec", "tilde", "overline")  # \dot{x}: a name of its own
# Only these macros take arguments; every other macro is read bare and must be in the whitelist below.
_DB = LatexContextDb()
_DB.add_context_category(
    "answers",
    macros=[MacroSpec(n, "{{") for n in ("frac", "binom")]
    + [MacroSpec("sqrt", "[{")]
    + [MacroSpec(n, "{") for n in ("text", "textrm", "mathrm", "mathbf", "mathit", "textbf", "mbox", "operatorname")]
    + [MacroSpec(n, "{") for n in _ACCENTS],
    environments=[EnvironmentSpec(n, "") for n in ("matrix", "pmatrix", "bmatrix", "Bmatrix", "vmatrix")],
    specials=[SpecialsSpec("&")],
)
_DB.set_unknown_macro_spec(MacroSpec(""))

_GREEK = set(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho sigma tau "
    "upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Upsilon Phi Psi Omega hbar ell".split()
)
_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc,
    "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh,
    "tanh": sympy.tanh, "ln": sympy.log, "log": sympy.log, "exp": sympy.exp,
}
_TEXTLIKE = {"text", "textrm", "mathrm", "mathbf", "mathit", "textbf", "mbox", "operatorname"}
_IGNORED = {"left", "right", "displaystyle", ",", ";", "!", ":", " ", "quad", "qquad"}
_ATOM_MACROS = {"frac", "binom", "sqrt", "pi", "infty", "lfloor", "lceil"} | _GREEK | set(_FUNCS) | _TEXTLIKE | set(_ACCENTS)
_LEX_RE = re.compile(r"\s+|(\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|([A-Za-z])|([-+*/^_()\[\]|!,=<>'])", re.ASCII)


def check_bounds(text: str) -> None:
    """Reject input whose size, nesting or numbers could make SymPy slow, before SymPy sees it."""
    if len(text) > MAX_ANSWER_CHARS:
        raise ParseError(f"answer longer than {MAX_ANSWER_CHARS} characters")
    depth = 0
    for c in text:
        depth += c in "([{"
        depth -= c in ")]}"
        if depth > MAX_DEPTH:
            raise ParseError("nesting too deep")
    if any(len(d) > MAX_DIGITS for d in re.findall(r"\d+", text)):
        raise ParseError("number literal too long")
    if any(abs(int(e)) > 1000 for e in re.findall(r"\d[eE]([+-]?\d{1,6})", text)) or re.search(r"\d[eE][+-]?\d{7}", text):
        raise ParseError("E-notation exponent too large")


def _lex(chars: str) -> list:
    out, i = [], 0
    while i < len(chars):
        m = _LEX_RE.match(chars, i)
        if not m:
            raise ParseError(f"unexpected character {chars[i]!r}")
        if m.group(1) is not None:
            out.append(("num", m.group(0)))
        elif m.group(2):
            out.append(("sym", m.group(2)))
        elif m.group(3):
            out.append(("op", m.group(3)))
        i = m.end()
    return out


def _arg_tokens(node, depth: int) -> list:
    if isinstance(node, LatexGroupNode):
        return _tokens(node.nodelist, depth + 1)
    return _tokens([node], depth + 1)


def _tokens(nodes, depth: int = 0) -> list:
    """Flatten a pylatexenc node list into tokens; brace groups stay nested as ('group', tokens)."""
    if depth > MAX_DEPTH:
        raise ParseError("nesting too deep")
    out = []
    for n in nodes or []:
        if isinstance(n, LatexCharsNode):
            out += _lex(n.chars)
        elif isinstance(n, LatexGroupNode):
            out.append(("group", _tokens(n.nodelist, depth + 1)))
        elif isinstance(n, LatexMathNode):
            out += _tokens(n.nodelist, depth + 1)
        elif isinstance(n, LatexCommentNode):
            continue
        elif isinstance(n, LatexSpecialsNode):
            out.append(("op", n.specials_chars))
        elif isinstance(n, LatexEnvironmentNode):
            raise ParseError("environment inside an expression")
        elif isinstance(n, LatexMacroNode):
            name = n.macroname
            if name in _IGNORED:
                continue
            args = [None if a is None else _arg_tokens(a, depth) for a in (n.nodeargd.argnlist if n.nodeargd else [])]
            out.append(("macro", name, args))
        else:
            raise ParseError(f"unsupported LaTeX node {type(n).__name__}")
    return out


def tokenize(text: str) -> list:
    check_bounds(text)
    try:
        nodes, _, _ = LatexWalker(text, latex_context=_DB, tolerant_parsing=False).get_latex_nodes()
    except Exception as e:  # pylatexenc's own parse errors: unbalanced braces, missing arguments
        raise ParseError(f"LaTeX parse error: {e}") from None
    return _tokens(nodes)


# ---------------------------------------------------------------------------
# Bounded constructors: the only places where SymPy does arithmetic that could explode


def bounded_pow(base, exp):
    if exp.is_Number:
        if abs(exp) > MAX_EXPONENT:
            raise ParseError("exponent too large")
        if base.is_Rational and exp.is_Rational and abs(base) not in (0, 1):
            size = max(abs(base.p), abs(base.q))
            if abs(exp.p) * math.log10(size) / exp.q > MAX_POWER_DIGITS:
                raise ParseError("power too large")
    elif exp.is_number and exp.free_symbols == set():
        value = sympy.N(exp, 15)
        if not value.is_finite or abs(value) > MAX_EXPONENT:
            raise ParseError("exponent too large")
    return sympy.Pow(base, exp)


def _bounded_int(x, what: str):
    if x.is_Integer and not 0 <= x <= MAX_FACTORIAL:
        raise ParseError(f"{what} argument out of range")
    if x.is_Number and not x.is_Integer:
        raise ParseError(f"{what} of a non-integer")
    return x


def number(text: str):
    """Integer literal -> Integer; decimal or E-notation -> Float kept at its written digits (form matters)."""
    if re.fullmatch(r"\d+", text):
        return sympy.Integer(int(text))
    digits = len(re.sub(r"[eE].*|\D", "", text))
    mantissa, _, exp = text.lower().partition("e")
    text = mantissa.rstrip(".") + ("e" + exp if exp else "")  # "1." is 1.0 (SymPy does not read "1.")
    return sympy.Float(text, max(30, digits + 5))


class _Parser:
    def __init__(self, toks: list, depth: int = 0):
        if depth > MAX_DEPTH:
            raise ParseError("nesting too deep")
        self.t, self.i, self.depth, self.in_abs = toks, 0, depth, 0

    def peek(self, k: int = 0):
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def next(self):
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end of expression")
        self.i += 1
        return tok

    def at_op(self, *ops) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "op" and tok[1] in ops

    def at_macro(self, *names) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "macro" and tok[1] in names

    def sub(self, toks: list):
        return _Parser(toks, self.depth + 1).parse()

    def parse(self):
        if not self.t:
            raise ParseError("empty expression")
        e = self.expr()
        if self.i != len(self.t):
            raise ParseError(f"unexpected token {self.t[self.i]!r}")
        return e

    # expr := term (('+' | '-') term)*
    def expr(self):
        left = self.term()
        while self.at_op("+", "-"):
            sign = self.next()[1]
            right = self.term()
            left = left + right if sign == "+" else left - right
        return left

    # term := unary (('*' | '/' | \cdot | \times | \div | implicit) unary)*
    def term(self):
        left = self.unary()
        while True:
            if self.at_op("*") or self.at_macro("cdot", "times"):
                self.next()
                left = left * self.unary()
            elif self.at_op("/") or self.at_macro("div"):
                self.next()
                left = left / self.unary()
            elif self.starts_atom():
                left = left * self.power()
            else:
                return left

    def starts_atom(self) -> bool:
        tok = self.peek()
        if tok is None:
            return False
        if tok[0] in ("num", "sym", "group"):
            return True
        if tok[0] == "op":
            return tok[1] in "([" or (tok[1] == "|" and not self.in_abs)
        return tok[1] in _ATOM_MACROS

    def unary(self):
        negative = False
        while self.at_op("-", "+"):  # a loop, not recursion: '-----x' must not exhaust the stack
            negative ^= self.next()[1] == "-"
        e = self.power()
        return -e if negative else e

    # power := postfix ('^' exponent)?
    def power(self):
        base = self.postfix()
        if self.at_op("^"):
            self.next()
            return bounded_pow(base, self.exponent())
        return base

    def exponent(self):
        """x^2, x^{n+1}, x^-1; a bare digit run exponentiates by its first digit only (x^23 is x^2 * 3)."""
        sign = 1
        while self.at_op("-", "+"):
            sign = -sign if self.next()[1] == "-" else sign
        tok = self.peek()
        if tok is not None and tok[0] == "num" and len(tok[1]) > 1 and tok[1][0].isdigit():
            self.t = self.t[: self.i] + [("num", tok[1][0])] + _lex(tok[1][1:]) + self.t[self.i + 1 :]
        return sign * self.postfix()

    def postfix(self):
        a = self.atom()
        while self.at_op("!"):
            self.next()
            a = sympy.factorial(_bounded_int(a, "factorial"))
        return a

    def atom(self):
        tok = self.next()
        kind = tok[0]
        if kind == "num":
            if self.at_op("_"):
                raise ParseError("subscripted number (base notation) in an expression")
            return number(tok[1])
        if kind == "group":
            return self.sub(tok[1])
        if kind == "sym":
            return self.symbol(tok[1])
        if kind == "op":
            if tok[1] in "([":
                close = ")" if tok[1] == "(" else "]"
                e = self.expr()
                if not self.at_op(close):
                    raise ParseError("unbalanced brackets")
                self.next()
                return e
            if tok[1] == "|":
                self.in_abs += 1
                e = self.expr()
                self.in_abs -= 1
                if not self.at_op("|"):
                    raise ParseError("unbalanced |")
                self.next()
                return sympy.Abs(e)
            raise ParseError(f"unexpected {tok[1]!r}")
        return self.macro(tok[1], tok[2])

    def subscript_name(self) -> str:
        """The text of a subscript (x_1, m_{\\max}) used as part of a symbol's name."""
        self.next()
        tok = self.next()
        if tok[0] == "group" and len(tok[1]) == 1 and tok[1][0][0] != "group":
            tok = tok[1][0]  # x_{1} is x_1: one name however its one-token subscript is braced
        if tok[0] == "group":
            return "{" + "".join(_token_text(t) for t in tok[1]) + "}"
        return _token_text(tok)

    def symbol(self, name: str):
        while self.at_op("'"):  # y' is a name (a derivative written as such), not an operation
            name += self.next()[1]
        if self.at_op("_"):
            return sympy.Symbol(name + "_" + self.subscript_name())
        if name in "fgh" and self.at_op("("):  # f(x): an unknown function, not f*x
            self.next()
            args = [self.expr()]
            while self.at_op(","):
                self.next()
                args.append(self.expr())
            if not self.at_op(")"):
                raise ParseError("unbalanced brackets")
            self.next()
            return sympy.Function(name)(*args)
        if name == "e":
            return sympy.E
        if name == "i":
            return sympy.I
        return sympy.Symbol(name)

    def macro(self, name: str, args: list):
        required = {"frac": 2, "binom": 2, "sqrt": 2}.get(name, 1 if name in _TEXTLIKE or name in _ACCENTS else 0)
        if len(args) < required or any(a is None for a in args[-1:] if required):
            raise ParseError(f"\\{name} is missing an argument")  # e.g. \frac\frac0: the inner one has none
        if name == "frac":
            return self.sub(args[0]) / self.sub(args[1])
        if name == "binom":
            n, k = self.sub(args[0]), self.sub(args[1])
            if n.is_Number and n > MAX_FACTORIAL:
                raise ParseError("binomial argument out of range")
            return sympy.binomial(n, k)
        if name == "sqrt":
            radicand = self.sub(args[1])
            if args[0] is None:
                return sympy.sqrt(radicand)
            index = self.sub(args[0])
            if index.is_Number and not (index.is_Integer and 2 <= index <= 100):
                raise ParseError("root index out of range")
            return bounded_pow(radicand, 1 / index)
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in _ACCENTS:
            return self.symbol("\\" + name + "{" + "".join(_token_text(t) for t in args[0]) + "}")
        if name in _GREEK:
            return sympy.Symbol(name + ("_" + self.subscript_name() if self.at_op("_") else ""))
        if name in _TEXTLIKE:
            text = "".join(_token_text(t) for t in args[0])
            if re.fullmatch(r"[A-Za-z]{2,}", text):
                return sympy.Symbol(text)  # \mathrm{Ca}: one multi-letter name
            return self.sub(args[0])
        if name in ("lfloor", "lceil"):
            close = "rfloor" if name == "lfloor" else "rceil"
            e = self.expr()
            if not self.at_macro(close):
                raise ParseError(f"missing \\{close}")
            self.next()
            return sympy.floor(e) if name == "lfloor" else sympy.ceiling(e)
        if name in _FUNCS:
            return self.function(name)
        raise ParseError(f"unsupported macro \\{name}")

    def function(self, name: str):
        """\\sin x, \\sin^2(2x), \\log_{2} 8, \\exp{a t}; a bare argument runs to the next + or -."""
        base = power = None
        if name == "log" and self.at_op("_"):
            self.next()
            base = self.postfix()
        if self.at_op("^"):
            self.next()
            power = self.exponent()
        if self.at_op("(") or self.peek() is not None and self.peek()[0] == "group":
            arg = self.postfix()
        else:
            arg = self.power()
            while self.starts_atom() and not self.at_macro(*_FUNCS):
                arg = arg * self.power()
        f = sympy.log(arg, base) if base is not None else _FUNCS[name](arg)
        return bounded_pow(f, power) if power is not None else f


def _token_text(tok) -> str:
    if tok[0] in ("num", "sym", "op"):
        return tok[1]
    if tok[0] == "group":
        return "{" + "".join(_token_text(t) for t in tok[1]) + "}"
    return "\\" + tok[1] + "".join("{" + "".join(_token_text(t) for t in a) + "}" for a in tok[2] if a is not None)


def to_sympy(text: str):
    """SymPy expression for one scalar LaTeX answer; raises ParseError outside the supported subset."""
    return _Parser(tokenize(text)).parse()
