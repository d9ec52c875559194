"""The ICL layout: instruction, k demonstrations, query; demonstration selection."""

from __future__ import annotations

import pytest

from lmdistill.errors import UserError
from lmdistill.tasks import Example, Task, get_task, icl_prompt, select_demos, similarity

TASK = Task(
    name="tiny",
    instruction="Add the numbers.",
    check_kind="numeric",
    numeric=True,
    pool=(Example("0+0", "0"),),
)
DEMOS = [Example("1 + 1", "2", rationale="1 + 1 = 2."), Example("2 + 3", "5", rationale="2 + 3 = 5.")]
QUERY = Example("4 + 4", "8")


def test_layout_exact_string():
    assert icl_prompt(TASK, DEMOS, QUERY) == (
        "Add the numbers.\n\nQ: 1 + 1\nA: 2\n\nQ: 2 + 3\nA: 5\n\nQ: 4 + 4\nA:"
    )


def test_custom_template_with_rationale_and_separator():
    text = icl_prompt(
        TASK,
        DEMOS[:1],
        QUERY,
        template="Question: {question}\nSolution: {rationale}\nAnswer: {answer}",
        separator="\n",
    )
    assert (
        text
        == "Add the numbers.\nQuestion: 1 + 1\nSolution: 1 + 1 = 2.\nAnswer: 2\nQuestion: 4 + 4\nSolution:"
    )


def test_braces_in_texts_are_left_alone_and_empty_instruction_dropped():
    demo = Example('Describe a cat as JSON with the key "name".', '{"name": "{answer}"}')
    text = icl_prompt(TASK, [demo], QUERY, instruction="")
    assert text == 'Q: Describe a cat as JSON with the key "name".\nA: {"name": "{answer}"}\n\nQ: 4 + 4\nA:'


def test_zero_shot_is_the_task_prompt():
    task = get_task("arithmetic:1")
    q = task.examples("heldout", 1)[0]
    assert icl_prompt(task, [], q) == task.prompt(q)
    assert select_demos(task.examples("train", 5), q, 0) == []


def test_template_errors():
    with pytest.raises(UserError, match="no \\{question\\}"):
        icl_prompt(TASK, DEMOS, QUERY, template="A: {answer}")
    with pytest.raises(UserError, match="no \\{answer\\} or \\{rationale\\}"):
        icl_prompt(TASK, DEMOS, QUERY, template="Q: {question}")


def test_nearest_picks_the_lexically_closest_and_never_the_query():
    pool = [
        Example("The museum opens at ten o'clock.", "neutral"),
        Example("I loved the pizza, it was wonderful.", "positive"),
        Example("I hated the pizza, it was awful.", "negative"),
        Example("The pizza costs ten dollars.", "neutral"),
        Example("I loved the pizza, it was great.", "positive"),  # the query itself
    ]
    query = Example("I loved the pizza, it was great.", "positive")
    picked = select_demos(pool, query, 2, method="nearest")
    assert [e.question for e in picked] == [
        "I loved the pizza, it was wonderful.",
        "I hated the pizza, it was awful.",
    ]
    assert similarity("a b c", "A B d") == pytest.approx(2 / 4)
    assert similarity("", "") == 0.0


def test_random_selection_is_seeded_and_excludes_the_query():
    pool = [Example(f"q{i}", str(i)) for i in range(20)]
    query = pool[3]
    a = select_demos(pool, query, 5, seed=1)
    assert a == select_demos(pool, query, 5, seed=1)
    assert a != select_demos(pool, query, 5, seed=2)
    assert query not in a and len(set(e.question for e in a)) == 5


def test_k_too_large_and_bad_method():
    pool = [Example(f"q{i}", str(i)) for i in range(5)]
    with pytest.raises(UserError, match="k=8 demonstrations requested, only 5 available"):
        select_demos(pool, Example("other", "x"), 8)
    with pytest.raises(UserError, match="only 4 available"):
        select_demos(pool, pool[0], 5)  # the query does not count
    with pytest.raises(UserError, match="unknown demonstration selection"):
        select_demos(pool, pool[0], 1, method="best")
    with pytest.raises(UserError, match="k must be >= 0"):
        select_demos(pool, pool[0], -1)
