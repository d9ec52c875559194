"""Output checkers, named by short spec strings so `lmdistill eval` rows can carry them.

========================  ======================================================================
spec                      an output passes when
========================  ======================================================================
``numeric``               its number ("Answer: X", "#### X", else the last number) equals the gold
``exact``                 its answer ("Answer: X", else the whole output) equals the gold,
                          after `normalize_answer`
``label:a,b,c``           the label it names (after "Answer:", else the first label named in it,
                          whole words: `choice_in`) is the gold label
``one_word``              stripped of surrounding spaces, quotes, punctuation and markdown, it is
                          exactly one word (letters/digits, inner hyphens or apostrophes allowed)
``json:k1,k2``            it contains a JSON object (`parse_json_object`) whose keys are exactly
                          {k1, k2}
========================  ======================================================================

For the two format checks the gold content is a separate question: `matches_gold` says whether the
word is the gold word (or one of meta["aliases"]) and whether the JSON values equal the gold values
in meta["values"] (a None value is not computable and not compared).
"""

from __future__ import annotations

import json
import re
from typing import Any

from lmdistill.text import extract_answer, normalize_answer, parse_json_object

KINDS = ("numeric", "exact", "label", "one_word", "json")

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_SURROUND = " \t\r\n.,;:!?\"'`*_()[]{}<>“”‘’"


def _split_spec(spec: str) -> tuple[str, list[str]]:
    kind, _, args = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown check {spec!r}; known: {', '.join(KINDS)}")
    return kind, [a.strip() for a in args.split(",") if a.strip()]


_LABEL_PREFIX = re.compile(r"^\s*(?:a|answer)\s*:\s*", re.IGNORECASE)


def one_word(output: str) -> str | None:
    """The single word an output consists of (surrounding punctuation and a leading "A:" or "Answer:"
    label removed: the label is the layout's, not part of the answer), else None."""
    word = _LABEL_PREFIX.sub("", output.strip(), count=1).strip().strip(_SURROUND)
    return word if _WORD.fullmatch(word) else None


def label_in(output: str, labels: list[str]) -> str | None:
    """The label an output names (`choice_in` without letters): in its "Answer:" part if it has one,
    else the first label named anywhere in it (whole words, any case); None if it names none."""
    return choice_in(output, labels)


def choice_in(output: str, choices, *, letters: bool = False) -> str | None:
    """The option an output names, by the one rule set every scorer uses (labels here, multiple
    choice in `lmdistill eval`): first in its "Answer:" part if it has one, then in the whole output;
    in each, with `letters` (options shown as A., B., ...) a leading letter or option ("B", "B.
    negative"), then the option named first as whole words, any case ("nonpositive" does not name
    "positive"); None if it names none."""
    stated = extract_answer(output)
    for text in (stated, output) if stated else (output,):
        words = text.split()
        if letters and words:
            picked = choice_of(words[0].rstrip(".):"), choices)
            if picked is not None:
                return picked
        picked = _first_named(text, choices)
        if picked is not None:
            return picked
    return None


def choice_of(text: str, choices) -> str | None:
    """The option `text` is: a letter (A, B, ...) or an option's text, compared normalised."""
    t = normalize_answer(text)
    if t is None:
        return None
    if len(t) == 1 and "a" <= t <= chr(96 + len(choices)):
        return choices[ord(t) - 97]
    return next((c for c in choices if normalize_answer(c) == t), None)


def _first_named(text: str, choices) -> str | None:
    """The option whose words appear first in `text` (whole words, any case, any spacing); at the
    same place the longer option wins ("not positive" over "positive")."""
    lower = " ".join(text.lower().split())
    found = []
    for choice in choices:
        name = " ".join(choice.lower().split())
        m = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", lower) if name else None
        if m is not None:
            found.append((m.start(), -len(name), choice))
    return min(found)[2] if found else None


def json_in(output: str) -> dict | None:
    """The first JSON object in an output, or None."""
    return parse_json_object(output)


def extract(spec: str, output: str) -> str | None:
    """What a checker reads from `output`: the number, the answer, the label, the word, or the
    JSON object (re-serialised with sorted keys); None when there is nothing to read."""
    kind, args = _split_spec(spec)
    if kind == "numeric":
        return extract_answer(output, numeric=True)
    if kind == "exact":
        stated = extract_answer(output)
        return stated if stated is not None else (output.strip() or None)
    if kind == "label":
        return label_in(output, args)
    if kind == "one_word":
        return one_word(output)
    obj = json_in(output)
    return None if obj is None else json.dumps(obj, sort_keys=True, ensure_ascii=False)


def check_output(spec: str, output: str, gold: str | None) -> bool:
    """Whether `output` passes the check `spec` (see the module doc); `gold` is the gold answer."""
    kind, args = _split_spec(spec)
    if kind == "one_word":
        return one_word(output) is not None
    if kind == "json":
        obj = json_in(output)
        return obj is not None and set(obj) == set(args)
    got = extract(spec, output)
    if kind == "label":
        return got is not None and gold is not None and got.lower() == gold.lower()
    expected = normalize_answer(gold)
    return expected is not None and normalize_answer(got) == expected


def _same(value: Any, gold: Any) -> bool:
    return normalize_answer(str(value)) == normalize_answer(str(gold))


def matches_gold(spec: str, output: str, example: Any) -> bool | None:
    """Whether the content of `output` is the gold content (`example` has .answer and .meta).

    For numeric/exact/label checks this is `check_output`. For one_word: the word is the gold word
    or an alias. For json: every computable gold value (meta["values"]) is equal; None when the
    example has no computable value."""
    kind, _ = _split_spec(spec)
    meta = getattr(example, "meta", {}) or {}
    if kind == "one_word":
        word = one_word(output)
        golds = [example.answer, *meta.get("aliases", ())]
        return word is not None and any(_same(word, g) for g in golds)
    if kind == "json":
        values = {k: v for k, v in meta.get("values", {}).items() if v is not None}
        if not values:
            return None
        obj = json_in(output)
        return obj is not None and all(k in obj and _same(obj[k], v) for k, v in values.items())
    return check_output(spec, output, example.answer)
