"""Which tokens two vocabularies share: each token as the bytes it stands for, compared as bytes.

Token strings are spelled differently by convention (byte-level BPE writes a leading space as `Ġ` and
every byte as a printable stand-in; SentencePiece writes `▁` and byte-fallback pieces `<0xE2>`), so
"the same token" means the same BYTES, not the same string. Special and added control tokens stand
for no bytes and are never shared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache

import torch

BYTE_LEVEL = "byte_level"  # GPT-2 style: every byte mapped to a printable character (SmolLM2, Qwen, Llama 3)
SENTENCEPIECE = "sentencepiece"  # ▁ for a space, <0xNN> byte fallback (Gemma, Llama 2, Mistral)

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_to_bytes(token: str, scheme: str) -> bytes | None:
    """The bytes a vocabulary entry stands for under `scheme`; None if it is not decodable that way."""
    if scheme == BYTE_LEVEL:
        table = _byte_level_decoder()
        try:
            return bytes(table[c] for c in token)
        except KeyError:
            return None
    if scheme == SENTENCEPIECE:
        fallback = _BYTE_FALLBACK.match(token)
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        return token.replace("▁", " ").encode("utf-8")
    raise ValueError(f"unknown token scheme {scheme!r}; use {BYTE_LEVEL!r} or {SENTENCEPIECE!r}")


def token_scheme(tokenizer) -> str:
    """BYTE_LEVEL or SENTENCEPIECE, read from the fast tokenizer's decoder."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    kinds = (
        [d.get("type") for d in spec.get("decoders", [])]
        if spec.get("type") == "Sequence"
        else [spec.get("type")]
    )
    if "ByteLevel" in kinds:
        return BYTE_LEVEL
    if (
        "Metaspace" in kinds
        or "ByteFallback" in kinds
        or any(
            d.get("type") == "Replace" and "▁" in json.dumps(d, ensure_ascii=False)
            for d in spec.get("decoders", [])
        )
    ):
        return SENTENCEPIECE
    raise ValueError(f"cannot tell how this tokenizer's tokens map to bytes (decoder {kinds})")


def vocab_bytes(tokenizer, size: int | None = None) -> list[bytes | None]:
    """Per token id < size (default: len(tokenizer)): its bytes, or None for special/control tokens."""
    scheme = token_scheme(tokenizer)
    size = len(tokenizer) if size is None else size
    special = set(tokenizer.all_special_ids)
    special |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    return [None if i in special or t is None else token_to_bytes(t, scheme) for i, t in enumerate(tokens)]


def shared_token_ids(
    bytes_a: Sequence[bytes | None], bytes_b: Sequence[bytes | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of A and of B (int64 [K] each, pairwise the same bytes) for every byte string both have.

    Where a vocabulary spells the same bytes twice (rare), the lowest id is used.
    """
    first_b: dict[bytes, int] = {}
    for i, b in enumerate(bytes_b):
        if b:
            first_b.setdefault(b, i)
    seen: set[bytes] = set()
    ids_a, ids_b = [], []
    for i, b in enumerate(bytes_a):
        if b and b in first_b and b not in seen:
            seen.add(b)
            ids_a.append(i)
            ids_b.append(first_b[b])
    return torch.tensor(ids_a, dtype=torch.long), torch.tensor(ids_b, dtype=torch.long)
