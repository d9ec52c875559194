"""The Python entry TRL users expect: a trainer from a student model, a teacher, a config object and
rows, which tokenizes and collates exactly as `lmdistill train` does.

    from lmdistill import RunConfig, distillation_trainer

    trainer = distillation_trainer(
        model=student,                  # any causal LM (a peft model too)
        teacher_model=teacher,          # a model, a capture-store folder, or a server URL
        args=RunConfig(),               # lmdistill's config object: distill.*, hints.*, on_policy.*, train.*
        train_dataset=rows,             # a list or datasets.Dataset of messages / prompt+completion / text rows
        eval_dataset=None,
        processing_class=tokenizer,     # the student's tokenizer (the teacher's must match it)
    )
    trainer.train()
    trainer.save_model("student")

The trainer is lmdistill's `DistillTrainer` (a `transformers.Trainer`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable

import torch

from lmdistill.config import RunConfig
from lmdistill.data import validate_records
from lmdistill.errors import UserError
from lmdistill.models import check_vocab
from lmdistill.models.forward import is_peft
from lmdistill.teachers.whitebox import InProcessTeacher
from lmdistill.training.assemble import make_trainer
from lmdistill.training.parts.data import tokenize_run_data
from lmdistill.training.parts.models import Models
from lmdistill.training.parts.teacher import TeacherPart
from lmdistill.training.trainer import DistillTrainer


def distillation_trainer(
    model: torch.nn.Module,
    teacher_model: torch.nn.Module | str | os.PathLike | None,
    args: RunConfig,
    train_dataset: Iterable[dict],
    eval_dataset: Iterable[dict] | None = None,
    processing_class=None,
    log=print,
) -> DistillTrainer:
    """A `DistillTrainer` for `model` distilled from `teacher_model` on `train_dataset`.

    teacher_model: a causal LM in this process (frozen here), a folder written by `lmdistill capture`
    (top-k + tail from the store), an `http://` / `https://` URL of an OpenAI-compatible server
    (`args.teacher` holds its other settings), or None for CE alone (args.distill.kd_ratio 0).
    args: a `RunConfig`; its data.train / teacher.name / student.name are not read (the rows and models
    are given here); data.max_length and every distill/hints/on_policy/train key are. It is copied, not
    changed.
    train_dataset / eval_dataset: rows in any layout `lmdistill train` reads, as dicts (a list, or a
    `datasets.Dataset`).
    processing_class: the student's tokenizer (required).
    """
    if processing_class is None:
        raise UserError("processing_class: give the student's tokenizer")
    cfg = copy.deepcopy(args)
    if cfg.distill.cross_tokenizer:
        raise UserError(
            "distill.cross_tokenizer is not available through distillation_trainer yet (it needs the teacher's "
            "tokenizer too): use `lmdistill train` with a config"
        )
    teacher_module = _place_teacher(cfg, teacher_model)
    cfg.data.train = cfg.data.train or "train_dataset"
    cfg.validate()
    train_rows = _rows(train_dataset, "train_dataset", validate=not cfg.on_policy.enabled)
    eval_rows = _rows(eval_dataset, "eval_dataset") if eval_dataset is not None else None
    data = tokenize_run_data(
        cfg, train_rows, eval_rows, processing_class, train_source="train_dataset", eval_source="eval_dataset"
    )
    part = TeacherPart.choose(cfg) if teacher_module is None and teacher_model is not None else None
    source = part.source(cfg, processing_class, data) if part is not None else None
    student = model.requires_grad_(True).train() if not is_peft(model) else model.train()
    if source is not None:
        models = Models(None, student, processing_class, source.vocab, source)
    elif teacher_module is not None:
        vocab = check_vocab(processing_class, processing_class, teacher_module, student)
        models = Models(teacher_module, student, processing_class, vocab, InProcessTeacher(teacher_module))
    else:
        vocab = check_vocab(processing_class, processing_class, student, student)
        models = Models(None, student, processing_class, vocab)
    return make_trainer(cfg, models, data.train, data.eval, log)


def _place_teacher(cfg: RunConfig, teacher) -> torch.nn.Module | None:
    """Record where the teacher lives in `cfg` (a store folder or a server URL); a model is frozen and
    returned. None: no teacher (CE only), which needs kd_ratio 0 and no hint or on-policy terms."""
    if teacher is None:
        if cfg.distill.kd_ratio > 0 or cfg.hints.enabled or cfg.on_policy.enabled:
            raise UserError(
                "teacher_model is None, but distill.kd_ratio > 0 or a hint/on-policy term reads it"
            )
        return None
    if isinstance(teacher, torch.nn.Module):
        cfg.teacher.name = cfg.teacher.name or "teacher_model"
        return teacher.requires_grad_(False).eval()
    text = str(teacher)
    if text.startswith(("http://", "https://")):
        cfg.teacher.server, cfg.distill.teacher_store = text, None
    else:
        cfg.distill.teacher_store, cfg.teacher.server = text, None
    return None


def _rows(dataset: Iterable[dict], name: str, validate: bool = True) -> list[dict]:
    rows = [dict(row) for row in dataset]
    if not rows:
        raise UserError(f"{name}: no rows")
    if validate:
        validate_records(rows, name)
    return rows
