"""Alignment of two tokenizations: hand-made offsets for each edge case, then real tokenizers."""

from __future__ import annotations

import pytest

from lmdistill.xtok.align import (
    align_spans,
    align_texts,
    align_token_offsets,
    char_to_byte_offsets,
    tokenize_with_offsets,
)
from lmdistill.xtok.vocab import BYTE_LEVEL, token_to_bytes
from tests.conftest import build_sentencepiece_tokenizer, build_tiny_tokenizer


def test_char_to_byte_offsets_multibyte():
    text = "a€b𝔘"  # 1 + 3 + 1 + 4 bytes
    assert char_to_byte_offsets(text, [(0, 1), (1, 2), (2, 3), (3, 4), (0, 0)]) == [
        (0, 1),
        (1, 4),
        (4, 5),
        (5, 9),
        (0, 0),
    ]
    with pytest.raises(ValueError, match="outside the text"):
        char_to_byte_offsets(text, [(0, 5)])


def test_groups_end_on_common_bytes():
    # "Hello world": A = Hello | ␣world ; B = Hel | lo | ␣ | world
    al = align_token_offsets("Hello world", [(0, 5), (5, 11)], [(0, 3), (3, 5), (5, 6), (6, 11)])
    assert al.groups_a == [(0, 1), (1, 2)]
    assert al.groups_b == [(0, 2), (2, 4)]
    assert al.byte_ends == [5, 11]
    assert al.unaligned_a == al.unaligned_b == []
    assert len(al) == 2 and al.one_to_one == 0


def test_identical_tokenizations_are_one_to_one():
    spans = [(0, 2), (2, 5), (5, 9)]
    al = align_spans(spans, spans)
    assert al.groups_a == al.groups_b == [(0, 1), (1, 2), (2, 3)] and al.one_to_one == 3


def test_bos_and_eos_on_one_side_only():
    # A: <bos> Hello ␣world <eos> (added tokens have empty offsets); B: Hello ␣world
    al = align_token_offsets("Hello world", [(0, 0), (0, 5), (5, 11), (0, 0)], [(0, 5), (5, 11)])
    assert al.groups_a == [(1, 2), (2, 3)] and al.groups_b == [(0, 1), (1, 2)]
    assert al.unaligned_a == [0, 3] and al.unaligned_b == []


def test_special_token_written_in_the_text_aligns_like_text():
    # A treats "<s>" as one special token (it covers 3 characters), B splits it into pieces.
    text = "x<s>y"
    al = align_token_offsets(text, [(0, 1), (1, 4), (4, 5)], [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)])
    assert al.groups_a == [(0, 1), (1, 2), (2, 3)] and al.groups_b == [(0, 1), (1, 4), (4, 5)]


def test_byteless_token_inside_an_open_group_stays_in_it():
    # B has a zero-width token between two pieces of one group: it is part of that token sequence.
    al = align_spans([(0, 4)], [(0, 2), (0, 0), (2, 4)])
    assert al.groups_b == [(0, 3)] and al.unaligned_b == []


def test_multibyte_character_split_differently():
    # "a€b": A byte-fallback pieces <0xE2><0x82><0xAC> (each carries the character's offsets); B: a€ | b
    text = "a€b"
    a = [(0, 1), (1, 2), (1, 2), (1, 2), (2, 3)]
    b = [(0, 2), (2, 3)]
    al = align_token_offsets(text, a, b)
    assert al.byte_ends == [4, 5]
    assert al.groups_a == [(0, 4), (4, 5)] and al.groups_b == [(0, 1), (1, 2)]


def test_identical_byte_splits_group_the_whole_character():
    # Both split € into bytes (differently or not): the pieces share an end, so the character is one group.
    text = "€x"
    a = [(0, 1), (0, 1), (0, 1), (1, 2)]
    b = [(0, 1), (0, 1), (1, 2)]
    al = align_token_offsets(text, a, b)
    assert al.groups_a == [(0, 3), (3, 4)] and al.groups_b == [(0, 2), (2, 3)]


def test_leading_space_conventions():
    # A (byte-level, trimmed offsets): Hello | Ġworld at (6, 11); B (SentencePiece): ▁Hello | ▁world at (5, 11)
    al = align_token_offsets("Hello world", [(0, 5), (6, 11)], [(0, 5), (5, 11)])
    assert al.byte_ends == [5, 11] and al.groups_a == [(0, 1), (1, 2)] and al.groups_b == [(0, 1), (1, 2)]
    # A carries the space at the end of the previous token instead: "Hello␣" | "world"
    al = align_token_offsets("Hello world", [(0, 6), (6, 11)], [(0, 5), (5, 11)])
    assert al.byte_ends == [11] and al.groups_a == [(0, 2)] and al.groups_b == [(0, 2)]


def test_trailing_bytes_on_one_side_are_unaligned():
    al = align_spans([(0, 3), (3, 4)], [(0, 3)])  # B dropped a trailing newline
    assert al.groups_a == [(0, 1)] and al.unaligned_a == [1]


def test_out_of_order_offsets_are_refused():
    with pytest.raises(ValueError, match="left to right"):
        align_spans([(0, 3), (1, 2)], [(0, 3)])


# --- real tokenizers ---------------------------------------------------------------------------------

