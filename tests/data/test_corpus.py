"""Demo prompts from the installed chatterbot-corpus package."""

from __future__ import annotations

import importlib.util

import pytest

from lmdistill.data import chatterbot_conversations, split_train_heldout
from lmdistill.data import corpus as corpus_mod
from lmdistill.errors import UserError


@pytest.fixture(scope="module")
def conversations():
    return chatterbot_conversations()


def test_real_conversations(conversations):
    assert len(conversations) > 500
    for c in conversations:
        assert set(c) == {"prompt", "response", "category"}
        assert all(isinstance(v, str) and v.strip() for v in c.values())
    cats = {c["category"] for c in conversations}
    assert {"ai", "food", "science"} <= cats
    assert conversations == chatterbot_conversations()  # deterministic
    assert [c["category"] for c in conversations] == sorted(c["category"] for c in conversations)


def test_category_filter(conversations):
    food = chatterbot_conversations(["food"])
    assert food and {c["category"] for c in food} == {"food"}
    assert food == [c for c in conversations if c["category"] == "food"]
    with pytest.raises(UserError, match="unknown chatterbot categories: nosuch"):
        chatterbot_conversations(["nosuch"])


def test_missing_package_tells_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "chatterbot_corpus" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"pip install chatterbot-corpus.*lmdistill\[demo\]"):
        corpus_mod.chatterbot_conversations()


def test_split_deterministic_and_disjoint():
    items = list(range(100))
    train, held = split_train_heldout(items, 0.2, seed=0)
    assert (train, held) == split_train_heldout(items, 0.2, seed=0)
    assert len(held) == 20 and len(train) == 80
    assert set(train).isdisjoint(held) and sorted(train + held) == items
    assert train == sorted(train) and held == sorted(held)  # input order kept
    assert split_train_heldout(items, 0.2, seed=1)[1] != held


def test_split_edge_cases():
    assert split_train_heldout([1, 2, 3], 0.0, seed=0) == ([1, 2, 3], [])
    assert len(split_train_heldout([1, 2, 3], 0.01, seed=0)[1]) == 1
    with pytest.raises(UserError, match="heldout_fraction"):
        split_train_heldout([1, 2], 1.0, seed=0)


def test_split_by_key_keeps_prompts_on_one_side(conversations):
    train, held = split_train_heldout(conversations, 0.1, seed=3, key=lambda c: c["prompt"])
    assert len(train) + len(held) == len(conversations) and held
    assert {c["prompt"] for c in train}.isdisjoint({c["prompt"] for c in held})
