"""Answer extraction and comparison, against hand-written cases."""

from __future__ import annotations

import pytest

from lmdistill.text import extract_answer, majority, normalize_answer, parse_json_object


@pytest.mark.parametrize(
    ("text", "numeric", "expected"),
    [
        ("Reasoning: 3 + 2 = 5, minus 1 is 4.\nAnswer: 4", True, "4"),
        ("Reasoning: she has 4.\nAnswer: 4 apples.", True, "4"),
        ("The answer is: Paris.", False, "Paris"),
        ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18", True, "18"),
        ("She pays 1,200 dollars then 300 more", True, "300"),
        ("Answer: 1,000.50", True, "1000.5"),
        ("Answer: -3", True, "-3"),
        ("no digits here", True, None),
        ("no answer line here", False, None),
        ("Answer: positive\nAnswer: negative", False, "negative"),
        # an answer line with nothing after it (a cut answer) states nothing: the one before it counts
        ("Answer: 5\nAnswer:   ", True, "5"),
        ("She has 7 now. Answer:   ", True, "7"),
        ("Answer: \x85", False, None),  # a line-separator character only (regex '.' matches it)
    ],
)
def test_extract_answer(text, numeric, expected):
    assert extract_answer(text, numeric=numeric) == expected


def test_normalize_and_majority():
    assert normalize_answer("  Paris. ") == "paris"
    assert normalize_answer("12.0") == "12"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer(None) is None
    assert majority(["4", "4.0", "5", None]) == "4"
    assert majority([None, None]) is None
    assert majority(["b", "a", "a", "b"]) == "b"  # ties go to the first seen


def test_parse_json_object():
    assert parse_json_object('Sure! ```json\n{"answer": "yes", "n": 2}\n```') == {"answer": "yes", "n": 2}
    assert parse_json_object('{"a": {"b": 1}} trailing') == {"a": {"b": 1}}
    assert parse_json_object('{not json} then {"ok": true}') == {"ok": True}
    assert parse_json_object("[1, 2]") is None
    assert parse_json_object("nothing") is None
