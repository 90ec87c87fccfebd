"""Final-answer extraction from model outputs, and gold answers from benchmark rows.

Benchmark formats: AIME/MATH `answer` strings, AMC float answers, GSM8K `#### <n>`, Minerva's last box
in `solution`, OlympiadBench's `$`-wrapped `final_answer` list. Model outputs: the box (both modes);
in evaluation mode also unboxed endings (anchored phrases, the last sentence), read only from bounded
windows of text so that no scan is quadratic in a long reply.
"""
import re

from dynamo.verifier.normalize import ends_in_unit_word

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# The model's turn ends at a chat-template token; anything after it is a hallucinated next turn.
_TURN_END_RE = re.compile(r"<\|(?:im_start|im_end|endoftext|eot_id|end_of_text|start_header_id)\|>")
# Boxes written side by side form one answer (`\boxed{-2} and \boxed{1}`): only these may separate them.
_BOX_JOIN_RE = re.compile(r"(?:\s|\$|\\[()\[\]]|,|;|\\quad|\\qquad|\\text\s*\{\s*and\s*\}|(?<![A-Za-z])and(?![A-Za-z]))*")
_BARE_BOX_RE = re.compile(r"[^\s$]+")
# One token (a digit, a letter, a macro name), then nothing that could continue it: the end, a space, `$`, a
# closing `}`, `\)` or `\]`, or sentence punctuation that is not a decimal point (`\boxed7.` but not `\boxed7.5`).
_BOX_TOKEN_RE = re.compile(r"(\\[A-Za-z]+|[0-9A-Za-z])(?=$|[\s$}]|\\[)\]]|[.,;:!?](?![0-9A-Za-z]))")
MAX_JOINED_BOXES = 16
MAX_SCAN_CHARS = 4000  # the unboxed fallbacks read at most this much text around their anchor
MAX_FALLBACK_CHARS = 10_000  # ... and look for anchors in at most this much of the end of the reply
# Evaluation-only fallbacks, tried in order when there is no box (the last match in the text wins).
# Captures are bounded (400 characters: longer is no final answer) so no pattern scans the whole text per try.
_MINERVA_RE = re.compile(r"Final Answer: The final answer is (.{1,400}?)\. I hope it is correct", re.S)  # Minerva format
_ANSWER_IS_RE = re.compile(r"[Tt]he (?:final )?answer is[:\s]*(.{1,400}?)(?:\.\s|\.?$|\n)", re.M)
_HASHES_RE = re.compile(r"^[ \t]*####[ \t]*(\S[^\n]{0,400}?)[ \t]*$", re.M)  # GSM8K: `#### 72`
# "Final Answer" anywhere; "Answer" (capital A) only where a line or sentence starts: "**Answer:** 5",
# "### Final Answer", "Answer \\[ 9 \\]"; the word "answer" in prose is no anchor.
_ANCHOR_RE = re.compile(
    r"(?:[Ff]inal\s+[Aa]nswer|FINAL ANSWER|(?:^|(?<=\n)|(?<=[.!?:]\s))[ \t>#*]*(?:Answer|ANSWER))(?![A-Za-z])[ \t*]*:?[ \t*]*"
)
_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?%?", re.ASCII)
# "x is 5" states 5; "x is larger than 5", "x is not 5" do not
_COPULA_RE = re.compile(
    r"(?<![A-Za-z])(?:is|are|was|were|equals|be)(?![A-Za-z])(?!\s+(?:not|no|never|larger|greater|less|smaller|more|"
    r"fewer|bigger|higher|lower|at\s+(?:least|most)|divisible|than)\b)"
)
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)|\n")
_CONCLUSION_RE = re.compile(
    r"\W*(?:therefore|thus|so|hence|finally|overall|altogether|consequently|in (?:conclusion|total|summary|all))\b", re.I
)
_PUNCT = " \t\n.,;:"


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at text[start] == '{', brace-matched; None when unbalanced."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2  # an escaped brace \{ does not open a group
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def _box_at(text: str, i: int) -> tuple[str, int] | None:
    """(content, end) of the box whose macro ends at text[i]; None when unbalanced or empty."""
    j = i
    while j < len(text) and text[j].isspace():
        j += 1
    if text.startswith("{", j):
        content = _braced(text, j)
        return None if content is None else (content, j + len(content) + 2)
    if j == i:
        return _box_token(text, i)
    m = _BARE_BOX_RE.match(text, j)  # `\boxed 5$`
    return (m.group(0), m.end()) if m else None


