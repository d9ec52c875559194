"""Each evaluation metric against hand-computed values."""

from __future__ import annotations

import json
import re

import pytest

from lmdistill.errors import UserError
from lmdistill.eval import (
    compression_ratio,
    disk_size,
    find_training_log,
    generation_agreement,
    is_correct,
    load_task,
    percentile,
    read_training_curves,
    score_task,
    speedup,
)
from lmdistill.eval.tasks import Task, TaskItem
from lmdistill.text import rouge_l


def test_answer_extraction_and_accuracy():
    assert is_correct("Let me think. Answer: 42.", "42", numeric=True)
    assert is_correct("3 + 4 = 7\n#### 1,000", "1000", numeric=True)
    assert is_correct("she has 2 then 5 apples", "5.0", numeric=True)  # last number
    assert not is_correct("she has 5 then 2 apples", "5", numeric=True)
    assert is_correct("The answer is: Paris.", "paris", numeric=False)
    assert is_correct("  Paris ", "Paris", numeric=False)  # nothing to extract -> the whole output
    assert not is_correct("London", "Paris", numeric=False)

    task = Task(
        "qa",
        "qa.jsonl",
        (
            TaskItem("q1", answer="4", numeric=True),
            TaskItem("q2", answer="paris"),
            TaskItem("q3", answer="12", numeric=True),
            TaskItem("q4", answer="blue"),
        ),
    )
    scores = score_task(task, ["2+2 is 4", "Answer: Paris", "about 13", "Answer: red"])
    assert scores["kind"] == "accuracy" and scores["correct"] == 2
    assert scores["accuracy"] == pytest.approx(0.5) and scores["score"] == scores["accuracy"]
    assert scores["rouge_l"] is None


def test_rouge_task_reuses_rouge_l():
    # LCS("the cat sat", "the cat sat on the mat") = 3 words: P = 1, R = 1/2, F1 = 2/3
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    task = Task(
        "sum",
        "sum.jsonl",
        (TaskItem("p1", reference="the cat sat on the mat"), TaskItem("p2", reference="x y")),
    )
    scores = score_task(task, ["the cat sat", "x y"])
    assert scores["kind"] == "rouge_l" and scores["accuracy"] is None
    assert scores["score"] == pytest.approx((2 / 3 + 1) / 2)


def test_load_task_gold_forms_and_errors(tmp_path):
    f = tmp_path / "t.jsonl"
    rows = [
        {"question": "a?", "answer": "step 1... #### 1,200"},
        {"question": "b?", "answer": "Paris"},
        {"question": "c?", "answer": "7", "numeric": False},
        {"prompt": "d?", "reference": "a summary"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task(f)
    assert [it.answer for it in task.items[:3]] == ["1,200", "Paris", "7"]
    assert [it.numeric for it in task.items] == [True, False, False, False]
    assert task.kind == "accuracy" and task.items[3].reference == "a summary"
    assert len(load_task(f, max_examples=2).items) == 2

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps({"question": "no gold"}) + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(bad))}:3: .*'answer'.*'reference'"):
        load_task(bad)
    with pytest.raises(UserError, match="task file not found"):
        load_task(tmp_path / "nope.jsonl")


def test_percentile_on_known_numbers():
    xs = [float(i) for i in range(10, 0, -1)]  # 1..10, unsorted
    assert percentile(xs, 50) == pytest.approx(5.5)
    assert percentile(xs, 95) == pytest.approx(9.55)  # rank 8.55 -> 9 + 0.55
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 10.0
    assert percentile([0.2], 95) == 0.2
    assert percentile([], 50) is None


def test_compression_and_speedup_arithmetic():
    assert compression_ratio(1_000_000, 250_000) == pytest.approx(4.0)
    assert compression_ratio(100, 100) == pytest.approx(1.0)
    assert speedup(30.0, 10.0) == pytest.approx(3.0)
    assert speedup(5.0, 10.0) == pytest.approx(0.5)
    assert compression_ratio(None, 10) is None and speedup(3.0, None) is None and speedup(3.0, 0.0) is None


def test_generation_agreement():
    out = generation_agreement(["a b", "x"], ["a  b", "y z"])
    assert out == {"exact_match": 0.5, "rouge_l": pytest.approx(0.5), "examples": 2}


def test_disk_size_and_training_logs(tmp_path):
    run = tmp_path / "run"
    student = run / "student"
    student.mkdir(parents=True)
    (student / "model.safetensors").write_bytes(b"x" * 100)
    (student / "tokenizer.json").write_text("{}")
    assert disk_size(student) == 100
    assert disk_size(tmp_path) is None
    assert find_training_log(student) is None and read_training_curves(None) == {}
    for step, loss in ((2, 3.0), (10, 1.0)):
        ck = run / f"checkpoint-{step}"
        ck.mkdir()
        history = [{"step": s, "loss": loss + s, "ce": 1.0, "kd": 0.5} for s in range(1, step + 1)]
        history.append({"step": step, "train_runtime": 1.0})
        (ck / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    state = find_training_log(student)
    assert state == run / "checkpoint-10" / "trainer_state.json"  # the latest, not checkpoint-2
    curves = read_training_curves(state)
    assert set(curves) == {"loss", "ce", "kd"} and len(curves["loss"]) == 10
    assert curves["loss"][0] == (1.0, 2.0)


def test_multiple_choice_tasks(tmp_path):
    import json

    from lmdistill.errors import UserError
    from lmdistill.eval.tasks import is_correct, load_task, predicted_choice

    choices = ["positive", "negative", "neutral"]
    assert predicted_choice("Answer: B", choices) == "negative"
    assert predicted_choice("B. negative", choices) == "negative"
    assert predicted_choice("I think it is neutral, not positive.", choices) == "neutral"
    assert predicted_choice("no idea", choices) is None
    assert is_correct("Answer: positive", "positive", numeric=False, choices=choices)
    path = tmp_path / "mc.jsonl"
    path.write_text(
        json.dumps({"question": "Sentiment of 'I love it'?", "choices": choices, "answer": "A"}) + "\n"
    )
    [item] = load_task(path).items
    assert item.answer == "positive" and "A. positive" in item.prompt and not item.numeric
    path.write_text(json.dumps({"question": "q", "choices": choices, "answer": "maybe"}) + "\n")
    with pytest.raises(UserError, match=r"mc\.jsonl:1: the 'answer' must be one of the choices"):
        load_task(path)
