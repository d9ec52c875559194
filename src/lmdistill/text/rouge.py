"""ROUGE-L F1 with the standard `rouge-score` package and a tokenizer that keeps non-ASCII text.

rouge-score's default tokenizer lower-cases and drops every character outside [a-z0-9], so two
Chinese or accented sentences would both become empty. Here words are runs of Unicode letters or
digits (`\\w+`), lower-cased; each CJK character counts as a word of its own.
"""

from __future__ import annotations

import re
from functools import lru_cache

_WORD = re.compile(r"[\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+", re.UNICODE)


class _UnicodeTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


@lru_cache(maxsize=1)
def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        from lmdistill.errors import UserError

        raise UserError("ROUGE-L needs the rouge-score package: pip install rouge-score") from None
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeTokenizer())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1] between two texts (symmetric)."""
    return _scorer().score(reference, prediction)["rougeL"].fmeasure