def _box_token(text: str, i: int) -> tuple[str, int] | None:
    """`\\boxed7`: TeX boxes the next single token (a character or a macro such as \\pi). Read only when that
    token stands alone: in `\\boxed72` or `\\boxed7.5` TeX boxes the 7 while the writer likely meant more,
    and where the two readings disagree there is no answer."""
    m = _BOX_TOKEN_RE.match(text, i)
    return (m.group(1), m.end(1)) if m else None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (or `\\boxed 5`); None when absent or unbalanced."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    box = _box_at(text, starts[-1])
    return box[0] if box else None


def final_boxed(text: str) -> str | None:
    """The last box, joined with the boxes right before it when only `and`, commas, spaces or math
    delimiters separate them: `\\boxed{-2} and \\boxed{1}` is the answer `-2, 1`, not `1`."""
    found = _final_box(text)
    return found[0] if found else None


def _final_box(text: str) -> tuple[str, int] | None:
    """(final_boxed answer, index where the last box ends)."""
    macros = list(_BOX_RE.finditer(text))
    if not macros:
        return None
    last = _box_at(text, macros[-1].end())
    if last is None:
        return None
    parts, start = [last[0]], macros[-1].start()
    for m in reversed(macros[-MAX_JOINED_BOXES:-1]):
        box = _box_at(text, m.end())
        gap = text[box[1] : start] if box else ""
        if box is None or "\n\n" in gap or not _BOX_JOIN_RE.fullmatch(gap):
            break
        parts.append(box[0])
        start = m.start()
    parts = list(dict.fromkeys(p.strip() for p in reversed(parts)))  # a repeated box is one answer
    return ", ".join(parts), last[1]


def math_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every $...$, $$...$$, \\(...\\) and \\[...\\] in `text`, in order.

    Display math may run over several lines; inline math may not (a `$` pair across lines is
    usually two unrelated dollar signs). An escaped \\$ is a literal dollar, inside math or out.
    """
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and text[i + 1 : i + 2] in ("(", "["):
            close = "\\)" if text[i + 1] == "(" else "\\]"
            j = text.find(close, i + 2)
            if j >= 0 and (close == "\\]" or "\n" not in text[i + 2 : j]):
                out.append((i, j + 2, text[i + 2 : j]))
                i = j + 2
                continue
            i += 2
        elif c == "\\":
            i += 2  # \$, \\, \{ ...: never a delimiter
        elif c == "$":
            display = text.startswith("$$", i)
            j = _closing_dollar(text, i + (2 if display else 1), display)
            if j < 0 or not display and _is_currency(text[i + 1 : j]):
                i += 2 if display else 1
                continue
            out.append((i, j + (2 if display else 1), text[i + (2 if display else 1) : j]))
            i = j + (2 if display else 1)
        else:
            i += 1
    return out


def _is_currency(content: str) -> bool:
    """`$2 each. So she makes $18`: a dollar sign before a number, then prose, is no math."""
    return bool(re.match(r"\d", content) and re.search(r"(?<![\\A-Za-z])[A-Za-z]{2,}\s+[A-Za-z]{2,}", content))


def _closing_dollar(text: str, i: int, display: bool) -> int:
    """Index of the unescaped `$` (or `$$`) closing math opened before text[i]; -1 when none."""
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
        elif c == "$":
            if not display:
                return -1 if text.startswith("$$", i) else i
            if text.startswith("$$", i):
                return i
            i += 1  # a lone $ inside display math is a stray delimiter; the $$ pair still closes
        elif c == "\n" and not display:
            return -1
        else:
            i += 1
    return -1


def _strip_punct(s: str) -> str:
    """Sentence punctuation written after an answer (`$\\frac13.$`); an ellipsis stays (`1, 2, 3, ...`)."""
    s = s.strip()
    if s.endswith("...") or s.endswith("\\dots") or s.endswith("\\ldots"):
        return s
    return s.rstrip(_PUNCT).strip() if s[-1:] in ".,;:" else s


def _unwrap(answer: str) -> str:
    """The answer an anchor points at: the math it starts with (spans separated only by spaces are one
    expression: `$x_0 \\cos t+$ $\\dot{x}_0 \\sin t$`), else the text."""
    answer = answer.strip().strip("*").strip()
    spans = math_spans(answer)
    if not spans or spans[0][0] != 0:
        return _counted_noun(_strip_punct(answer))
    contents, end = [spans[0][2]], spans[0][1]
    for start, stop, content in spans[1:]:
        if answer[end:start].strip():
            break
        contents.append(content)
        end = stop
    return _strip_punct(" ".join(contents))


def _counted_noun(answer: str) -> str:
    """"18 eggs" states 18; a unit ("18 dollars", "5 cm") stays for the unit check."""
    m = re.fullmatch(r"([-+]?\$?\d[\d,]*(?:\.\d+)?)\s+[A-Za-z]{2,}(?:\s+[A-Za-z]{2,}){0,2}", answer)
    return m.group(1) if m and not ends_in_unit_word(answer) else answer


def _masked(text: str, spans) -> str:
    """`text` with every math span blanked out (same length), so prose rules never look inside math."""
    chars = list(text)
    for s, e, _ in spans:
        chars[s:e] = "_" * (e - s)
    return "".join(chars)


def _from_sentence(text: str, anchored: bool = False) -> str | None:
    """The answer a sentence states: what follows its last `is`/`are` (math or a number), else its only
    math, else its only number, in a conclusion ("Therefore ... by 100%.") or after an anchor only, so
    that "This took 3 steps." states nothing."""
    text = text.strip()
    spans = math_spans(text)
    masked = _masked(text, spans)
    if re.search(r"\$(?=\d)", masked):  # "$18" outside math is a currency sign
        text = _drop_currency(text, masked)
        spans = math_spans(text)
        masked = _masked(text, spans)
    if "$" in masked or "\\(" in masked or "\\[" in masked:
        return None  # unpaired math delimiters: the sentence cannot be read reliably
    stated = _after_copula(text, masked, spans)
    if stated is not None:
        return stated
    if len(spans) > 1:
        return None  # "Thus $x = 4$, not $5$.": which math is the answer is a guess
    if spans:
        return _strip_punct(spans[0][2])
    if not re.search(r"(?<![\\A-Za-z])[A-Za-z]{2,}", text):
        return _strip_punct(text) or None  # bare LaTeX without delimiters: "\\frac{10}{9}", "x \\geq 5"
    return _stated_number(text, masked, anchored)


def _after_copula(text: str, masked: str, spans) -> str | None:
    """The first math or number after the sentence's last `is`/`are`/`equals`, or None."""
    copulas = list(_COPULA_RE.finditer(masked))
    if not copulas:
        return None
    tail = copulas[-1].end()
    span = next((sp for sp in spans if sp[0] >= tail), None)
    number = _NUMBER_RE.search(masked, tail)
    if span and not (number and number.start() < span[0]):
        return _strip_punct(span[2])
    if not number:
        return None
    rest = _strip_punct(text[number.start() :])
    # a short tail keeps a unit ("120 cubic units") for the unit check; a long one gives the number
    return _counted_noun(rest) if len(rest.split()) <= 3 else number.group(0)


