"""Built-in tasks: determinism, disjoint splits, gold answers, prompts."""

from __future__ import annotations

import json

import pytest

from lmdistill.errors import UserError
from lmdistill.tasks import Example, Task, get_task, list_tasks, parse_spec
from lmdistill.tasks.arithmetic import LEVELS, solve
from lmdistill.tasks.registry import TaskSpec


def _n(task: Task, want: int) -> int | None:
    return want if task.pool is None else None


@pytest.mark.parametrize("name", list_tasks())
def test_deterministic_and_splits_disjoint(name):
    task = get_task(name)
    a = task.examples("train", _n(task, 300), seed=3)
    b = task.examples("train", _n(task, 300), seed=3)
    assert [e.question for e in a] == [e.question for e in b]
    held = {e.question.lower() for e in task.examples("heldout", _n(task, 200), seed=0)}
    other_seed = {e.question.lower() for e in task.examples("train", _n(task, 300), seed=7)}
    assert held and not held & {e.question.lower() for e in a}
    assert not held & other_seed, "a question is held out or not, whatever the seed"
    assert len({e.question for e in a}) == len(a), "no duplicate questions within a split"


def test_seed_changes_the_sample_but_not_the_split():
    task = get_task("arithmetic:2")
    s0 = [e.question for e in task.examples("train", 20, seed=0)]
    s1 = [e.question for e in task.examples("train", 20, seed=1)]
    assert s0 != s1
    assert all(not task.in_heldout(q) for q in s0 + s1)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_arithmetic_gold_recomputes_from_meta(level):
    task = get_task(f"arithmetic:{level}")
    spec = LEVELS[level]
    for ex in task.examples("train", 60, seed=level) + task.examples("heldout", 20):
        steps = [tuple(s) for s in ex.meta["steps"]]
        assert len(steps) == spec.steps and ex.meta["level"] == level
        assert ex.answer == str(solve(ex.meta["start"], steps))
        assert int(ex.answer) >= 0
        value = ex.meta["start"]
        for op, n in steps:  # every intermediate count stays >= 0, numbers within the level's range
            assert spec.operand[0] <= n <= spec.operand[1]
            value = value + n if op == "+" else value - n
            assert value >= 0
        assert str(ex.meta["start"]) in ex.question and ex.meta["name"] in ex.question
        assert ex.rationale.startswith(f"{ex.meta['name']} starts with {ex.meta['start']}.")
        assert ex.rationale.endswith(f"= {ex.answer}.")
        assert task.check(f"Answer: {ex.answer}", ex)


def test_arithmetic_rationale_format():
    ex = next(
        e
        for e in get_task("arithmetic:3").examples("train", 50)
        if [s[0] for s in e.meta["steps"]] == ["+", "-"]
    )
    (_, a), (_, b) = ex.meta["steps"]
    start = ex.meta["start"]
    assert (
        ex.rationale
        == f"{ex.meta['name']} starts with {start}. {start} + {a} = {start + a}. {start + a} - {b} = {start + a - b}."
    )


def test_levels_get_harder():
    sizes = [max(int(e.answer) for e in get_task(f"arithmetic:{lv}").examples("train", 100)) for lv in (1, 4)]
    assert sizes[0] <= 10 < sizes[1]
    one = get_task("arithmetic:1").examples("train", 100)
    assert all(1 <= ex.meta["start"] <= 5 for ex in one)


def test_sentiment_pool_is_balanced_and_large():
    task = get_task("sentiment")
    train, held = task.examples("train"), task.examples("heldout")
    assert len(train) >= 300 and len(held) >= 100
    for split in (train, held):
        counts = {lab: sum(e.answer == lab for e in split) for lab in task.choices}
        assert min(counts.values()) > len(split) / 5
    assert task.check("Negative.", Example("x", "negative"))
    assert "positive, negative or neutral" in task.prompt(held[0])


def test_format_tasks_gold_and_prompts():
    one = get_task("format_one_word")
    banana = next(e for e in one.examples("train") + one.examples("heldout") if "banana" in e.question)
    assert banana.answer == "yellow"
    assert one.prompt(banana) == "What colour is a banana? Answer in one word."
    js = get_task("format_json")
    for ex in js.examples("train") + js.examples("heldout"):
        gold = json.loads(ex.answer)
        assert list(gold) == ex.meta["keys"], "the reference answer has exactly the asked keys"
        assert js.check(ex.answer, ex)
        assert all(f'"{k}"' in ex.question for k in ex.meta["keys"])
    cat = next(e for e in js.examples("train") + js.examples("heldout") if "'cat'" in e.question)
    assert cat.meta["values"]["legs"] == 4


def test_examples_errors():
    with pytest.raises(UserError, match=r"only .* available"):
        get_task("format_one_word").examples("heldout", 10_000)
    with pytest.raises(UserError, match="unknown split"):
        get_task("sentiment").examples("test")
    with pytest.raises(UserError, match="say how many"):
        get_task("arithmetic:1").examples("train")


def test_registry_names_and_errors():
    assert {"arithmetic:1", "arithmetic:4", "sentiment", "format_one_word", "format_json"} <= set(
        list_tasks()
    )
    with pytest.raises(UserError, match=r"unknown task 'nope'.*arithmetic:1.*sentiment"):
        get_task("nope")
    with pytest.raises(UserError, match="needs a level"):
        get_task("arithmetic")
    with pytest.raises(UserError, match="task file not found"):
        get_task("missing.jsonl")
    assert parse_spec("arithmetic:1") == TaskSpec("arithmetic:1", "heldout", None)
    assert parse_spec("sentiment@train:100") == TaskSpec("sentiment", "train", 100)
    assert parse_spec("sentiment@20") == TaskSpec("sentiment", "heldout", 20)
    with pytest.raises(UserError, match="unknown split"):
        parse_spec("sentiment@test")
    with pytest.raises(UserError, match="positive integer"):
        parse_spec("sentiment@train:0")
