"""The run's models part: the student (a model of its own, or the teacher shrunk to fewer layers or a
smaller shape), trainable (LoRA when asked), and the teacher model when it runs in this process; their
shared tokenizer and real vocabulary, checked; sizes printed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from lmdistill.config import RunConfig
from lmdistill.errors import UserError
from lmdistill.models import (
    check_vocab,
    count_parameters,
    describe_sizes,
    head_rows,
    load_model,
    load_teacher,
    load_tokenizer,
    resolve_dtype,
    shrink_model,
)
from lmdistill.teachers.whitebox import InProcessTeacher, SeveralTeachers, TeacherSource
from lmdistill.training.parts.teacher import teacher_is_read
from lmdistill.training.xtok_step import CrossTokenizerStep, build_step


@dataclass
class Models:
    """What a run trains with: the frozen teacher model (None unless it runs in this process), the
    student, their shared tokenizer and vocab size, and the teacher source the loss asks (None: CE only;
    an `InProcessTeacher` over `teacher` when left None with a teacher given)."""

    teacher: torch.nn.Module | None
    student: torch.nn.Module
    tokenizer: object
    vocab: int
    source: TeacherSource | None = None
    xtok: CrossTokenizerStep | None = None  # a teacher with another tokenizer (distill.cross_tokenizer)

    def __post_init__(self):
        if self.source is None and self.teacher is not None:
            self.source = InProcessTeacher(self.teacher)


def student_base(cfg: RunConfig) -> str:
    """The model the student is (student.name) or is shrunk from (student.shrink_from, else the teacher):
    its tokenizer is the run's."""
    return cfg.student.name or cfg.student.shrink_from or cfg.teacher.name


def _student_apart(cfg: RunConfig) -> bool:
    """Whether the student comes from another model than the teacher (its own weights, or shrunk from one)."""
    return bool(cfg.student.name or cfg.student.shrink_from)


def build_models(cfg: RunConfig, log=print, source=None, tokenizer=None) -> Models:
    """Build the student and, when a term reads it and no `source` stands in for it, load the teacher;
    check the vocabularies; print sizes.

    source: a sparse teacher source already checked against `tokenizer` (the run's tokenizer): a store
    or a server (it has `.vocab`); no teacher is kept, its weights are loaded only to shrink the student.
    tokenizer: the run's tokenizer when the caller has loaded it already (loaded here otherwise).
    """
    if isinstance(source, SeveralTeachers):  # several teachers: the needed in-process ones load here
        from lmdistill.training.parts.several import build_models as build_several

        return build_several(cfg, source, tokenizer, log)
    if source is not None:
        return _models_for_source(cfg, source, tokenizer, log)
    if tokenizer is None:  # the student's (the teacher's when the student is shrunk from it)
        tokenizer = load_tokenizer(student_base(cfg))
    if not teacher_is_read(cfg):
        return _student_alone(cfg, tokenizer, log)
    # A student shrunk from a sharded teacher is built on meta only when it is sharded too (DDP needs it whole).
    teacher_meta = from_rank0(cfg.train.fsdp_teacher and (_student_apart(cfg) or cfg.train.fsdp))
    teacher = load_teacher(cfg.teacher.name, dtype=cfg.teacher.dtype, meta=teacher_meta)
    student_tok = tokenizer
    if _student_apart(cfg):
        student = _own_student(cfg)
        teacher_tok = load_tokenizer(cfg.teacher.name)
    else:
        student = _shrunk_student(cfg, teacher)
        teacher_tok = student_tok
    student = _trainable(student, cfg)
    if cfg.distill.cross_tokenizer:  # another tokenizer: each vocabulary checked against its own head
        step = build_step(cfg.distill, student_tok, teacher_tok, student, teacher, log)
        log(describe_sizes(teacher, student))
        source = InProcessTeacher(teacher, cfg.teacher.name)
        return Models(teacher, student, student_tok, step.student_vocab, source, step)
    vocab = check_vocab(
        teacher_tok,
        student_tok,
        teacher,
        student,
        teacher_name=cfg.teacher.name,
        student_name=cfg.student.name or f"{student_base(cfg)} shrunk",
    )
    log(describe_sizes(teacher, student))
    return Models(teacher, student, student_tok, vocab, InProcessTeacher(teacher, cfg.teacher.name))


