"""Final-answer extraction from model outputs, and gold answers from benchmark rows.

Formats are those of the usual benchmark files (README, "The verifier"): AIME/MATH `answer` strings, AMC float answers,
GSM8K `#### <n>`, Minerva's last box in `solution`, OlympiadBench's `$`-wrapped `final_answer` list.
"""
import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Evaluation-only fallbacks, tried in order when there is no box (the last match in the text wins).
_FALLBACK_RES = [
    re.compile(r"Final Answer: The final answer is (.+?)\. I hope it is correct", re.S),  # Minerva prompt format
    re.compile(r"[Tt]he (?:final )?answer is[:\s]*(.+?)(?:\.\s|\.?$|\n)", re.M),
    re.compile(r"\*{0,2}(?:Final )?Answer\*{0,2}\s*:\*{0,2}\s*(.+?)\s*$", re.M | re.I),
]


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


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (or `\\boxed 5`); None when absent or unbalanced."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    i = starts[-1]
    rest = text[i:].lstrip()
    if rest.startswith("{"):
        return _braced(text, len(text) - len(rest))
    m = re.match(r"[^\s$]+", rest) if text[i : i + 1].isspace() else None  # `\boxed 5$`
    return m.group(0) if m else None


def extract_answer(response: str, fallbacks: bool = False) -> str | None:
    """The final answer in a full model output; None is a parse failure. fallbacks=True is for evaluation."""
    if not isinstance(response, str):
        return None
    if "</think>" in response:
        response = response.rsplit("</think>", 1)[1]  # only the text after reasoning counts
    elif "<think>" in response:
        return None  # reasoning never finished: there is no answer to grade
    answer = last_boxed(response)
    if answer is None and fallbacks:
        for pattern in _FALLBACK_RES:
            hits = pattern.findall(response)
            if hits:
                answer = hits[-1].strip().strip("*").strip()
                answer = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", answer).strip()
                break
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
