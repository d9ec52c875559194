"""Bits per byte and byte-aligned span agreement: against hand computations, then through `lmdistill eval`."""

from __future__ import annotations

import math

import pytest
import torch

from lmdistill.errors import UserError
from lmdistill.eval import run_eval
from lmdistill.eval.bits_per_byte import (
    _compatible,
    bits_per_byte,
    context_id,
    span_agreement,
    split_text,
)
from tests.conftest import build_sentencepiece_tokenizer, build_tiny_tokenizer, make_tiny_llama

TEXT = (
    "Hello world, how are you today? I am fine, thank you very much.\n"
    "The cat sat on the mat and the dog slept by the door. Crème brûlée costs €5 🙂.\n"
    "Distillation trains a small student to imitate a large teacher.\n"
) * 2


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    base = tmp_path_factory.mktemp("bpb")
    return build_tiny_tokenizer(base / "a", vocab_size=320), build_sentencepiece_tokenizer(
        base / "b", lowercase=False
    )


def test_split_text_gives_the_text_back_in_pieces_every_tokenizer_fits(toks):
    pieces = split_text(TEXT, toks, 16)
    assert "".join(pieces) == TEXT and len(pieces) > 6
    for tok in toks:
        assert all(len(tok(p, add_special_tokens=False)["input_ids"]) <= 15 for p in pieces)
    assert split_text("short\n", toks, 64) == ["short\n"]
    with pytest.raises(UserError, match="the text is empty"):
        split_text(" \n\n", toks, 64)


def test_context_token(toks):
    byte_level, sentencepiece = toks
    assert context_id(sentencepiece) == sentencepiece.convert_tokens_to_ids("<bos>")  # added by the tokenizer
    assert context_id(byte_level) == byte_level.bos_token_id  # not added: its BOS


def test_uniform_model_is_log2_vocab_bits_per_token(toks):
    """Hand computation: a model whose head is zero predicts uniformly, so each token costs log2(V) bits."""
    tok = toks[0]
    model = make_tiny_llama(len(tok), seed=3).eval()
    torch.nn.init.zeros_(model.lm_head.weight)
    pieces = split_text(TEXT, [tok], 24)
    scores, _ = bits_per_byte(model, tok, pieces, batch_size=3)
    n_tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in pieces)
    assert scores.tokens == n_tokens and scores.bytes == len(TEXT.encode("utf-8"))
    assert scores.bits == pytest.approx(n_tokens * math.log2(len(tok)), rel=1e-6)
    assert scores.bits_per_byte == pytest.approx(
        n_tokens * math.log2(len(tok)) / len(TEXT.encode()), rel=1e-6
    )