def from_rank0(sharded: bool) -> bool:
    """Whether this process builds a model on the meta device and reads none of its weights: the model is
    sharded (train.fsdp / train.fsdp_teacher) and this is not process 0, which alone loads the weights and
    scatters them into every process's shards (`lmdistill.models.sharding.shard_from_rank0`)."""
    return sharded and int(os.environ.get("RANK", "0") or 0) != 0


def _own_student(cfg: RunConfig) -> torch.nn.Module:
    """student.name loaded, or student.shrink_from loaded, shrunk, and dropped (only its copy stays)."""
    meta = from_rank0(cfg.train.fsdp)
    if cfg.student.name:
        return load_model(cfg.student.name, dtype=cfg.student.dtype, meta=meta)
    base = load_model(cfg.student.shrink_from, dtype=cfg.student.dtype, meta=meta)
    student = _shrunk_student(cfg, base)
    # Its layers are shrink_from's, not the teacher's: hint pairs `copied` must not read them as teacher layers.
    if hasattr(student.config, "lmdistill_teacher_layers"):
        del student.config.lmdistill_teacher_layers
    return student


def _shrunk_student(cfg: RunConfig, teacher) -> torch.nn.Module:
    """`teacher` (the run's teacher, or student.shrink_from) shrunk as cfg.student says; a model on the meta
    device gives a student on meta."""
    s = cfg.student
    student = shrink_model(
        teacher,
        num_layers=None if s.layers else s.num_layers,
        layers=s.layers,
        hidden_size=s.hidden_size,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads,
        intermediate_size=s.intermediate_size,
    )
    return student.to(resolve_dtype(s.dtype) if s.dtype != "auto" else teacher.dtype)


def _trainable(student, cfg: RunConfig) -> torch.nn.Module:
    student.requires_grad_(True).train()
    return add_lora(student, cfg.student) if cfg.student.lora_r else student


def _student_only(cfg: RunConfig) -> torch.nn.Module:
    """The student, trainable; shrunk from the teacher's weights, which are then dropped (nothing keeps them)."""
    meta = from_rank0(cfg.train.fsdp)
    if _student_apart(cfg):
        student = _own_student(cfg)
    else:
        teacher = load_teacher(cfg.teacher.name, dtype=cfg.teacher.dtype, meta=meta)
        student = _shrunk_student(cfg, teacher)  # on meta too: the student's shapes, no weights
        del teacher  # its layers are copied; no term reads the teacher, so none stays in memory
    return _trainable(student, cfg)


def _student_alone(cfg: RunConfig, tokenizer, log) -> Models:
    """No term reads the teacher (CE only): the student and its tokenizer, no teacher source."""
    student = _student_only(cfg)
    name = student_base(cfg)
    vocab = check_vocab(tokenizer, tokenizer, student, student, teacher_name=name, student_name=name)
    log(
        f"student: {count_parameters(student):,} parameters; no teacher (kd_ratio 0 and no hint terms: CE only)"
    )
    return Models(None, student, tokenizer, vocab)


def _models_for_source(cfg: RunConfig, source, tokenizer, log) -> Models:
    """The student alone; the store or server stands in for the teacher (its vocabulary is the shared one)."""
    student = _student_only(cfg)
    if head_rows(student) < source.vocab:
        raise UserError(
            f"the student's output head has {head_rows(student)} rows but the teacher ({source.name}) "
            f"has a vocabulary of {source.vocab}"
        )
    log(
        f"student: {count_parameters(student):,} parameters; teacher: top-{source.k} log-probs from "
        f"{source.name} (no teacher in memory)"
    )
    return Models(None, student, tokenizer, source.vocab, source)


def add_lora(student, s) -> torch.nn.Module:
    """Wrap the student in peft LoRA adapters; the head stays a plain Linear (chunked KD reads it)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("student.lora_r > 0 needs peft: pip install 'lmdistill[lora]'") from None
    targets = s.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(student, config)
