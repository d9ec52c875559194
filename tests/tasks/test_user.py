"""User tasks from JSONL: loading, options, splits, and every bad input as file:line."""

from __future__ import annotations

import json
import re

import pytest

from lmdistill.errors import UserError
from lmdistill.tasks import get_task, load_task


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_loads_rows_header_and_infers_numeric(tmp_path):
    f = _write(
        tmp_path / "sums.jsonl",
        [
            {"instruction": "Add the numbers."},
            {"question": "2 + 2?", "answer": 4, "rationale": "2 + 2 = 4.", "source": "me"},
            *({"question": f"{i} + 1?", "answer": str(i + 1)} for i in range(11)),
        ],
    )
    task = load_task(f)
    assert task.name == "sums" and task.instruction == "Add the numbers."
    assert task.numeric and task.check_kind == "numeric"
    rows = task.examples("train") + task.examples("heldout")
    assert len(rows) == 12 and len(task.examples("heldout")) == 3
    first = next(e for e in rows if e.question == "2 + 2?")
    assert first.answer == "4" and first.rationale == "2 + 2 = 4."
    assert first.meta["source"] == "me" and first.meta["line"] == 2
    assert task.prompt(first) == "Add the numbers.\n\n2 + 2?"
    assert task.check("Answer: 4", first)
    assert get_task(f).examples("heldout") == task.examples("heldout")
    assert load_task(f, instruction="Sum.").instruction == "Sum."


def test_instruction_and_choices_on_the_first_example(tmp_path):
    f = _write(
        tmp_path / "yn.jsonl",
        [
            {
                "question": "Is snow cold?",
                "answer": "yes",
                "instruction": "Answer yes or no.",
                "choices": ["yes", "no"],
            },
            {"question": "Is fire cold?", "answer": "No"},
        ],
    )
    task = load_task(f)
    assert task.instruction == "Answer yes or no." and task.choices == ("yes", "no")
    assert task.check_kind == "label" and not task.numeric
    assert len(task.examples("train")) == 1 and len(task.examples("heldout")) == 1
    fire = next(e for e in task.examples("train") + task.examples("heldout") if "fire" in e.question)
    assert task.check("No, fire is hot.", fire)


def test_explicit_splits_and_duplicates(tmp_path):
    f = _write(
        tmp_path / "s.jsonl",
        [
            {"question": "a?", "answer": "x", "split": "heldout"},
            {"question": "A? ", "answer": "x"},  # the same question: follows the named split
            {"question": "b?", "answer": "y", "split": "train"},
            {"question": "c?", "answer": "z"},
        ],
    )
    task = load_task(f)
    held = {e.question.lower().strip() for e in task.examples("heldout")}
    train = {e.question.lower().strip() for e in task.examples("train")}
    assert "a?" in held and "a?" not in train and "b?" in train and not held & train


@pytest.mark.parametrize(
    ("rows", "line", "message"),
    [
        ([{"question": "q", "answer": "a"}, {"answer": "a"}], 2, "missing field 'question'"),
        ([{"question": "q"}], 1, "missing field 'answer'"),
        ([{"question": "  ", "answer": "a"}], 1, "'question' must be a non-empty string"),
        ([{"question": 3, "answer": "a"}], 1, "'question' must be a non-empty string"),
        ([{"question": "q", "answer": ["a"]}], 1, "'answer' must be a non-empty string or a number"),
        ([{"question": "q", "answer": True}], 1, "'answer' must be a non-empty string or a number"),
        ([{"question": "q", "answer": "a", "rationale": 5}], 1, "'rationale' must be a string"),
        ([{"question": "q", "answer": "a", "split": "test"}], 1, "'split' must be one of train, heldout"),
        ([{"question": "q", "answer": "a"}, "{not json"], 2, "invalid JSON"),
        ([{"question": "q", "answer": "a"}, "[1, 2]"], 2, "expected a JSON object"),
        ([{"instruction": 7}], 1, "'instruction' must be a string"),
        ([{"numeric": "yes", "question": "q", "answer": "1"}], 1, "'numeric' must be true or false"),
        ([{"choices": ["only"]}, {"question": "q", "answer": "only"}], 1, "'choices' must be a list"),
        ([{"choices": ["yes", "no"]}, {"question": "q", "answer": "maybe"}], 2, "not one of the choices"),
        (
            [{"question": "q", "answer": "a"}, {"question": "r", "answer": "b", "instruction": "x"}],
            2,
            "first line only",
        ),
        ([{"foo": "bar"}], 1, "neither an example"),
        (
            [
                {"question": "q", "answer": "a", "split": "train"},
                {"question": "q", "answer": "a", "split": "heldout"},
            ],
            2,
            "conflicts with 'train' for the same question on line 1",
        ),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, rows, line, message):
    f = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError, match=rf"{re.escape(f)}:{line}: .*{re.escape(message)}"):
        load_task(f)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="is empty"):
        load_task(empty)
    header_only = _write(tmp_path / "h.jsonl", [{"instruction": "Do it."}])
    with pytest.raises(UserError, match="no examples"):
        load_task(header_only)
    with pytest.raises(UserError, match="task file not found"):
        load_task(tmp_path / "nope.jsonl")


def test_one_row_file_is_all_train(tmp_path):
    task = load_task(_write(tmp_path / "one.jsonl", [{"question": "q", "answer": "a"}]))
    assert len(task.examples("train")) == 1 and task.examples("heldout") == []
    with pytest.raises(UserError, match=r"1 heldout examples requested, only 0 available"):
        task.examples("heldout", 1)
