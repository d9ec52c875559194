"""Shared vocabulary across tokenizers: tokens compared as the bytes they stand for."""

from __future__ import annotations

import pytest

from lmdistill.xtok.vocab import (
    BYTE_LEVEL,
    SENTENCEPIECE,
    shared_token_ids,
    token_scheme,
    token_to_bytes,
    vocab_bytes,
)
from tests.conftest import build_tiny_tokenizer


def test_token_to_bytes_byte_level():
    assert token_to_bytes("Ġworld", BYTE_LEVEL) == b" world"
    assert token_to_bytes("âĤ¬", BYTE_LEVEL) == "€".encode()
    assert token_to_bytes("Ċ", BYTE_LEVEL) == b"\n"
    assert token_to_bytes("Ã", BYTE_LEVEL) == b"\xc3"  # half of a two-byte character
    assert token_to_bytes("▁x", BYTE_LEVEL) is None  # not a byte-level spelling


def test_token_to_bytes_sentencepiece():
    assert token_to_bytes("▁world", SENTENCEPIECE) == b" world"
    assert token_to_bytes("<0xE2>", SENTENCEPIECE) == b"\xe2"
    assert token_to_bytes("crème", SENTENCEPIECE) == "crème".encode()
    assert token_to_bytes("▁▁", SENTENCEPIECE) == b"  "
    with pytest.raises(ValueError, match="unknown token scheme"):
        token_to_bytes("x", "wordpiece")


def test_shared_token_ids_compares_bytes():
    a = [None, b" the", b"a", b"\xe2", b"zz", b" the"]  # id 5 spells id 1 again: the lowest id wins
    b = [b"a", b"q", b" the", None, b"\xe2"]
    ids_a, ids_b = shared_token_ids(a, b)
    assert ids_a.tolist() == [1, 2, 3] and ids_b.tolist() == [2, 0, 4]


def test_real_tokenizers(tmp_path):
    tok = build_tiny_tokenizer(tmp_path / "t", vocab_size=320)
    assert token_scheme(tok) == BYTE_LEVEL
    table = vocab_bytes(tok)
    assert len(table) == len(tok)
    assert all(table[i] is None for i in tok.all_special_ids)
    ids = tok("Hello world")["input_ids"]
    assert b"".join(table[i] for i in ids) == b"Hello world"
    other = vocab_bytes(build_tiny_tokenizer(tmp_path / "u", vocab_size=300))
    ids_a, ids_b = shared_token_ids(table, other)
    assert all(table[i] == other[j] for i, j in zip(ids_a.tolist(), ids_b.tolist(), strict=True))
    assert len(ids_a) >= 256 + 40  # every byte, plus most of the merges the smaller one learned
