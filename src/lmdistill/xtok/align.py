"""Alignment of two tokenizations of one text: pure functions over offsets and bytes, no models.

Each tokenizer tokenizes the same text. Every token is mapped to the UTF-8 byte span of the
ORIGINAL text it covers (from the fast tokenizer's character offsets, which point into the original
text even when the tokenizer normalises it). Tokens are then grouped GOLD-style: a group boundary is
a byte position where a token of A ends AND a token of B ends; group g holds the tokens of each side
whose spans end in (boundary[g-1], boundary[g]]. Both sides of a group cover the same bytes, so the
probability each model gives to a group's text is comparable.

Rules, each tested in tests/xtok/test_align.py:
- Tokens that cover no bytes (empty offsets: BOS/EOS and other special tokens a post-processor adds,
  on one side or both) belong to no group and are reported in `unaligned_a` / `unaligned_b`.
- A multi-byte character split into several tokens (byte-fallback `<0xE2>` pieces, or byte-level
  BPE pieces) gets the character's whole span on every piece (that is what the offsets say), so the
  pieces share one end and always fall into one group. Identical splits on both sides are grouped no
  finer than the character: coarser, never wrong.
- Leading-space conventions (`Ġworld`, `▁world`, trimmed offsets that leave the space out, or a
  space carried at the end of the previous token) only move where tokens end; the boundaries where
  both end still agree on the same bytes.
- Normalisation (NFKC, lowercasing, ...) changes the token strings, not the offsets into the
  original text, so alignment is unaffected.
- Trailing tokens after the last common boundary (bytes only one side covers) are unaligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]


@dataclass(frozen=True)
class Alignment:
    """Groups of consecutive tokens of A and of B that cover the same bytes.

    groups_a[g] = (start, end): token indices [start, end) of A in group g (end exclusive), never
    empty; likewise groups_b. byte_ends[g]: the byte (exclusive) where group g ends; group g covers
    bytes [byte_ends[g-1], byte_ends[g]) (from 0 for g = 0) of the text. unaligned_a/_b: token indices
    in no group (no bytes, or after the last common boundary).
    """

    groups_a: list[Span]
    groups_b: list[Span]
    byte_ends: list[int]
    unaligned_a: list[int]
    unaligned_b: list[int]

    def __len__(self) -> int:
        return len(self.byte_ends)

    @property
    def one_to_one(self) -> int:
        """Number of groups with exactly one token on each side."""
        return sum(
            ea - sa == 1 and eb - sb == 1
            for (sa, ea), (sb, eb) in zip(self.groups_a, self.groups_b, strict=True)
        )


def char_to_byte_offsets(text: str, offsets: Sequence[Span]) -> list[Span]:
    """Character offsets [start, end) into `text` (what HF fast tokenizers return) -> UTF-8 byte offsets."""
    byte_at = [0] * (len(text) + 1)
    for i, ch in enumerate(text):
        byte_at[i + 1] = byte_at[i] + len(ch.encode("utf-8", "surrogatepass"))
    out = []
    for s, e in offsets:
        if not 0 <= s <= e <= len(text):
            raise ValueError(f"offset ({s}, {e}) is outside the text ({len(text)} characters)")
        out.append((byte_at[s], byte_at[e]))
    return out


def _token_ends(spans: Sequence[Span], side: str) -> list[int | None]:
    """End byte of each token, None for a token covering no bytes; checks the spans run left to right."""
    ends: list[int | None] = []
    last_start = last_end = 0
    for i, (s, e) in enumerate(spans):
        if e <= s:
            ends.append(None)
            continue
        if s < last_start or e < last_end:
            raise ValueError(
                f"tokenization {side}: token {i} spans bytes [{s}, {e}) but an earlier token reached "
                f"[{last_start}, {last_end}); offsets must run left to right"
            )
        last_start, last_end = s, e
        ends.append(e)
    return ends


def align_spans(spans_a: Sequence[Span], spans_b: Sequence[Span]) -> Alignment:
    """Group two tokenizations of the same bytes (byte spans [start, end) per token) at common ends."""
    ends_a, ends_b = _token_ends(spans_a, "A"), _token_ends(spans_b, "B")
    common = sorted({e for e in ends_a if e is not None} & {e for e in ends_b if e is not None})
    groups_a, unaligned_a = _groups(ends_a, common)
    groups_b, unaligned_b = _groups(ends_b, common)
    return Alignment(groups_a, groups_b, common, unaligned_a, unaligned_b)


def _groups(ends: list[int | None], boundaries: list[int]) -> tuple[list[Span], list[int]]:
    """Token index ranges [start, end) per boundary, and the indices of tokens in no group.

    A byteless token while a group is open (a special token between two pieces of one group's text)
    stays in that group's range: the group's probability is that of the whole token sequence, it
    included. Byteless tokens outside any group (a leading BOS, a trailing EOS) are unaligned.
    """
    # Pieces of one split character share an end: a group closes at the LAST token with its end.
    next_end: list[int | None] = [None] * len(ends)
    following: int | None = None
    for i in range(len(ends) - 1, -1, -1):
        next_end[i] = following
        if ends[i] is not None:
            following = ends[i]
    groups: list[Span] = []
    unaligned: list[int] = []
    g = 0
    start: int | None = None
    for i, e in enumerate(ends):
        if g == len(boundaries):
            unaligned.append(i)  # after the last common boundary
            continue
        if e is None:
            if start is None:
                unaligned.append(i)
            continue
        if start is None:
            start = i
        if e == boundaries[g] and next_end[i] != e:
            groups.append((start, i + 1))
            start, g = None, g + 1
    return groups, unaligned


def align_token_offsets(text: str, offsets_a: Sequence[Span], offsets_b: Sequence[Span]) -> Alignment:
    """Align two tokenizations of `text` given each token's character offsets (empty for special tokens)."""
    return align_spans(char_to_byte_offsets(text, offsets_a), char_to_byte_offsets(text, offsets_b))


def tokenize_with_offsets(
    tokenizer, text: str, *, add_special_tokens: bool = True
) -> tuple[list[int], list[Span]]:
    """(ids, character offsets) from a fast HF tokenizer; tokens its post-processor adds (BOS, EOS) get (0, 0).

    Special tokens written in the text itself keep their offsets: they cover those characters.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("cross-tokenizer alignment needs a fast (Rust) tokenizer for character offsets")
    enc = tokenizer(
        text,
        add_special_tokens=add_special_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    offsets = [
        (0, 0) if added else (s, e)
        for (s, e), added in zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True)
    ]
    return list(enc["input_ids"]), offsets


def align_texts(tokenizer_a, tokenizer_b, text: str, *, add_special_tokens: bool = True):
    """Tokenize `text` with both tokenizers and align: (ids_a, ids_b, Alignment)."""
    ids_a, off_a = tokenize_with_offsets(tokenizer_a, text, add_special_tokens=add_special_tokens)
    ids_b, off_b = tokenize_with_offsets(tokenizer_b, text, add_special_tokens=add_special_tokens)
    return ids_a, ids_b, align_token_offsets(text, off_a, off_b)
