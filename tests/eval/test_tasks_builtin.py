"""`lmdistill eval --task` with built-in task names: loading, checks, scoring."""

from __future__ import annotations

import json

import pytest

from lmdistill.errors import UserError
from lmdistill.eval.tasks import Task, TaskItem, load_task, load_tasks, score_task
from lmdistill.tasks import get_task


def test_arithmetic_by_name_scores_numbers():
    task = load_task("arithmetic:1")
    assert task.name == "arithmetic:1" and task.path == "built-in:arithmetic:1"
    assert len(task.items) == 50 and task.kind == "accuracy"
    assert all(it.numeric and it.check is None for it in task.items)
    held = get_task("arithmetic:1").examples("heldout", 50, seed=0)
    assert [it.answer for it in task.items] == [e.answer for e in held]
    assert task.items[0].prompt == get_task("arithmetic:1").prompt(held[0])
    outs = [f"Answer: {it.answer}" for it in task.items[:25]] + ["no idea"] * 25
    scores = score_task(task, outs)
    assert scores["accuracy"] == 0.5 and scores["correct"] == 25


def test_split_count_and_max_examples():
    assert len(load_task("sentiment@train:12").items) == 12
    assert len(load_task("arithmetic:2@7").items) == 7
    assert len(load_task("arithmetic:2", max_examples=5).items) == 5
    heldout = len(get_task("format_one_word").examples("heldout"))
    assert len(load_task("format_one_word").items) == min(50, heldout), "the default never exceeds the split"
    with pytest.raises(UserError, match="requested, only"):
        load_task("format_one_word@heldout:1000")
    with pytest.raises(UserError, match="unknown split"):
        load_task("sentiment@test")


def test_sentiment_is_scored_by_label_word():
    task = load_task("sentiment@heldout:6")
    assert all(it.check == "label:positive,negative,neutral" for it in task.items)
    outs = [f"The sentiment is {it.answer}." for it in task.items[:3]]
    outs += ["It is hard to say." for _ in task.items[3:]]
    assert score_task(task, outs)["accuracy"] == 0.5


def test_format_tasks_score_the_format():
    words = load_task("format_one_word@heldout:4")
    assert all(it.check == "one_word" for it in words.items)
    assert score_task(words, ["Blue.", "blue", "light blue", "It is blue."])["accuracy"] == 0.5
    js = load_task("format_json@heldout:3")
    keys = [it.check.split(":")[1].split(",") for it in js.items]
    assert all(it.check.startswith("json:") for it in js.items)
    good = "Here you go: " + json.dumps({k: 1 for k in keys[0]})
    missing = json.dumps({keys[1][0]: 1})
    assert score_task(js, [good, missing, js.items[2].answer])["accuracy"] == pytest.approx(2 / 3)


def test_names_mix_with_files_and_unknown_names_list_builtins(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    tasks = load_tasks([str(f), "arithmetic:1", "arithmetic:1"], max_examples=3)
    assert [t.name for t in tasks] == ["mine", "arithmetic:1", "arithmetic:1-2"]
    with pytest.raises(UserError, match=r"task file not found: nope.*built-in tasks: arithmetic:1"):
        load_task("nope")


def test_existing_rows_without_check_score_as_before():
    task = Task("t", "t.jsonl", (TaskItem("q", answer="4", numeric=True), TaskItem("r", answer="Paris")))
    assert score_task(task, ["it is 4", "Paris"])["accuracy"] == 1.0


def test_run_eval_takes_builtin_names(tmp_path, tiny_model_dirs):
    from lmdistill.eval import run_eval

    _, student = tiny_model_dirs
    results = run_eval(
        [str(student)],
        tasks=["arithmetic:1@3", "format_json@2"],
        output_dir=str(tmp_path / "out"),
        max_new_tokens=2,
        batch_size=4,
        max_length=64,
        measure_memory=False,
        log=lambda *_: None,
    )
    quality = results["models"][0]["quality"]
    assert set(quality) == {"arithmetic:1@3", "format_json@2"}  # the name as given
    assert quality["arithmetic:1@3"]["examples"] == 3 and quality["format_json@2"]["examples"] == 2
    assert [t["path"] for t in results["tasks"]] == ["built-in:arithmetic:1@3", "built-in:format_json@2"]
