"""Pulling a final answer out of free text, and comparing answers.

`extract_answer` tries, in order: an explicit "Answer: X" line (the layout lmdistill asks teachers
for), GSM8K's "#### X", then (for numeric tasks) the last number in the text. Answers are compared
after `normalize_answer`: case, surrounding punctuation and spacing, and number formatting
("1,000", "12.0") do not matter.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable

_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str, *, numeric: bool = False) -> str | None:
    """The answer stated in `text`, or None. With numeric=True, only a number counts."""
    for pattern in (_ANSWER, _HASHES):
        # a match of only spaces ("Answer:   " at the end of a cut answer) states nothing: skipped
        matches = [m.strip() for m in pattern.findall(text) if m.strip()]
        if matches:
            answer = matches[-1].splitlines()[0].strip()
            if numeric:
                number = _NUMBER.search(answer)
                return _clean_number(number.group()) if number else None
            return answer.strip(" .") or None
    if numeric:
        numbers = _NUMBER.findall(text)
        return _clean_number(numbers[-1]) if numbers else None
    return None


def _clean_number(text: str) -> str:
    text = text.replace(",", "")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def normalize_answer(answer: str | None) -> str | None:
    """Lower case, no surrounding punctuation or quotes, single spaces; numbers canonical."""
    if answer is None:
        return None
    a = " ".join(answer.strip().strip(".,;:!?\"'`").lower().split())
    if _NUMBER.fullmatch(a):
        a = _clean_number(a)
    return a or None


def majority(answers: Iterable[str | None]) -> str | None:
    """The most common normalised answer (self-consistency); ties go to the first seen; None if none."""
    counts = Counter(a for a in (normalize_answer(x) for x in answers) if a is not None)
    if not counts:
        return None
    return counts.most_common(1)[0][0]


def parse_json_object(text: str) -> dict | None:
    """The first JSON object in `text` (fenced code or bare), or None if there is none that parses."""
    start = text.find("{")
    while start >= 0:
        depth = 0
        for end in range(start, len(text)):
            if text[end] == "{":
                depth += 1
            elif text[end] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        value = json.loads(text[start : end + 1])
                    except json.JSONDecodeError:
                        break
                    return value if isinstance(value, dict) else None
        start = text.find("{", start + 1)
    return None