def _stated_number(text: str, masked: str, anchored: bool) -> str | None:
    """The number a prose sentence without math states, when that is not a guess."""
    numbers = list(_NUMBER_RE.finditer(masked))
    if not numbers:
        return None
    if len(text.split()) <= 3 and numbers[0].start() == 0:
        return _strip_punct(text)  # the whole reply is "28 percent"
    if numbers[-1].start() > masked.rfind("=") >= 0:  # "So 9 * 2 = 18 eggs." ends in its result
        return numbers[-1].group(0)
    if len(numbers) > 1:
        return None  # "In total 12 apples; 3 were eaten.": which number is the answer is a guess
    return numbers[0].group(0) if anchored or _CONCLUSION_RE.match(text) else None


def _drop_currency(text: str, masked: str) -> str:
    """`text` without the `$` signs that stand before a number outside math ("costs $18")."""
    return "".join(c for i, c in enumerate(text) if not (masked[i] == "$" and masked[i + 1 : i + 2].isdigit()))


def _after_anchor(text: str) -> str | None:
    """The answer after the last "Answer" anchor: the math that follows it (display math may start on a
    later line), else the anchor's own sentence. An anchor followed by something unreadable is None."""
    anchors = list(_ANCHOR_RE.finditer(text))
    if not anchors:
        return None
    tail = text[anchors[-1].end() :][:MAX_SCAN_CHARS]
    body = tail.lstrip(" \t\n*:#")
    offset = len(tail) - len(body)
    spans = math_spans(tail)
    if spans and spans[0][0] == offset:
        return _strip_punct(spans[0][2]) or None
    line = body.split("\n", 1)[0]
    masked = _masked(line, math_spans(line))
    end = _SENTENCE_END_RE.search(masked)
    return _from_sentence(line[: end.start()] if end else line, anchored=True)


def _sentence_bounds(text: str, masked: str, spans) -> list[int]:
    """Sentence ends: . ! ? before a space or a line break outside math, the end of math ending in one
    (`$$\\frac{2}{1}.$$`), and display math followed by a capital (`$$...$$ Therefore`)."""
    ends = {m.end() for m in _SENTENCE_END_RE.finditer(masked)}
    for s, e, content in spans:
        after = text[e:].lstrip(" \t")[:1]
        if content.rstrip()[-1:] in (".", "!", "?") or text.startswith(("$$", "\\["), s) and after.isupper():
            ends.add(e)
    return sorted(ends)


