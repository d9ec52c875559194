"""Measurements that compare models across tokenizers: bits per byte, and agreement on byte-aligned spans.

Per-token perplexity is not comparable between tokenizers (a model whose tokens are longer predicts
fewer, harder tokens). What is comparable is how well each model predicts the same BYTES:

- The text is cut into pieces once for all models (`split_text`: at line ends, then spaces, so that
  every model's tokenizer encodes each piece within max_length tokens). Each piece is scored from a
  fresh context: a context token (`context_id`: the BOS the tokenizer adds itself, as Gemma's <bos>;
  else its BOS, else EOS, else pad token), then every token of the piece is predicted.
- bits per byte = sum over pieces of -log2 p(piece's tokens | context) / UTF-8 bytes of the pieces:
  the model's code length for the text, per byte (lower is better). Every byte is counted once for
  every model, whatever its tokenizer.
- Agreement with a teacher on byte-aligned spans (any tokenizer pair, the same one included): each
  piece is tokenized by both models and grouped into spans that end on the same byte
  (`lmdistill.xtok.align`). At the start of each span both models predict the text that follows:
  * top1: the fraction of spans where both models' most likely next tokens spell compatible bytes
    (one's bytes are a prefix of the other's: " Par" and " Paris" agree, " Paris" and " London" do
    not); with one tokenizer this is plain top-1 agreement at those positions;
  * shared_tvd: the mean total variation distance between the two next-token distributions restricted
    to the tokens both vocabularies spell with the same bytes, each renormalised (0 = the same
    distribution over those tokens); shared_mass: the teacher's mean probability on those tokens
    (how much of it the comparison sees).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from lmdistill.chunked import Head
from lmdistill.errors import UserError
from lmdistill.models.forward import final_hidden
from lmdistill.models.vocab import checked_vocab_size
from lmdistill.xtok.align import align_token_offsets, tokenize_with_offsets
from lmdistill.xtok.losses import group_tensors

LN2 = math.log(2.0)


def _fits(piece: str, tokenizers: Sequence, max_tokens: int) -> bool:
    return all(len(tok(piece, add_special_tokens=False)["input_ids"]) <= max_tokens - 1 for tok in tokenizers)


def split_text(text: str, tokenizers: Sequence, max_length: int) -> list[str]:
    """Cut `text` into consecutive pieces (joined, they give `text` back) that every tokenizer encodes in
    at most max_length - 1 tokens (one position is the context token). Cuts at line ends where it can,
    then after whitespace, then between characters. Pieces of whitespace only are kept (their bytes count)."""
    if max_length < 2:
        raise UserError(f"max_length must be at least 2, got {max_length}")
    pieces: list[str] = []
    current = ""
    for unit in _units(text, tokenizers, max_length):
        if current and not _fits(current + unit, tokenizers, max_length):
            pieces.append(current)
            current = ""
        current += unit
    if current:
        pieces.append(current)
    if not any(p.strip() for p in pieces):
        raise UserError("the text is empty")
    return pieces


def _units(text: str, tokenizers: Sequence, max_length: int):
    """Lines; a line too long for max_length splits after whitespace, a word too long into characters."""
    for line in text.splitlines(keepends=True):
        if _fits(line, tokenizers, max_length):
            yield line
            continue
        for word in re.findall(r"\S*\s*", line):
            if not word:
                continue
            if _fits(word, tokenizers, max_length):
                yield word
            else:
                yield from word  # one character always fits: max_length >= 2


def context_id(tokenizer) -> int:
    """The token every piece is scored after (module docstring); UserError when the tokenizer has none."""
    added = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(added) > len(plain) and added[-len(plain) :] == plain:
        return int(added[0])
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if tid is not None:
            return int(tid)
    raise UserError("bits per byte: the tokenizer has no BOS, EOS or pad token to start each piece from")


def encode_piece(tokenizer, piece: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, character offsets) of the context token then the piece's tokens; the context covers no text."""
    ids, offsets = tokenize_with_offsets(tokenizer, piece, add_special_tokens=False)
    return [context_id(tokenizer), *ids], [(0, 0), *offsets]


@dataclass
class ByteScores:
    """bits: total -log2 p over the text; bytes: its UTF-8 bytes; tokens: predicted tokens;
    bits_per_byte = bits / bytes; bits_per_token = bits / tokens (NOT comparable across tokenizers)."""

    bits: float
    bytes: int
    tokens: int

    @property
    def bits_per_byte(self) -> float:
        return self.bits / self.bytes

    @property
    def bits_per_token(self) -> float:
        return self.bits / self.tokens

    def as_dict(self) -> dict:
        return {**asdict(self), "bits_per_byte": self.bits_per_byte, "bits_per_token": self.bits_per_token}


