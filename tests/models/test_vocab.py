"""The tokenizer/vocabulary check that guards logits distillation."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from lmdistill.errors import UserError
from lmdistill.models import check_vocab, head_rows
from tests.conftest import build_tiny_tokenizer


def test_same_tokenizer(tiny_tokenizer, tiny_llama):
    size = len(tiny_tokenizer)
    teacher, student = tiny_llama(size, num_layers=2), tiny_llama(size, num_layers=1)
    assert check_vocab(tiny_tokenizer, tiny_tokenizer, teacher, student) == size


def test_same_tokenizer_loaded_twice(tiny_tokenizer_dir, tiny_llama):
    a, b = (
        AutoTokenizer.from_pretrained(tiny_tokenizer_dir),
        AutoTokenizer.from_pretrained(tiny_tokenizer_dir),
    )
    model = tiny_llama(len(a))
    assert check_vocab(a, b, model, model) == len(a)


def test_padded_head_is_fine(tiny_tokenizer, tiny_llama):
    size = len(tiny_tokenizer)
    teacher, student = tiny_llama(size + 64), tiny_llama(size + 13)
    assert head_rows(student) == size + 13
    assert check_vocab(tiny_tokenizer, tiny_tokenizer, teacher, student) == size


def test_head_smaller_than_tokenizer(tiny_tokenizer, tiny_llama):
    size = len(tiny_tokenizer)
    with pytest.raises(UserError, match=r"student tiny-student: its output head has") as info:
        check_vocab(
            tiny_tokenizer,
            tiny_tokenizer,
            tiny_llama(size),
            tiny_llama(size - 5),
            teacher_name="tiny-teacher",
            student_name="tiny-student",
        )
    assert str(size - 5) in str(info.value) and str(size) in str(info.value)
    with pytest.raises(UserError, match="teacher"):
        check_vocab(tiny_tokenizer, tiny_tokenizer, tiny_llama(size - 1), tiny_llama(size))


def test_different_tokenizers(tiny_tokenizer, tiny_llama, tmp_path):
    other = build_tiny_tokenizer(tmp_path / "other", vocab_size=290)
    assert other.get_vocab() != tiny_tokenizer.get_vocab()
    with pytest.raises(UserError) as info:
        check_vocab(
            tiny_tokenizer,
            other,
            tiny_llama(len(tiny_tokenizer)),
            tiny_llama(len(other)),
            teacher_name="big-teacher",
            student_name="small-student",
        )
    message = str(info.value)
    print(message)
    assert "big-teacher" in message and "small-student" in message
    assert "black-box" in message and "lmdistill generate" in message
    assert str(len(tiny_tokenizer)) in message and str(len(other)) in message
    assert "only in the teacher" in message


def test_added_special_token_counts_as_different(tiny_tokenizer_dir, tiny_llama):
    teacher_tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    student_tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    student_tok.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    model = tiny_llama(len(student_tok))
    with pytest.raises(UserError, match=r"only in the student, e\.g\. '<\|tool\|>'"):
        check_vocab(teacher_tok, student_tok, model, model)


def test_shuffled_ids_are_reported(tiny_tokenizer):
    from lmdistill.models.vocab import describe_vocab_difference

    teacher = {"a": 0, "b": 1, "c": 2}
    student = {"a": 0, "b": 2, "c": 1}
    text = describe_vocab_difference(teacher, student)
    assert "'b' is id 1 in the teacher but 2 in the student" in text
