"""Layer mapping: strategies give the documented pairs; bad input fails with a message naming the pair."""

from __future__ import annotations

import re

import pytest

from lmdistill.errors import UserError
from lmdistill.hints import STRATEGIES, format_layer_map, pair_key, resolve_layer_map


def teachers(pairs):
    return [t for _, t in pairs]


def test_uniform_examples():
    pairs = resolve_layer_map("uniform", 10, 30)
    assert pairs == list(zip(range(10), [2, 5, 8, 11, 14, 17, 20, 23, 26, 29], strict=True))
    assert resolve_layer_map("uniform", 4, 12) == [(0, 2), (1, 5), (2, 8), (3, 11)]
    assert resolve_layer_map("uniform", 3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert resolve_layer_map("uniform", 1, 7) == [(0, 6)]
    # Half-way depths round up: 2 * 5 / 4 = 2.5 -> 3 -> layer 2.
    assert resolve_layer_map("uniform", 4, 5) == [(0, 0), (1, 2), (2, 3), (3, 4)]


def test_uniform_properties():
    for num_teacher in range(1, 33):
        for num_student in range(1, num_teacher + 1):
            pairs = resolve_layer_map("uniform", num_student, num_teacher)
            assert [s for s, _ in pairs] == list(range(num_student))
            t = teachers(pairs)
            assert t[-1] == num_teacher - 1
            assert t == sorted(set(t)), (num_student, num_teacher, t)
    # A student deeper than its teacher still gets valid, non-decreasing layers.
    t = teachers(resolve_layer_map("uniform", 6, 2))
    assert t == sorted(t) and min(t) == 0 and max(t) == 1


def test_last_and_first_last():
    assert resolve_layer_map("last", 10, 30) == [(9, 29)]
    assert resolve_layer_map("first_last", 10, 30) == [(0, 0), (9, 29)]
    assert resolve_layer_map("first_last", 1, 30) == [(0, 29)]
    assert resolve_layer_map("first_last", 1, 1) == [(0, 0)]
    assert resolve_layer_map("first_last", 3, 1) == [(0, 0), (2, 0)]


def test_copied():
    assert resolve_layer_map("copied", 3, 6, copied_layers=[0, 3, 5]) == [(0, 0), (1, 3), (2, 5)]


@pytest.mark.parametrize(
    ("copied", "pattern"),
    [
        (None, "copied"),
        ([0, 3], "lists 2 teacher layers .* 3 layers"),
        ([0, 3, 6], r"pair \[2, 6\]: teacher layer 6 does not exist"),
    ],
)
def test_copied_errors(copied, pattern):
    with pytest.raises(UserError, match=pattern):
        resolve_layer_map("copied", 3, 6, copied_layers=copied)


def test_explicit_pairs():
    assert resolve_layer_map([[0, 4], [3, 29]], 10, 30) == [(0, 4), (3, 29)]
    assert resolve_layer_map([(2, 1)], 10, 30) == [(2, 1)]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (
            [[3, 40]],
            "hints.layers: pair [3, 40]: teacher layer 40 does not exist (teacher has 30 layers: 0..29)",
        ),
        (
            [[0, 1], [10, 5]],
            "hints.layers: pair [10, 5]: student layer 10 does not exist (student has 10 layers: 0..9)",
        ),
        ([[-1, 5]], "pair [-1, 5]: student layer -1 does not exist"),
        ([[1, 2, 3]], "item 0 ([1, 2, 3]) is not a [student_layer, teacher_layer] pair"),
        ([[0, 1], [1, "2"]], "item 1 ([1, '2']) is not a [student_layer, teacher_layer] pair"),
        ([[0, True]], "item 0 ([0, True]) is not"),
        ([5], "item 0 (5) is not"),
        ([[1, 2], [1, 2]], "pair [1, 2] is listed twice"),
        ([], "is empty"),
    ],
)
def test_explicit_errors(pairs, message):
    with pytest.raises(UserError, match=re.escape(message)):
        resolve_layer_map(pairs, 10, 30)


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(UserError) as info:
        resolve_layer_map("evenly", 10, 30)
    assert "'evenly'" in str(info.value)
    assert all(name in str(info.value) for name in STRATEGIES)
    with pytest.raises(UserError):
        resolve_layer_map(3, 10, 30)


def test_bad_layer_counts():
    with pytest.raises(UserError):
        resolve_layer_map("uniform", 0, 30)


def test_pair_key():
    assert pair_key(3, 9) == "s3_t9"


def test_format_layer_map():
    text = format_layer_map([(0, 2), (1, 5)], 384, [576] * 5 + [384], "linear")
    lines = text.splitlines()
    assert len(lines) == 3
    assert "student layer" in lines[0] and "teacher layer" in lines[0] and "projection" in lines[0]
    assert lines[1].split()[:2] == ["0", "2"] and "384 -> 576" in lines[1] and "linear 384->576" in lines[1]
    assert lines[2].split()[:2] == ["1", "5"] and lines[2].endswith("identity")
