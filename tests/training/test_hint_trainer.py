"""Hint terms inside DistillTrainer: logged apart, projections trained and checkpointed, hooks removed."""

from __future__ import annotations

import pytest
import torch

from lmdistill.chunked import LossSpec
from lmdistill.config import HintConfig
from lmdistill.data import DistillCollator
from lmdistill.errors import UserError
from lmdistill.training.hint_terms import PROJECTIONS_FILE, HintTerms
from lmdistill.training.trainer import DistillTrainer
from tests.conftest import tiny_training_args
from tests.training.test_trainer import VOCAB, _features


def _models(tiny_llama):
    student = tiny_llama(VOCAB, num_layers=2, hidden=32, heads=4, kv_heads=2, seed=0)
    teacher = tiny_llama(VOCAB, num_layers=4, hidden=48, heads=4, kv_heads=2, seed=1)
    return student, teacher


def _trainer(tiny_llama, tmp_path, hint_cfg: HintConfig, **kw):
    student, teacher = _models(tiny_llama)
    return DistillTrainer(
        model=student,
        teacher=teacher,
        hints=HintTerms(hint_cfg, student, teacher, log=lambda *_: None),
        spec=LossSpec(loss="forward_kl", ce_weight=0.5, kd_weight=0.5, vocab=VOCAB, chunk_size=8),
        args=tiny_training_args(tmp_path, **kw),
        train_dataset=_features(16),
        data_collator=DistillCollator(pad_token_id=0),
    )


ALL = HintConfig(hidden_weight=1.0, relation_weight=0.5, attention_weight=0.5, layers="uniform")


def test_every_term_is_logged_and_projections_learn(tiny_llama, tmp_path):
    trainer = _trainer(tiny_llama, tmp_path, ALL, max_steps=12, optim="adamw_torch", learning_rate=1e-2)
    before = [p.detach().clone() for p in trainer.hints.parameters()]
    assert before, "widths 32 -> 48 need learned projections"
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    for key in ("ce", "kd", "hidden", "relation", "attention"):
        assert all(h[key] > 0 for h in logged), key
    for h in logged:  # the optimised loss is the weighted sum of the logged terms, each logged apart
        terms = 0.5 * h["ce"] + 0.5 * h["kd"] + h["hidden"] + 0.5 * h["relation"] + 0.5 * h["attention"]
        assert h["loss"] == pytest.approx(terms, abs=2e-4)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.hints.parameters(), strict=True))
    assert logged[-1]["hidden"] < logged[0]["hidden"]


def test_hooks_are_removed_after_training(tiny_llama, tmp_path):
    trainer = _trainer(tiny_llama, tmp_path, HintConfig(relation_weight=1.0, relation_layers="first_last"))

    def hooks(model):  # transformers keeps output-recording hooks of its own: compare, don't expect none
        return {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()}

    trainer.train()
    after_first = [hooks(trainer.model), hooks(trainer.teacher.model)]
    trainer.args.max_steps = 4
    trainer.train()  # a second run on the same models adds nothing
    assert [hooks(trainer.model), hooks(trainer.teacher.model)] == after_first
    q_proj = trainer.model.model.layers[0].self_attn.q_proj
    assert not q_proj._forward_hooks


def test_resume_restores_projections(tiny_llama, tmp_path):
    cfg = HintConfig(hidden_weight=1.0, layers="last")
    kw = dict(max_steps=6, per_device_train_batch_size=2, optim="adamw_torch", learning_rate=1e-2)
    straight = _trainer(tiny_llama, tmp_path / "straight", cfg, **kw)
    straight.train()
    first = _trainer(tiny_llama, tmp_path / "resumed", cfg, save_strategy="steps", save_steps=3, **kw)
    first.train()
    assert (tmp_path / "resumed" / "checkpoint-3" / PROJECTIONS_FILE).is_file()
    second = _trainer(tiny_llama, tmp_path / "resumed", cfg, **kw)
    second.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    for a, b in zip(straight.hints.parameters(), second.hints.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(straight.model.parameters(), second.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_width_mismatch_without_projection_names_the_pair(tiny_llama):
    student, teacher = _models(tiny_llama)
    with pytest.raises(UserError, match=r"s1.*t3|\(1, 3\)|\[1, 3\]"):
        HintTerms(HintConfig(hidden_weight=1.0, layers="last", projection="none"), student, teacher)


def test_resume_from_a_checkpoint_without_projections_is_refused(tiny_llama, tmp_path):
    (tmp_path / "ckpt").mkdir()
    trainer = _trainer(tiny_llama, tmp_path, HintConfig(hidden_weight=1.0))
    with pytest.raises(UserError, match=PROJECTIONS_FILE):
        trainer.hints.load(tmp_path / "ckpt")


def test_attention_maps_restore_the_attention_implementation(tiny_llama, tmp_path):
    trainer = _trainer(tiny_llama, tmp_path, HintConfig(attention_weight=1.0), max_steps=1)
    for _ in range(2):  # eager while training, back to sdpa after; a second run works the same
        trainer.train()
        assert trainer.model.config._attn_implementation == "sdpa"
        assert trainer.teacher.model.config._attn_implementation == "sdpa"
    assert all(h["attention"] > 0 for h in trainer.state.log_history if "loss" in h)