TEXTS = [
    "Hello world, how are you today?",
    "The café serves crème brûlée for €5 — naïve 𝔘nicode 🙂!",
    "  leading spaces\tand\ttabs\n\nnew lines  ",
    "Alice has 3 apples and buys 2 more.",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    base = tmp_path_factory.mktemp("xtok_tokenizers")
    return {
        "bpe320": build_tiny_tokenizer(base / "a", vocab_size=320),
        "bpe400": build_tiny_tokenizer(base / "b", vocab_size=400),
        "sp": build_sentencepiece_tokenizer(base / "c", lowercase=False),
        "sp_lower": build_sentencepiece_tokenizer(base / "d", lowercase=True),
    }


def check_alignment(text, ids_a, ids_b, al, tok_a=None):
    """Invariants: groups partition each side's byte-covering tokens in order, and cover the same bytes."""
    n_bytes = len(text.encode("utf-8"))
    assert len(al.groups_a) == len(al.groups_b) == len(al.byte_ends)
    assert al.byte_ends == sorted(set(al.byte_ends)) and al.byte_ends[-1] <= n_bytes
    for groups, unaligned, n in (
        (al.groups_a, al.unaligned_a, len(ids_a)),
        (al.groups_b, al.unaligned_b, len(ids_b)),
    ):
        covered = [i for s, e in groups for i in range(s, e)]
        assert covered == sorted(covered) and sorted(covered + unaligned) == list(range(n))
    if tok_a is not None:  # byte-level without normalisation: a group's tokens spell exactly its bytes
        data = text.encode("utf-8")
        starts = [0, *al.byte_ends[:-1]]
        for (s, e), lo, hi in zip(al.groups_a, starts, al.byte_ends, strict=True):
            spelled = b"".join(token_to_bytes(t, BYTE_LEVEL) for t in tok_a.convert_ids_to_tokens(ids_a[s:e]))
            assert spelled == data[lo:hi]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("pair", [("bpe320", "bpe400"), ("bpe320", "sp"), ("bpe400", "sp_lower")])
def test_real_tokenizers(tokenizers, text, pair):
    tok_a, tok_b = tokenizers[pair[0]], tokenizers[pair[1]]
    ids_a, ids_b, al = align_texts(tok_a, tok_b, text)
    check_alignment(text, ids_a, ids_b, al, tok_a)
    # Every byte of the text up to the last non-space character is covered by a group.
    assert al.byte_ends[-1] >= len(text.rstrip().encode("utf-8"))
    if pair[1].startswith("sp"):
        assert ids_b[0] == tok_b.bos_token_id and 0 in al.unaligned_b  # BOS on one side only


def test_byte_fallback_and_normalisation_real(tokenizers):
    text = "ＨELLO €5 🙂"  # a full-width letter NFKC folds, capitals the normaliser lowercases, unseen characters
    ids, _ = tokenize_with_offsets(tokenizers["sp_lower"], text)
    pieces = tokenizers["sp_lower"].convert_ids_to_tokens(ids)
    assert "<0xE2>" in pieces and "h" in "".join(pieces)  # byte fallback for €, lowercased text
    ids_a, ids_b, al = align_texts(tokenizers["bpe320"], tokenizers["sp_lower"], text)
    check_alignment(text, ids_a, ids_b, al, tokenizers["bpe320"])
    assert al.byte_ends[-1] == len(text.encode("utf-8"))


def test_slow_tokenizer_is_refused(tokenizers):
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="fast"):
        tokenize_with_offsets(Slow(), "x")


@pytest.mark.slow
def test_smollm2_and_gemma_tokenizers():
    """The real pair (needs both embedded models converted; Gemma's first conversion takes ~1.5 min)."""
    from lmdistill.models import load_tokenizer
    from lmdistill.xtok.vocab import SENTENCEPIECE, shared_token_ids, token_scheme, vocab_bytes

    smol, gemma = load_tokenizer("smollm2-135m"), load_tokenizer("gemma3-270m")
    assert token_scheme(smol) == BYTE_LEVEL and token_scheme(gemma) == SENTENCEPIECE
    for text in TEXTS:
        ids_s, ids_g, al = align_texts(smol, gemma, text)
        check_alignment(text, ids_s, ids_g, al, smol)
        assert ids_g[0] == gemma.bos_token_id and al.unaligned_b == [0] and al.unaligned_a == []
        assert al.byte_ends[-1] == len(text.encode("utf-8"))
    ids_s, ids_g, al = align_texts(smol, gemma, "naïve 𝔘")
    groups = [
        (smol.convert_ids_to_tokens(ids_s[a:b]), gemma.convert_ids_to_tokens(ids_g[c:d]))
        for (a, b), (c, d) in zip(al.groups_a, al.groups_b, strict=True)
    ]
    assert (
        ["ðĿ", "Ķ", "ĺ"],
        ["<0xF0>", "<0x9D>", "<0x94>", "<0x98>"],
    ) in groups  # split differently, one group
    shared_s, shared_g = shared_token_ids(vocab_bytes(smol), vocab_bytes(gemma))
    assert 40_000 < len(shared_s) < 49_152  # measured 46,145 of SmolLM2's 49,152
    assert (
        gemma.convert_ids_to_tokens(
            int(shared_g[(shared_s == smol.convert_tokens_to_ids("Ġthe")).nonzero()[0, 0]])
        )
        == "▁the"
    )
