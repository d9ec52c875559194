"""ROUGE-L against hand-computed values, including non-ASCII text."""

from __future__ import annotations

import pytest

from lmdistill.text import rouge_l


def test_rouge_l_hand_computed():
    # LCS("the cat sat", "the cat sat on a mat") = 3; P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    assert rouge_l("the cat sat", "the cat sat on a mat") == pytest.approx(2 / 3)
    # LCS("a b c d", "a c b d") = 3 (a b d or a c d): P = R = 3/4
    assert rouge_l("a b c d", "a c b d") == pytest.approx(0.75)
    assert rouge_l("same words", "Same Words!") == pytest.approx(1.0)
    assert rouge_l("x", "y") == 0.0


def test_rouge_l_keeps_non_ascii():
    assert rouge_l("café crème", "café noir") == pytest.approx(0.5)
    assert rouge_l("我爱猫", "我爱狗") == pytest.approx(2 / 3)  # one word per CJK character
    assert rouge_l("привет мир", "привет мир") == pytest.approx(1.0)