def _hidden_states(model, encoded: list[list[int]], batch_size: int) -> list[torch.Tensor]:
    """[L_i, H] final hidden states of each sequence (batched, right-padded; padding never reaches a real row)."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for b in range(0, len(encoded), batch_size):
        rows = encoded[b : b + batch_size]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        hidden = final_hidden(model, ids.to(device), mask.to(device))
        out += [hidden[i, : len(r)] for i, r in enumerate(rows)]
    return out


@torch.no_grad()
def bits_per_byte(
    model, tokenizer, pieces: Sequence[str], *, batch_size: int = 8, chunk_size: int = 128
) -> tuple[ByteScores, list[torch.Tensor]]:
    """Score every piece (module docstring); returns the scores and each piece's final hidden states
    [L_i, H] (context token first), which `span_agreement` reuses for a teacher."""
    vocab = checked_vocab_size(tokenizer, model)
    head = Head.of(model, trainable=False)
    encoded = [encode_piece(tokenizer, p)[0] for p in pieces]
    hidden = _hidden_states(model, encoded, batch_size)
    nats, tokens = 0.0, 0
    for ids, h in zip(encoded, hidden, strict=True):
        targets = torch.tensor(ids[1:], device=h.device)
        for c in range(0, len(targets), chunk_size):
            logits = head.logits(h[c : c + chunk_size][: len(targets) - c], vocab).double()
            nll = torch.logsumexp(logits, -1) - logits.gather(1, targets[c : c + chunk_size, None])[:, 0]
            nats += float(nll.sum())
        tokens += len(targets)
    n_bytes = sum(len(p.encode("utf-8")) for p in pieces)
    return ByteScores(nats / LN2, n_bytes, tokens), hidden


@dataclass
class SpanAgreement:
    """Means over `spans` byte-aligned spans (module docstring)."""

    top1: float
    shared_tvd: float
    shared_mass: float
    spans: int

    def as_dict(self) -> dict:
        return asdict(self)


def _compatible(a: bytes | None, b: bytes | None) -> bool:
    if a is None or b is None:  # a special token (EOS) on either side: agree only if both
        return a is None and b is None
    return a.startswith(b) or b.startswith(a)


@torch.no_grad()
def span_agreement(
    model,
    tokenizer,
    teacher,
    teacher_tokenizer,
    pieces: Sequence[str],
    *,
    teacher_hidden: Sequence[torch.Tensor] | None = None,
    batch_size: int = 8,
    tables: tuple | None = None,
) -> SpanAgreement:
    """Agreement of `model` with `teacher` on the byte-aligned spans of `pieces` (module docstring).

    teacher_hidden: the teacher's hidden states per piece from `bits_per_byte` (recomputed when None).
    tables: (model bytes per id, teacher bytes per id, (model ids [K], teacher ids [K]) shared), from
    `byte_tables`, to reuse across models.
    """
    s_vocab, t_vocab = checked_vocab_size(tokenizer, model), checked_vocab_size(teacher_tokenizer, teacher)
    s_bytes, t_bytes, (shared_s, shared_t) = tables or byte_tables(
        tokenizer, teacher_tokenizer, s_vocab, t_vocab
    )
    s_head, t_head = Head.of(model, trainable=False), Head.of(teacher, trainable=False)
    s_enc = [encode_piece(tokenizer, p) for p in pieces]
    t_enc = [encode_piece(teacher_tokenizer, p) for p in pieces]
    s_hidden = _hidden_states(model, [ids for ids, _ in s_enc], batch_size)
    if teacher_hidden is None:
        teacher_hidden = _hidden_states(teacher, [ids for ids, _ in t_enc], batch_size)
    agree, tvd_sum, mass_sum, spans = 0, 0.0, 0.0, 0
    for piece, (_, s_off), (_, t_off), sh, th in zip(
        pieces, s_enc, t_enc, s_hidden, teacher_hidden, strict=True
    ):
        g_s, g_t = group_tensors(align_token_offsets(piece, s_off, t_off))
        if not len(g_s):
            continue
        s_logp = torch.log_softmax(s_head.logits(sh[g_s[:, 0] - 1], s_vocab).float(), -1)  # [G, Vs]
        t_logp = torch.log_softmax(t_head.logits(th[g_t[:, 0] - 1], t_vocab).float(), -1)  # [G, Vt]
        for a, b in zip(s_logp.argmax(-1).tolist(), t_logp.argmax(-1).tolist(), strict=True):
            agree += _compatible(s_bytes[a], t_bytes[b])
        s_k = s_logp[:, shared_s.to(s_logp.device)]
        t_k = t_logp[:, shared_t.to(t_logp.device)]
        mass_sum += float(t_k.exp().sum(-1).sum())
        p, q = torch.softmax(t_k, -1), torch.softmax(s_k, -1)  # renormalised over the shared tokens
        tvd_sum += float(0.5 * (p - q).abs().sum(-1).sum())
        spans += len(g_s)
    if spans == 0:
        raise UserError("span agreement: the text has no span both tokenizers end on")
    return SpanAgreement(agree / spans, tvd_sum / spans, mass_sum / spans, spans)


def byte_tables(tokenizer, teacher_tokenizer, vocab: int, teacher_vocab: int):
    """(model bytes per id, teacher bytes per id, shared (model ids, teacher ids)) for `span_agreement`."""
    from lmdistill.xtok.vocab import shared_token_ids, vocab_bytes

    try:
        s_bytes, t_bytes = vocab_bytes(tokenizer, vocab), vocab_bytes(teacher_tokenizer, teacher_vocab)
    except ValueError as exc:
        raise UserError(f"span agreement: {exc}") from None
    return s_bytes, t_bytes, shared_token_ids(s_bytes, t_bytes)


def byte_metrics(
    row: dict, model, tokenizer, pieces: Sequence[str], reference, *, batch_size: int, log
) -> list:
    """`lmdistill eval`'s column for one model: bits per byte, and span agreement with the teacher
    (`reference`: its model, tokenizer and `text_hidden`) when there is one and this is not it.

    Fills row["bits_per_byte"] (`ByteScores.as_dict`) and row["span_agreement"]; returns the model's
    hidden states per piece (kept for the teacher, which is evaluated first)."""
    log(f"eval: {row['label']}: bits per byte on {len(pieces)} text pieces")
    scores, hidden = bits_per_byte(model, tokenizer, pieces, batch_size=batch_size)
    row["bits_per_byte"] = scores.as_dict()
    if reference is not None:
        log(f"eval: {row['label']}: agreement with the teacher on byte-aligned spans")
        row["span_agreement"] = span_agreement(
            model,
            tokenizer,
            reference.model,
            reference.tokenizer,
            pieces,
            teacher_hidden=reference.text_hidden,
            batch_size=batch_size,
        ).as_dict()
    return hidden
