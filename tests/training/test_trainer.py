"""DistillTrainer on tiny real models: hidden states feed the head, accumulation equals a larger batch,
resume continues the same run, non-finite micro-batches are skipped, then the run stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmdistill.chunked import Head, LossSpec
from lmdistill.data import DistillCollator
from lmdistill.errors import TrainingDiverged
from lmdistill.models.forward import final_hidden
from lmdistill.training.trainer import DistillTrainer
from tests.conftest import tiny_training_args

VOCAB = 96


def _features(n=8, seed=0):
    """Examples of different lengths and target counts, so per-token normalisation matters."""
    g = torch.Generator().manual_seed(seed)
    feats = []
    for i in range(n):
        length = 6 + (i * 5) % 13
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        prompt = 2 + i % 4
        labels = [-100] * prompt + ids[prompt:]
        feats.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * length})
    return feats


def _trainer(tiny_llama, tmp_path, feats, *, teacher_seed=1, spec=None, **kw):
    student = tiny_llama(VOCAB, num_layers=2, seed=0)
    teacher = tiny_llama(VOCAB, num_layers=3, hidden=48, heads=4, kv_heads=2, seed=teacher_seed)
    return DistillTrainer(
        model=student,
        teacher=teacher,
        spec=spec or LossSpec(loss="forward_kl", ce_weight=0.4, kd_weight=0.6, vocab=VOCAB, chunk_size=5),
        args=tiny_training_args(tmp_path, **kw),
        train_dataset=feats,
        data_collator=DistillCollator(pad_token_id=0),
    )


def test_final_hidden_feeds_the_head(tiny_llama):
    ids = torch.randint(0, VOCAB, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    for model in (tiny_llama(VOCAB, tie=True), gpt2):
        model.eval()
        hidden = final_hidden(model, ids, mask)
        logits = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(Head.of(model).logits(hidden, VOCAB), logits, rtol=1e-5, atol=1e-5)


def test_gradient_accumulation_equals_the_larger_batch(tiny_llama, tmp_path):
    feats = _features(8)
    params = []
    for bs, ga in ((4, 1), (2, 2), (1, 4)):
        trainer = _trainer(
            tiny_llama,
            tmp_path / f"{bs}x{ga}",
            feats,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
        )
        trainer.train()
        params.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    moved = (
        params[0] - torch.cat([p.detach().flatten() for p in tiny_llama(VOCAB, seed=0).parameters()])
    ).abs()
    assert moved.max() > 1e-3  # the steps did something
    torch.testing.assert_close(params[1], params[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params[2], params[0], rtol=1e-5, atol=1e-6)


def test_resume_continues_the_same_run(tiny_llama, tmp_path):
    feats = _features(16)
    kw = dict(max_steps=6, per_device_train_batch_size=2, optim="adamw_torch", lr_scheduler_type="cosine")
    straight = _trainer(tiny_llama, tmp_path / "straight", feats, **kw)
    straight.train()

    first = _trainer(tiny_llama, tmp_path / "resumed", feats, save_strategy="steps", save_steps=3, **kw)
    first.args.max_steps = 6
    first.train()  # saves checkpoint-3 and checkpoint-6; resume from 3 below
    second = _trainer(tiny_llama, tmp_path / "resumed", feats, **kw)
    second.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    for a, b in zip(straight.model.parameters(), second.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    losses = [h["loss"] for h in straight.state.log_history if "loss" in h]
    resumed = [h["loss"] for h in second.state.log_history if "loss" in h]
    assert resumed[-3:] == pytest.approx(losses[-3:], rel=1e-5)


def test_logs_ce_and_kd_separately(tiny_llama, tmp_path):
    feats = _features(8)
    # one batch of all 8 examples, one step: the logged figures are those of the initial weights
    trainer = _trainer(tiny_llama, tmp_path, feats, per_device_train_batch_size=8, max_steps=1)
    student = tiny_llama(VOCAB, num_layers=2, seed=0).eval()  # the same initial weights, recomputed
    teacher = tiny_llama(VOCAB, num_layers=3, hidden=48, heads=4, kv_heads=2, seed=1).eval()
    ce = kd = 0.0
    tokens = 0
    with torch.no_grad():
        for f in feats:  # every logit at once, float64, no padding
            ids, y = torch.tensor([f["input_ids"]]), torch.tensor(f["labels"][1:])
            keep = y != -100
            logq = torch.log_softmax(student(input_ids=ids).logits[0, :-1].double()[keep], -1)
            logp = torch.log_softmax(teacher(input_ids=ids).logits[0, :-1].double()[keep], -1)
            ce -= logq.gather(1, y[keep, None]).sum().item()
            kd += (logp.exp() * (logp - logq)).sum().item()
            tokens += int(keep.sum())
    trainer.train()
    [h] = [h for h in trainer.state.log_history if "loss" in h]
    assert h["target_tokens"] == tokens
    assert h["ce"] == pytest.approx(ce / tokens, rel=1e-4) and h["kd"] == pytest.approx(kd / tokens, rel=1e-4)
    assert h["loss"] == pytest.approx(0.4 * h["ce"] + 0.6 * h["kd"], abs=1e-4)  # the spec's weights


def _poison(trainer, token: int):
    """Make the teacher produce NaN wherever `token` appears (a real non-finite forward)."""
    with torch.no_grad():
        trainer.teacher.model.get_input_embeddings().weight[token] = float("nan")


def test_nonfinite_microbatch_is_skipped_and_counted(tiny_llama, tmp_path):
    feats = _features(8)
    feats[0]["input_ids"][1] = 95  # only the first example holds token 95
    for f in feats[1:]:
        f["input_ids"] = [t if t != 95 else 94 for t in f["input_ids"]]
    trainer = _trainer(tiny_llama, tmp_path, feats, per_device_train_batch_size=1, max_steps=8)
    _poison(trainer, 95)
    trainer.train()
    assert trainer.nonfinite_skipped == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_run_stops_after_nonfinite_streak(tiny_llama, tmp_path):
    feats = _features(8)
    trainer = _trainer(tiny_llama, tmp_path, feats, max_steps=8)
    trainer.max_nonfinite = 3
    with torch.no_grad():
        trainer.teacher.model.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="3 micro-batches in a row"):
        trainer.train()


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_loss_weights_of_one_equal_no_weights(tiny_llama, tmp_path):
    feats = _features(8)
    plain = _trainer(tiny_llama, tmp_path / "plain", feats)
    plain.train()
    weighted = _trainer(tiny_llama, tmp_path / "ones", [{**f, "weight": 1.0} for f in feats])
    weighted.train()
    torch.testing.assert_close(_params(weighted.model), _params(plain.model), rtol=1e-6, atol=1e-7)
    halved = _trainer(tiny_llama, tmp_path / "half", [{**f, "weight": 0.5} for f in feats])
    halved.train()
    first = next(h for h in halved.state.log_history if "loss" in h)["loss"]
    assert first == pytest.approx(
        0.5 * next(h for h in plain.state.log_history if "loss" in h)["loss"], rel=1e-3
    )


class _StoredRows:
    """Teacher rows computed ahead of time with `teacher_topk`, served by example index like a store."""

    folder = "rows in memory"

    def __init__(self, teacher, feats, k):
        from lmdistill.capture import teacher_topk

        top = teacher_topk(teacher, feats, k=k, temperature=1.0, vocab=VOCAB, pad_token_id=0, chunk_size=7)
        self.top, self.offsets, self.k, self.vocab = top, top.offsets, k, VOCAB

    def rows(self, indices):
        parts = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        cat = lambda a: torch.from_numpy(np.concatenate([a[p] for p in parts]))  # noqa: E731
        return (
            cat(self.top.ids),
            cat(self.top.logprobs),
            cat(self.top.tail),
            [p.stop - p.start for p in parts],
        )


def test_stored_topk_with_k_equal_vocab_trains_like_the_live_teacher(tiny_llama, tmp_path):
    from lmdistill.teachers.whitebox import StoreTeacher

    feats = [{**f, "example_index": i} for i, f in enumerate(_features(8))]
    live = _trainer(tiny_llama, tmp_path / "live", feats, max_steps=3, per_device_train_batch_size=3)
    live.train()
    stored = _trainer(tiny_llama, tmp_path / "stored", feats, max_steps=3, per_device_train_batch_size=3)
    stored.teacher = StoreTeacher(_StoredRows(stored.teacher.model, feats, VOCAB))  # stands in for the model
    stored.train()
    torch.testing.assert_close(_params(stored.model), _params(live.model), rtol=1e-5, atol=1e-6)
    kd = [h["kd"] for h in stored.state.log_history if "kd" in h]
    assert kd == pytest.approx([h["kd"] for h in live.state.log_history if "kd" in h], rel=1e-4)


def test_stored_rows_that_do_not_line_up_are_refused(tiny_llama, tmp_path):
    from lmdistill.teachers.whitebox import StoreTeacher, TeacherQuery

    feats = [{**f, "example_index": i} for i, f in enumerate(_features(8))]
    trainer = _trainer(tiny_llama, tmp_path, feats)
    source = StoreTeacher(_StoredRows(trainer.teacher.model, feats, 4))
    shifted = [{**f, "example_index": (i + 1) % 8} for i, f in enumerate(feats)]
    batch = DistillCollator(pad_token_id=0)(shifted[:4])
    with pytest.raises(ValueError, match="do not line up"):
        source.score(TeacherQuery.from_batch(batch))
    assert source.score(TeacherQuery.from_batch(DistillCollator(pad_token_id=0)(_features(2)))) is None


def test_record_weights_reach_the_batch(tiny_tokenizer):
    from lmdistill.data import tokenize_records
    from lmdistill.errors import UserError

    rows = [{"text": "Hello world", "weight": 0.25}, {"prompt": "The cat", "completion": " sat."}]
    feats, _ = tokenize_records(rows, tiny_tokenizer, 32)
    assert feats[0]["weight"] == 0.25 and "weight" not in feats[1]
    batch = DistillCollator(pad_token_id=0)(feats)
    assert batch["loss_weights"].dtype == torch.float32 and batch["loss_weights"].tolist() == [0.25, 1.0]
    assert "loss_weights" not in DistillCollator(pad_token_id=0)(feats[1:])
    for bad in (-1, float("nan"), "high", True):
        with pytest.raises(UserError, match=r'train\.jsonl:2: "weight" must be a finite number >= 0'):
            tokenize_records(
                [rows[1], {"text": "x y", "weight": bad}], tiny_tokenizer, 32, source="train.jsonl"
            )
