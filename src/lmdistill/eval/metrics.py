"""The numbers of an evaluation report that are plain arithmetic over texts or other numbers.

Perplexity, top-1 agreement and KL to the teacher come from one pass over the models:
`lmdistill.eval.scoring.score_tokens`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from lmdistill.data import IGNORE_INDEX
from lmdistill.errors import UserError
from lmdistill.io import read_text as read_utf8
from lmdistill.text import rouge_l


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default);
    None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def compression_ratio(teacher_params: int | None, params: int | None) -> float | None:
    """How many times fewer parameters than the teacher (teacher params / model params)."""
    if not teacher_params or not params:
        return None
    return teacher_params / params


def speedup(tokens_per_s: float | None, teacher_tokens_per_s: float | None) -> float | None:
    """How many times faster than the teacher at generation (model tokens/s / teacher tokens/s)."""
    if not tokens_per_s or not teacher_tokens_per_s:
        return None
    return tokens_per_s / teacher_tokens_per_s


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    text = read_utf8(path)  # not UTF-8: a UserError naming the line
    if not text.strip():
        raise UserError(f"text file {path} is empty")
    return text


def text_features(text: str, tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenize `text` once (no special tokens) and cut it into chunks of `max_length` tokens.

    Every token is a target except each chunk's first (nothing predicts it); a last chunk of a
    single token has no target and is dropped.
    """
    if max_length < 2:
        raise UserError(f"max_length must be at least 2, got {max_length}")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    features = []
    for start in range(0, len(ids), max_length):
        chunk = ids[start : start + max_length]
        if len(chunk) < 2:
            continue
        features.append(
            {"input_ids": chunk, "labels": [IGNORE_INDEX, *chunk[1:]], "attention_mask": [1] * len(chunk)}
        )
    if not features:
        raise UserError("the text is too short: it needs at least 2 tokens")
    return features


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def generation_agreement(outputs: Sequence[str], teacher_outputs: Sequence[str]) -> dict:
    """Exact-match rate (whitespace-insensitive) and mean ROUGE-L F1 between two lists of generations."""
    if len(outputs) != len(teacher_outputs):
        raise ValueError(f"{len(outputs)} outputs vs {len(teacher_outputs)} teacher outputs")
    n = len(outputs)
    if n == 0:
        return {"exact_match": None, "rouge_l": None, "examples": 0}
    exact = sum(_same(a, b) for a, b in zip(outputs, teacher_outputs, strict=True))
    rouge = sum(rouge_l(a, b) for a, b in zip(outputs, teacher_outputs, strict=True))
    return {"exact_match": exact / n, "rouge_l": rouge / n, "examples": n}
