"""The quality benchmark's machinery against the plain paths it stands in for, on tiny real models:
a precomputed teacher gives the trainer the same loss as the live one; the held-out scorer gives the
same figures as `score_tokens`; the curve callback records step 0 and every N steps."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from lmdistill.chunked import LossSpec
from lmdistill.data import DistillCollator
from lmdistill.eval.quality import (
    CurveCallback,
    HeldoutScorer,
    Method,
    PrecomputedTeacher,
    indexed,
    train_student,
)
from lmdistill.eval.scoring import score_tokens
from lmdistill.teachers.whitebox.local import InProcessTeacher
from lmdistill.teachers.whitebox.source import TeacherQuery

VOCAB = 64


def _features(n: int, seed: int = 0) -> list[dict]:
    """Right-padded-friendly examples of different lengths, the first 3 tokens a masked prompt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 6 + (i * 3) % 7
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:], "attention_mask": [1] * length})
    return out


def test_precomputed_teacher_gives_the_same_loss_as_the_live_one(tiny_llama):
    teacher, student = tiny_llama(VOCAB, num_layers=3, seed=1), tiny_llama(VOCAB, num_layers=2, seed=2)
    feats = indexed(_features(6))
    batch = DistillCollator(pad_token_id=0)(feats[1:5])  # mixed lengths: padding inside the batch
    query = TeacherQuery.from_batch(batch)
    live = InProcessTeacher(teacher).score(query)
    pre = PrecomputedTeacher(teacher, feats, pad=0, batch_size=4).score(query)
    assert pre.hidden.shape == live.hidden.shape
    torch.testing.assert_close(pre.hidden, live.hidden, atol=1e-5, rtol=1e-5)
    from lmdistill.chunked import chunked_loss
    from lmdistill.models.forward import final_hidden

    spec = LossSpec(loss="forward_kl", ce_weight=0.5, kd_weight=0.5, temperature=1.0, vocab=VOCAB)
    mask = batch["labels"][:, 1:] != -100
    hidden = final_hidden(student, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
    from lmdistill.chunked import Head

    a = chunked_loss(hidden, Head.of(student), batch["labels"][:, 1:][mask], spec, **live.loss_inputs())
    b = chunked_loss(hidden, Head.of(student), batch["labels"][:, 1:][mask], spec, **pre.loss_inputs())
    assert float(a.kd) > 0
    torch.testing.assert_close(a.total, b.total, atol=1e-4, rtol=1e-5)


def test_precomputed_teacher_refuses_a_row_that_does_not_line_up(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=2, seed=1)
    feats = indexed(_features(3))
    pre = PrecomputedTeacher(teacher, feats, pad=0)
    wrong = [dict(feats[0], example_index=1)]  # example 0's tokens under example 1's index
    with pytest.raises(ValueError, match="scored positions"):
        pre.score(TeacherQuery.from_batch(DistillCollator(pad_token_id=0)(wrong)))
    with pytest.raises(ValueError, match="example_index"):
        pre.score(TeacherQuery.from_batch(DistillCollator(pad_token_id=0)(_features(2))))


def test_precomputed_teacher_with_live_teacher_scores_new_text_live(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=2, seed=1)
    feats = indexed(_features(4))
    pre = PrecomputedTeacher(teacher, feats, pad=0)
    view = pre.with_live_teacher()
    assert pre.live is None and view.rows is pre.rows  # the shared source is unchanged, nothing copied
    new = DistillCollator(pad_token_id=0)(_features(3, seed=9))  # no example_index: sampled text, say
    query = TeacherQuery.from_batch(new)
    torch.testing.assert_close(view.score(query).hidden, InProcessTeacher(teacher).score(query).hidden)
    # training rows still come from the stored states, which are what a lookup returns
    old = TeacherQuery.from_batch(DistillCollator(pad_token_id=0)(feats[:2]))
    assert torch.equal(view.score(old).hidden, torch.cat(pre.rows[:2]))


class _Logs(TrainerCallback):
    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_on_policy_method_trains_on_its_samples_with_a_precomputed_teacher(
    tiny_llama, tiny_tokenizer, tmp_path, one_torch_thread
):
    teacher, student0 = tiny_llama(VOCAB, num_layers=3, seed=1), tiny_llama(VOCAB, num_layers=2, seed=2)
    feats = indexed([{**f, "prompt_ids": f["input_ids"][:3]} for f in _features(8, seed=4)])
    method = Method("on-policy", "reverse_kl", 0.5, on_policy={"lmbda": 1.0, "max_new_tokens": 4})
    logs = _Logs()
    student, _ = train_student(
        method, student0, teacher, tiny_tokenizer, VOCAB, feats,
        steps=2, batch_size=2, lr=1e-2, seed=0, output_dir=str(tmp_path),
        precomputed=PrecomputedTeacher(teacher, feats, pad=0), curve=logs,
    )  # fmt: skip
    trained = [entry for entry in logs.logs if "loss" in entry]
    assert sum(entry["on_policy_steps"] for entry in trained) == 2  # lmbda 1: every step sampled
    assert all(entry["on_policy_tokens"] > 0 and entry["on_policy_kd"] > 0 for entry in trained)
    assert not any(
        torch.equal(a, b) for a, b in zip(student.parameters(), student0.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="prompt_ids"):
        train_student(
            method, student0, teacher, tiny_tokenizer, VOCAB, indexed(_features(4)),
            steps=1, batch_size=2, lr=1e-2, seed=0, output_dir=str(tmp_path),
        )  # fmt: skip


def test_heldout_scorer_matches_score_tokens(tiny_llama):
    teacher, student = tiny_llama(VOCAB, num_layers=3, seed=1), tiny_llama(VOCAB, num_layers=2, seed=2)
    feats = _features(7, seed=3)
    ours = HeldoutScorer(teacher, feats, VOCAB, pad=0, batch_size=3).score(student)
    ref = score_tokens(student, feats, vocab=VOCAB, pad_token_id=0, teacher=teacher)
    assert ours.tokens == ref.tokens
    assert ours.top1 == pytest.approx(ref.top1)
    assert ours.kl == pytest.approx(ref.kl, rel=1e-5)
    assert ours.perplexity == pytest.approx(ref.perplexity, rel=1e-5)
    own = HeldoutScorer(teacher, feats, VOCAB, pad=0).teacher_scores()
    ref = score_tokens(teacher, feats, vocab=VOCAB, pad_token_id=0, teacher=teacher)
    assert (own.top1, own.tokens) == (1.0, ref.tokens)
    assert own.kl == pytest.approx(0.0, abs=1e-6)
    assert own.perplexity == pytest.approx(ref.perplexity, rel=1e-5)


def test_training_with_a_curve_moves_towards_the_teacher(
    tiny_llama, tiny_tokenizer, tmp_path, one_torch_thread
):
    teacher, student0 = tiny_llama(VOCAB, num_layers=3, seed=1), tiny_llama(VOCAB, num_layers=2, seed=2)
    feats = indexed(_features(16, seed=4))
    curve = CurveCallback(HeldoutScorer(teacher, _features(4, seed=5), VOCAB, pad=0), every=3)
    student, seconds = train_student(
        Method("forward KL", kd_ratio=1.0), student0, teacher, tiny_tokenizer, VOCAB, feats,
        steps=8, batch_size=2, lr=1e-2, seed=0, output_dir=str(tmp_path),
        precomputed=PrecomputedTeacher(teacher, feats, pad=0), curve=curve,
    )  # fmt: skip
    assert [p["step"] for p in curve.points] == [0, 3, 6, 8]
    assert curve.points[-1]["kl"] < curve.points[0]["kl"]
    assert student is not student0 and seconds > 0
    # the starting student is left untouched (each method trains a copy)
    assert not any(
        torch.equal(a, b) for a, b in zip(student.parameters(), student0.parameters(), strict=True)
    )
