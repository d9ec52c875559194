"""Check that teacher and student share a tokenizer before distilling on logits.

Logits KD compares the two models' distributions token id by token id, so both must map every token
to the same id. Output heads may be padded past the real vocabulary (Qwen2.5 has 151936 head rows
for 151665 tokens); the logits are then sliced to the shared real vocabulary size this module returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lmdistill.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BLACK_BOX_HINT = (
    "Logits KD needs the same tokenizer; for a teacher with another tokenizer set "
    "distill.cross_tokenizer=byte_aligned (or uld; see docs/cross_tokenizer.md), or use black-box KD "
    "(`lmdistill generate`, teacher outputs as text)"
)


def check_vocab(
    teacher_tokenizer: PreTrainedTokenizerBase,
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_model: nn.Module,
    student_model: nn.Module,
    *,
    teacher_name: str = "teacher",
    student_name: str = "student",
) -> int:
    """Return the shared real vocabulary size V to slice both models' logits to (`logits[..., :V]`).

    Raises UserError when the tokenizers differ (any token with another id, or added only to one),
    or when a model's output head has fewer rows than the tokenizer has tokens.
    """
    teacher_vocab = teacher_tokenizer.get_vocab()
    student_vocab = student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        raise UserError(
            f"{_label('teacher', teacher_name)} and {_label('student', student_name)} use different tokenizers: "
            f"{describe_vocab_difference(teacher_vocab, student_vocab)}. {BLACK_BOX_HINT}"
        )
    size = real_vocab_size(teacher_tokenizer, student_tokenizer)
    for role, name, model in (
        ("teacher", teacher_name, teacher_model),
        ("student", student_name, student_model),
    ):
        rows = head_rows(model)
        if rows < size:
            raise UserError(
                f"{_label(role, name)}: its output head has {rows} rows but the tokenizer has {size} tokens; "
                "resize it first (model.resize_token_embeddings(len(tokenizer)))"
            )
    return size


def real_vocab_size(*tokenizers: PreTrainedTokenizerBase) -> int:
    """The real vocabulary size of one or more tokenizers: logits are sliced to it (`logits[..., :V]`).

    len(tokenizer) counts added tokens too; the max id + 1 guards against ids with gaps.
    """
    return max(max(len(t), max(t.get_vocab().values(), default=-1) + 1) for t in tokenizers)


def checked_vocab_size(tokenizer: PreTrainedTokenizerBase, model: nn.Module) -> int:
    """`real_vocab_size(tokenizer)`, checked against the rows of the model's output head."""
    size = real_vocab_size(tokenizer)
    rows = head_rows(model)
    if rows < size:
        raise UserError(f"the model's output head has {rows} rows but its tokenizer has {size} tokens")
    return size


def head_rows(model: nn.Module) -> int:
    """Number of rows (output logits) of a model's output head; falls back to `config.vocab_size`."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(getattr(head, "out_features", None), int):  # Linear, and int8-quantised Linear
        return head.out_features
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(size, int):
        raise UserError(f"cannot tell the output vocabulary size of {type(model).__name__}")
    return size


def describe_vocab_difference(
    teacher_vocab: dict[str, int], student_vocab: dict[str, int], limit: int = 3
) -> str:
    """A one-line account of how two token->id mappings differ: sizes and a few example tokens."""
    parts = [f"teacher has {len(teacher_vocab)} tokens, student has {len(student_vocab)}"]
    moved = [
        f"{token!r} is id {teacher_vocab[token]} in the teacher but {student_vocab[token]} in the student"
        for token in sorted(teacher_vocab.keys() & student_vocab.keys(), key=teacher_vocab.__getitem__)
        if teacher_vocab[token] != student_vocab[token]
    ]
    if moved:
        parts.append(f"{len(moved)} shared tokens have different ids, e.g. " + "; ".join(moved[:limit]))
    for role, mine, other in (
        ("teacher", teacher_vocab, student_vocab),
        ("student", student_vocab, teacher_vocab),
    ):
        only = sorted(mine.keys() - other.keys(), key=mine.__getitem__)
        if only:
            examples = ", ".join(repr(token) for token in only[:limit])
            parts.append(f"{len(only)} tokens only in the {role}, e.g. {examples}")
    return "; ".join(parts)


def _label(role: str, name: str) -> str:
    """'teacher' or 'teacher <name>' (without repeating the role when no name was given)."""
    return role if not name or name == role else f"{role} {name}"


#: Why `lmdistill capture` and `lmdistill eval --teachers` refuse teachers of different tokenizers.
ONE_TOKENIZER = (
    "several teachers need one tokenizer here (a cross-tokenizer teacher among several, "
    "teachers[i].cross_tokenizer, is for lmdistill train only)"
)


def check_same_tokenizer(
    what: str,
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    against: str = "teachers[0]",
    hint: str = ONE_TOKENIZER,
) -> None:
    """Refuse `what` (e.g. "teachers[1] (b, NAME)") when the tokenizer of `name` is not `tokenizer` (that
    of `against`), with `hint` saying what to do. Only the tokenizer is loaded."""
    from lmdistill.models import load_tokenizer

    own, run = load_tokenizer(name).get_vocab(), tokenizer.get_vocab()
    if own != run:
        raise UserError(
            f"{what} tokenizes differently from {against}: {describe_vocab_difference(own, run)}; {hint}"
        )
