"""Reading a scoring server's replies to /v1/completions: the two response forms and the checks every
scored position passes (see `server`'s docstring for the forms and the rules). Pure functions over the
reply's JSON, no client and no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmdistill.chunked import TAIL_FLOOR
from lmdistill.teachers.types import Response

PROMPT_LOGPROBS = "prompt_logprobs"
ECHO = "echo"
#: A log-prob may exceed 0 by this much (float rounding of a token that holds all the mass); read as 0.
LOGPROB_TOLERANCE = 1e-4
#: A position's probabilities (top k and the prompt token's own entry) may sum to 1 + this (rounding).
MASS_TOLERANCE = 1e-3


class BadRow(Exception):
    """What is wrong with one position's entries; the caller says where it was."""


@dataclass(frozen=True)
class Call:
    """One scoring request: a sequence's token ids, the response field asked for, and k."""

    ids: tuple[int, ...]
    mode: str
    k: int
    max_tokens: int = 0


def failed(result) -> str | None:
    """The error of a request that failed after its retries, or None for a reply."""
    return result.error if isinstance(result, Response) else None


def read_logprob(value, label: str) -> float:
    """A reply's log-prob for `label`, checked: a finite number <= 0 (LOGPROB_TOLERANCE allowed, read as 0);
    -inf (cannot occur) is read as TAIL_FLOOR. BadRow otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            what = f"the string {value[:40]!r}"
        else:
            what = "null" if value is None else f"{type(value).__name__} {str(value)[:40]}"
        raise BadRow(f"the log-prob of {label} is {what}, not a number")
    lp = float(value)
    if math.isnan(lp) or lp == math.inf:
        raise BadRow(f"the log-prob of {label} is {lp}, not a finite number")
    if lp > LOGPROB_TOLERANCE:
        raise BadRow(f"the log-prob of {label} is {lp:g}, above 0 (a probability above 1)")
    return TAIL_FLOOR if lp == -math.inf else min(lp, 0.0)


def numbers(entry) -> list[float]:
    """A reply entry's log-prob values that are finite numbers (the rest is `_pairs`' to refuse)."""
    if not isinstance(entry, dict):
        return []
    out = []
    for value in entry.values():
        v = value.get("logprob") if isinstance(value, dict) else value
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def reply_entries(
    choice: dict, mode: str, ids: tuple[int, ...] = ()
) -> tuple[list[dict] | None, list[str | None]]:
    """Per prompt token j, its top log-prob dict (entry 0: {}); and, given the prompt `ids`, the server's
    text of each prompt token (None where it gave none)."""
    if mode == PROMPT_LOGPROBS:
        raw = choice.get("prompt_logprobs")
        if not isinstance(raw, list):
            return None, []
        entries = [e or {} for e in raw]
        texts: list[str | None] = []
        for j, i in enumerate(ids):
            entry = entries[j] if j < len(entries) else None
            value = entry.get(str(i)) if isinstance(entry, dict) else None  # vLLM adds the prompt token
            texts.append(value.get("decoded_token") if isinstance(value, dict) else None)
        return entries, texts
    lp = choice.get("logprobs")
    if not isinstance(lp, dict) or not isinstance(lp.get("top_logprobs"), list):
        return None, []
    tokens = list(lp.get("tokens") or [])
    texts = [tokens[j] if j < len(tokens) else None for j in range(len(ids))]
    return [e or {} for e in lp["top_logprobs"]], texts


def top_count(entry: dict, prompt_id: int) -> int:
    """How many of a position's entries are its top ones: the prompt token's own entry is not counted
    unless its rank (where given) places it before the last."""
    own = entry.get(str(prompt_id))
    if own is None:
        return len(entry)
    rank = own.get("rank") if isinstance(own, dict) else None
    return len(entry) if rank is not None and rank < len(entry) else len(entry) - 1
