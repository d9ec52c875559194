"""Every checker on hand-written outputs."""

from __future__ import annotations

import pytest

from lmdistill.tasks import Example, get_task
from lmdistill.tasks.checks import check_output, extract, matches_gold, one_word


@pytest.mark.parametrize(
    ("output", "ok"),
    [
        ("4", True),
        ("Answer: 4", True),
        ("Alice has 3 + 2 - 1 = 4 apples.", True),  # the last number
        ("She ends with 4 apples.\n#### 4", True),
        ("The answer is: 4.0", True),
        ("5", False),
        ("Answer: 5\nSo she has 4.", False),  # the stated answer wins over later numbers
        ("I don't know", False),
        ("", False),
    ],
)
def test_numeric(output, ok):
    assert check_output("numeric", output, "4") is ok


def test_numeric_task_extract():
    task = get_task("arithmetic:1")
    ex = Example("Alice has 1 apple and eats 1. How many apples does Alice have now?", "0")
    assert task.extract("Answer: 0 apples") == "0"
    assert task.check("She has 0 apples left.", ex)
    assert not task.check("She has 1 apple left, minus 1", ex)


@pytest.mark.parametrize(
    ("output", "label"),
    [
        ("positive", "positive"),
        ("Negative.", "negative"),
        ("The sentiment of this sentence is neutral.", "neutral"),
        ("Answer: negative", "negative"),
        ("It is positive, not negative.", "positive"),  # the first label named
        ("Answer: neutral (it could seem positive)", "neutral"),
        ("POSITIVE!", "positive"),
        ("The sentence is nonpositive", None),  # whole words only
        ("I cannot tell.", None),
    ],
)
def test_label(output, label):
    spec = "label:positive,negative,neutral"
    assert extract(spec, output) == label
    assert check_output(spec, output, "positive") is (label == "positive")


@pytest.mark.parametrize(
    ("output", "word"),
    [
        ("Yellow", "Yellow"),
        ("  yellow.\n", "yellow"),
        ('"Yellow"', "Yellow"),
        ("**Yellow**", "Yellow"),
        ("Yellow!", "Yellow"),
        ("cock-a-doodle-doo", "cock-a-doodle-doo"),
        ("It's", "It's"),
        ("Light yellow", None),
        ("Answer: yellow", "yellow"),
        ("A: Sunday.", "Sunday"),
        ("A: two words", None),  # the layout's label is stripped, the rest must be one word
        ("The answer is yellow.", None),
        ("", None),
        ("...", None),
    ],
)
def test_one_word(output, word):
    assert one_word(output) == word
    assert check_output("one_word", output, "yellow") is (word is not None)


def test_one_word_gold_match_and_aliases():
    spider = Example("How many legs does a spider have?", "eight", meta={"aliases": ["8"]})
    assert matches_gold("one_word", "Eight.", spider)
    assert matches_gold("one_word", "8", spider)
    assert not matches_gold("one_word", "Six", spider)
    assert not matches_gold("one_word", "It has eight", spider)
    task = get_task("format_one_word")
    assert task.grade("Eight.", spider) == {"passed": True, "correct": True, "extracted": "Eight"}
    assert task.grade("Six", spider)["passed"] and not task.grade("Six", spider)["correct"]


def _json_example(values=None) -> Example:
    return Example(
        'Describe the animal \'cat\' as a JSON object with the keys "name" and "legs".',
        '{"name": "cat", "legs": 4}',
        meta={
            "keys": ["name", "legs"],
            "values": values if values is not None else {"name": "cat", "legs": 4},
        },
    )


@pytest.mark.parametrize(
    ("output", "passed", "correct"),
    [
        ('{"name": "cat", "legs": 4}', True, True),
        ('Sure! Here it is:\n```json\n{"name": "Cat", "legs": "4"}\n```\nHope that helps.', True, True),
        ('{"name": "cat", "legs": 2}', True, False),
        ('{"name": "cat"}', False, False),  # a missing key
        ('{"name": "cat", "legs": 4, "tail": true}', False, True),  # an extra key breaks the format
        ('{"name": "cat", "legs": 4', False, False),  # cut off: no object parses
        ("name: cat, legs: 4", False, False),
        ('["cat", 4]', False, False),
    ],
)
def test_json(output, passed, correct):
    task = get_task("format_json")
    ex = _json_example()
    assert task.check(output, ex) is passed
    assert task.grade(output, ex)["correct"] is correct


def test_json_without_computable_values_has_no_content_verdict():
    ex = _json_example(values={"name": None, "legs": None})
    assert get_task("format_json").grade('{"name": "x", "legs": 1}', ex)["correct"] is None


def test_exact_and_unknown_spec():
    assert check_output("exact", "Paris", "paris")
    assert check_output("exact", "I think so.\nAnswer: Paris.", "Paris")
    assert not check_output("exact", "The capital is Paris.", "Paris")
    with pytest.raises(ValueError, match="unknown check"):
        check_output("regex:x", "x", "x")


@pytest.mark.parametrize(
    ("output", "picked"),
    [
        # Scored "positive" by eval's multiple choice before (substring of "nonpositive"), "negative"
        # by the label check (whole words): one rule set now, so both read "negative".
        ("The review is nonpositive; overall negative.", "negative"),
        ("Answer: neutral (it could seem positive)", "neutral"),
        ("It is positive, not negative.", "positive"),
        ("NEGATIVE!", "negative"),
        ("I cannot tell.", None),
    ],
)
def test_label_check_and_eval_multiple_choice_agree(output, picked):
    from lmdistill.eval.tasks import is_correct, predicted_choice
    from lmdistill.tasks.checks import choice_in

    labels = ["positive", "negative", "neutral"]
    assert extract("label:positive,negative,neutral", output) == picked
    assert predicted_choice(output, labels) == picked
    for gold in labels:
        label_says = check_output("label:positive,negative,neutral", output, gold)
        assert label_says is is_correct(output, gold, numeric=False, choices=labels) is (picked == gold)
    assert choice_in(output, labels) == choice_in(output, labels, letters=True) == picked


def test_letters_only_where_options_are_lettered():
    from lmdistill.tasks.checks import choice_in

    labels = ["positive", "negative", "neutral"]
    assert choice_in("Answer: B", labels, letters=True) == "negative"
    assert choice_in("B. negative", labels, letters=True) == "negative"
    assert choice_in("B. negative", labels) == "negative"  # named, not lettered
    assert choice_in("Answer: B", labels) is None  # a label task shows no letters
    assert choice_in("not positive at all", ["positive", "not positive"]) == "not positive"  # longer wins


@pytest.mark.parametrize("output", ["Answer: 1,000", "so 999 + 1 = 1000", "#### 1000.0", "Answer: 100"])
def test_numeric_check_and_eval_accuracy_agree(output):
    from lmdistill.eval.tasks import is_correct

    assert check_output("numeric", output, "1000") is is_correct(output, "1000", numeric=True)
    assert check_output("exact", output, "1,000") is is_correct(output, "1,000", numeric=False)
