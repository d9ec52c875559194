"""Task names: the built-in tasks, user files, and the `NAME[@SPLIT][:N]` form `lmdistill eval` takes.

get_task("arithmetic:2")        # a built-in task
get_task("data/riddles.jsonl")  # a user task file (see `lmdistill.tasks.user`)
parse_spec("sentiment@train:200") -> TaskSpec("sentiment", "train", 200)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lmdistill.errors import UserError
from lmdistill.tasks.arithmetic import LEVELS, arithmetic_task
from lmdistill.tasks.base import SPLITS, Task
from lmdistill.tasks.formats import json_task, one_word_task
from lmdistill.tasks.sentiment import sentiment_task
from lmdistill.tasks.user import load_task

BUILTIN: dict[str, Callable[[], Task]] = {
    **{f"arithmetic:{lv}": (lambda lv=lv: arithmetic_task(lv)) for lv in LEVELS},
    "sentiment": sentiment_task,
    "format_one_word": one_word_task,
    "format_json": json_task,
}

DEFAULT_SPLIT = "heldout"  # what `lmdistill eval` scores unless told otherwise
DEFAULT_COUNT = 50


def list_tasks() -> list[str]:
    """The built-in task names."""
    return list(BUILTIN)


def is_builtin(name: str) -> bool:
    """Whether `name` (optionally with @split / :n, not checked here) names a built-in task."""
    return name.partition("@")[0] in BUILTIN


@cache
def _builtin(name: str) -> Task:
    return BUILTIN[name]()  # built once: the pools are fixed


def _unknown(name: str) -> UserError:
    hint = ""
    if name == "arithmetic":
        hint = f" (arithmetic needs a level: arithmetic:1 ... arithmetic:{max(LEVELS)})"
    return UserError(
        f"unknown task {name!r}{hint}; built-in tasks: {', '.join(BUILTIN)}; "
        "or give a .jsonl file with 'question' and 'answer' per line"
    )


def get_task(name: str | Path) -> Task:
    """A built-in task by name, or a user task from an existing file path (or one ending .jsonl)."""
    text = str(name)
    if text in BUILTIN:
        return _builtin(text)
    path = Path(text).expanduser()
    if path.is_file() or text.endswith(".jsonl"):
        return load_task(path)  # a missing .jsonl says "task file not found"
    raise _unknown(text)


@dataclass(frozen=True)
class TaskSpec:
    """A parsed `NAME[@SPLIT][:N]`: which task, which split, how many examples (None: default)."""

    name: str
    split: str = DEFAULT_SPLIT
    n: int | None = None


def parse_spec(spec: str) -> TaskSpec:
    """Parse `NAME[@SPLIT][:N]`, e.g. "arithmetic:1", "sentiment@train", "arithmetic:3@heldout:100".

    The split and count come after "@" (so "arithmetic:1" stays a name); "@100" alone is a count.
    """
    name, at, rest = spec.partition("@")
    if not at:
        return TaskSpec(name)
    split, _, count = rest.partition(":")
    if split.isdigit() and not count:
        split, count = DEFAULT_SPLIT, split
    if split not in SPLITS:
        raise UserError(f"task {spec!r}: unknown split {split!r}; use {' or '.join(SPLITS)}")
    if count and (not count.isdigit() or int(count) < 1):
        raise UserError(f"task {spec!r}: the count after ':' must be a positive integer, got {count!r}")
    return TaskSpec(name, split, int(count) if count else None)