def test_bits_per_byte_matches_full_logits_in_float64(toks):
    tok = toks[1]
    model = make_tiny_llama(len(tok), seed=4).eval()
    pieces = split_text(TEXT, [tok], 20)
    scores, hidden = bits_per_byte(model, tok, pieces, batch_size=4)
    nats = 0.0
    for p in pieces:  # one piece at a time, no padding, the model's own logits
        ids = torch.tensor([[context_id(tok), *tok(p, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        nats -= float(logp[:-1].gather(1, ids[0, 1:, None]).sum())
    assert scores.bits == pytest.approx(nats / math.log(2), rel=1e-5)
    assert len(hidden) == len(pieces)


def test_span_agreement_with_itself_and_across_tokenizers(toks):
    tok_a, tok_b = toks
    model_a = make_tiny_llama(len(tok_a), seed=5).eval()
    pieces = split_text(TEXT, toks, 24)
    same = span_agreement(model_a, tok_a, model_a, tok_a, pieces)
    assert same.top1 == 1.0 and same.shared_tvd == pytest.approx(0.0, abs=1e-6) and same.spans > 20
    model_b = make_tiny_llama(len(tok_b), seed=6).eval()
    other = span_agreement(model_a, tok_a, model_b, tok_b, pieces)
    assert 0.0 <= other.top1 <= 1.0 and 0.0 < other.shared_tvd < 1.0 and 0.0 < other.shared_mass <= 1.0
    assert other.spans < same.spans  # coarser spans where the tokenizations differ


def test_compatible_bytes():
    assert _compatible(b" Par", b" Paris") and _compatible(b" Paris", b" Par")
    assert not _compatible(b" Paris", b" London") and not _compatible(None, b"a")
    assert _compatible(None, None)


def test_eval_reports_bits_per_byte_for_every_model(tmp_path, toks, tiny_model_dirs):
    teacher, _ = tiny_model_dirs  # one tokenizer; a third model has another
    student = tmp_path / "student"  # the teacher with a noisy head: it agrees on some spans, not all
    from transformers import AutoModelForCausalLM, AutoTokenizer

    near = AutoModelForCausalLM.from_pretrained(teacher)
    torch.manual_seed(0)
    with torch.no_grad():
        near.lm_head.weight.add_(torch.randn_like(near.lm_head.weight) * near.lm_head.weight.std())
    near.save_pretrained(student)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(student)
    other = tmp_path / "other"
    tok = build_sentencepiece_tokenizer(other, lowercase=False)
    make_tiny_llama(len(tok), seed=7).save_pretrained(other)
    text = tmp_path / "heldout.txt"
    text.write_text(TEXT)
    results = run_eval(
        [str(student), str(other)],
        teacher=str(teacher),
        text=str(text),
        output_dir=str(tmp_path / "out"),
        max_length=24,
        batch_size=4,
        measure_memory=False,
        log=lambda *_: None,
    )
    rows = results["models"]
    assert [r["role"] for r in rows] == ["teacher", "model", "model"]
    assert rows[0]["span_agreement"] is None
    assert rows[1]["agreement"] is not None and rows[2]["agreement"] is None  # per-token: same tokenizer only
    # Every figure recomputed the hard way from the saved models: the text cut for all three
    # tokenizers, each piece scored alone after the tokenizer's BOS, every logit in float64.
    folders = [teacher, student, other]
    models = [AutoModelForCausalLM.from_pretrained(f).eval() for f in folders]
    tokenizers = [AutoTokenizer.from_pretrained(f) for f in folders]
    pieces = split_text(TEXT, tokenizers, 24)
    n_bytes = len(TEXT.encode("utf-8"))
    logps = []
    for row, model, tok in zip(rows, models, tokenizers, strict=True):
        nats, tokens, per_piece = 0.0, 0, []
        for piece in pieces:
            ids = torch.tensor([[tok.bos_token_id, *tok(piece, add_special_tokens=False)["input_ids"]]])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            nats -= float(logp.gather(1, ids[0, 1:, None]).sum())
            tokens += ids.shape[1] - 1
            per_piece.append(logp)
        logps.append(per_piece)
        bpb = row["bits_per_byte"]
        assert bpb["bytes"] == n_bytes and bpb["tokens"] == tokens
        assert bpb["bits"] == pytest.approx(nats / math.log(2), rel=1e-5)
        assert bpb["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    # The student shares the teacher's byte-level tokenizer: a span is one token, or the few tokens
    # that spell one multi-byte character between them (a span ends where a character does). At its
    # first token both models predict; they agree when the two argmax tokens spell bytes one of which
    # starts the other.
    spell = _byte_level_spelling(tokenizers[0])
    agree = total = prefix = 0
    for piece, s_logp, t_logp in zip(pieces, logps[1], logps[0], strict=True):
        ids = tokenizers[0](piece, add_special_tokens=False)["input_ids"]
        text, spelt, starts = piece.encode("utf-8"), b"", [0]
        for j, i in enumerate(ids[:-1]):
            spelt += spell(i)
            if text[len(spelt)] & 0xC0 != 0x80:  # the next byte starts a character
                starts.append(j + 1)
        for j in starts:
            x, y = spell(int(s_logp[j].argmax())), spell(int(t_logp[j].argmax()))
            prefix += x is not None and y is not None and x != y and (x.startswith(y) or y.startswith(x))
            agree += (x is None and y is None) or (
                x is not None and y is not None and (x.startswith(y) or y.startswith(x))
            )
            total += 1
    span = rows[1]["span_agreement"]
    assert span["spans"] == total < rows[1]["bits_per_byte"]["tokens"]
    assert span["top1"] == pytest.approx(agree / total, abs=1e-12)
    assert 0 < prefix < agree < total  # some agreements are by prefix only: that rule is exercised
    assert rows[2]["span_agreement"]["spans"] < total  # another tokenizer: coarser spans
    report = (tmp_path / "out" / "report.md").read_text()
    assert "bits per byte (text) †" in report and "span top-1 agreement, byte-aligned †" in report
    assert "† comparable across tokenizers" in report


def _byte_level_spelling(tok):
    """id -> the bytes a byte-level BPE token spells (GPT-2's byte-to-character table, built here), or
    None for a special token."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    char_to_byte = {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}
    special = set(tok.all_special_ids)

    def spell(i: int) -> bytes | None:
        return None if i in special else bytes(char_to_byte[c] for c in tok.convert_ids_to_tokens(i))

    return spell