def _last_sentence(text: str) -> str | None:
    """The answer stated by the last sentence holding a number or math ("Therefore $x \\geq 5$ is the
    solution."), skipping closing remarks; a reply cut off mid-sentence has none."""
    tail = text.rstrip()[-MAX_SCAN_CHARS:]
    spans = math_spans(tail)
    masked = _masked(tail, spans)
    bounds = [0] + [b for b in _sentence_bounds(tail, masked, spans) if 0 < b < len(tail)] + [len(tail)]
    sentences = [(a, b) for a, b in zip(bounds, bounds[1:]) if tail[a:b].strip()]
    for k, (a, b) in enumerate(reversed(sentences[-4:])):
        sentence, plain = tail[a:b], masked[a:b]
        if not (re.search(r"\d", plain) or "_" in plain):
            continue  # "I hope it is correct.", "Hope this helps!"
        complete = plain.rstrip()[-1:] in ".!?_" or len(sentence.split()) <= 5 or k > 0
        return _from_sentence(sentence) if complete else None
    return None


def anchored_answer(text: str) -> str | None:
    """The answer an explicit phrase marks: Minerva's "Final Answer: The final answer is X. I hope it is
    correct", "the answer is X", GSM8K's "#### X", an "Answer:" heading. None when there is none."""
    for pattern in (_MINERVA_RE, _ANSWER_IS_RE, _HASHES_RE):
        hits = pattern.findall(text)
        if hits:
            return _unwrap(hits[-1])
    if _ANCHOR_RE.search(text):
        return _after_anchor(text) or ""  # an anchor followed by nothing readable: no guessing elsewhere
    return None


def extract_answer(response: str, fallbacks: bool = False) -> str | None:
    """The final answer in a full model output; None is a parse failure. fallbacks=True is for evaluation:
    without a box, an anchored answer or else the last sentence's; after a box, only an anchored answer
    that states a number or math ("... \\boxed{255} ... Final Answer: The final answer is $10,455$")."""
    if not isinstance(response, str):
        return None
    if "</think>" in response:
        response = response.rsplit("</think>", 1)[1]  # only the text after reasoning counts
    elif "<think>" in response:
        return None  # reasoning never finished: there is no answer to grade
    if "<|" in response:
        response = _TURN_END_RE.split(response, 1)[0]
    box = _final_box(response)
    answer = box[0] if box else None
    if fallbacks and box:
        later = anchored_answer(response[box[1] :][-MAX_FALLBACK_CHARS:])
        # Only a stated value replaces the box: not "the answer is correct", not "the answer is 5 apples".
        if later and re.search(r"[\d\\]", later) and not re.search(r"(?<![\\A-Za-z])[A-Za-z]{3,}", later):
            answer = later
    elif fallbacks:
        answer = anchored_answer(response[-MAX_FALLBACK_CHARS:])
        if answer is None:
            answer = _last_sentence(response)
    if answer is None or not answer.strip():
        return None
    return answer.strip()


def reference_answer(row: dict) -> str:
    """Gold answer string of one benchmark JSONL row, detecting the format from its fields."""
    if not isinstance(row, dict):
        raise ValueError(f"a benchmark row must be a dict, got {type(row).__name__}")
    if row.get("final_answer") is not None:  # OlympiadBench: list of $-wrapped strings
        parts = row["final_answer"] if isinstance(row["final_answer"], list) else [row["final_answer"]]
        # Multiple answers are joined into one comma list, which the verifier compares as an unordered set.
        gold = ",".join(re.sub(r"(?<!\\)\$", "", str(p)).strip() for p in parts)
        if gold.strip(", "):
            return gold
        raise ValueError(f"row has an empty 'final_answer': {row['final_answer']!r}")
    answer = row.get("answer")
    if isinstance(answer, bool):
        raise ValueError(f"row 'answer' is a boolean ({answer!r}), not a gold answer")
    if isinstance(answer, int):
        return str(answer)
    if isinstance(answer, float):  # AMC23 stores 27.0
        return str(int(answer)) if answer.is_integer() else repr(answer)
    if isinstance(answer, str) and answer.strip():
        if "####" in answer:  # GSM8K: worked solution, then '#### 2,125'
            gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
            if not gold:
                raise ValueError("GSM8K-style row has nothing after '####'")
            return gold
        return answer.strip()
    solution = row.get("solution")
    if isinstance(solution, str) and solution.strip():  # Minerva: the last box of the worked solution
        gold = last_boxed(solution)
        if gold and gold.strip():
            return gold.strip()
        raise ValueError("row has no 'answer' and its 'solution' has no \\boxed{...}")
    raise ValueError(
        "row has no usable reference: expected 'answer', 'final_answer' (OlympiadBench) or a 'solution' "
        f"with \\boxed{{...}} (Minerva); got fields {sorted(row)}"
    )
