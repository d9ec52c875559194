"""Arithmetic word problems in levels, with gold answers and gold rationales.

"Alice has 3 apples and buys 2 more, then eats 1. How many apples does Alice have now?"
Answer "4"; rationale "Alice starts with 3. 3 + 2 = 5. 5 - 1 = 4."

Every step adds or takes away; every intermediate count stays >= 0, so the answer is an integer
>= 0. meta carries what recomputes the answer: {"level", "start", "steps": [["+", 2], ["-", 1]]}.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lmdistill.tasks.base import Example, Task


@dataclass(frozen=True)
class Level:
    """Steps per problem, and the ranges of the starting count and of each step's number."""

    steps: int
    start: tuple[int, int]
    operand: tuple[int, int]
    about: str


LEVELS: dict[int, Level] = {
    1: Level(1, (1, 5), (1, 5), "one step, numbers 1-5"),
    2: Level(1, (1, 20), (1, 20), "one step, numbers up to 20"),
    3: Level(2, (1, 20), (1, 10), "two steps, numbers up to 20"),
    4: Level(3, (10, 50), (2, 20), "three steps, numbers up to 50"),
    5: Level(4, (20, 100), (5, 40), "four steps, numbers up to 100"),
}

NAMES = (
    "Alice", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jack", "Kemi",
    "Liam", "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
    "Will", "Yuki", "Zoe",
)  # fmt: skip

# (singular, plural, ways to get more, ways to have fewer); {n} is the step's number.
OBJECTS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("apple", "apples", ("buys {n} more", "picks {n} more"), ("eats {n}", "gives {n} to a friend")),
    ("pencil", "pencils", ("buys {n} more", "finds {n} more"), ("loses {n}", "gives {n} to a friend")),
    ("marble", "marbles", ("wins {n} more", "finds {n} more"), ("loses {n}", "gives {n} away")),
    ("sticker", "stickers", ("gets {n} more", "buys {n} more"), ("uses {n}", "gives {n} away")),
    ("book", "books", ("buys {n} more", "borrows {n} more"), ("sells {n}", "gives {n} away")),
    ("cookie", "cookies", ("bakes {n} more", "buys {n} more"), ("eats {n}", "shares {n} with a friend")),
    ("coin", "coins", ("finds {n} more", "earns {n} more"), ("spends {n}", "loses {n}")),
    ("card", "cards", ("buys {n} more", "wins {n} more"), ("trades away {n}", "loses {n}")),
    ("balloon", "balloons", ("buys {n} more", "gets {n} more"), ("pops {n}", "gives {n} away")),
    ("shell", "shells", ("collects {n} more", "finds {n} more"), ("drops {n}", "gives {n} away")),
    ("orange", "oranges", ("buys {n} more", "picks {n} more"), ("eats {n}", "sells {n}")),
    ("flower", "flowers", ("picks {n} more", "plants {n} more"), ("gives {n} away", "sells {n}")),
    ("stamp", "stamps", ("buys {n} more", "gets {n} more"), ("uses {n}", "trades away {n}")),
    ("egg", "eggs", ("buys {n} more", "collects {n} more"), ("cooks {n}", "breaks {n}")),
)


def solve(start: int, steps: list[tuple[str, int]]) -> int:
    """The count after applying `steps` ([("+", 2), ("-", 1)]) to `start`."""
    value = start
    for op, n in steps:
        value = value + n if op == "+" else value - n
    return value


def rationale(name: str, start: int, steps: list[tuple[str, int]]) -> str:
    """The steps written out: "Alice starts with 3. 3 + 2 = 5. 5 - 1 = 4." """
    parts = [f"{name} starts with {start}."]
    value = start
    for op, n in steps:
        new = solve(value, [(op, n)])
        parts.append(f"{value} {op} {n} = {new}.")
        value = new
    return " ".join(parts)


def sample_problem(rng: random.Random, level: int) -> Example:
    """One random word problem of `level`."""
    spec = LEVELS[level]
    name = rng.choice(NAMES)
    singular, plural, more, fewer = rng.choice(OBJECTS)
    start = rng.randint(*spec.start)
    steps: list[tuple[str, int]] = []
    phrases: list[str] = []
    value = start
    for _ in range(spec.steps):
        n = rng.randint(*spec.operand)
        # take away only what is there, so every count stays >= 0
        op = "-" if n <= value and rng.random() < 0.5 else "+"
        steps.append((op, n))
        phrases.append(rng.choice(more if op == "+" else fewer).format(n=n))
        value = solve(value, [(op, n)])
    has = f"{start} {singular if start == 1 else plural}"
    story = f"{name} has {has} and " + ", then ".join(phrases)
    question = f"{story}. How many {plural} does {name} have now?"
    return Example(
        question=question,
        answer=str(value),
        rationale=rationale(name, start, steps),
        meta={"level": level, "start": start, "steps": [list(s) for s in steps], "name": name},
    )


INSTRUCTION = "Solve the math problem. Reply with the final number only."


def arithmetic_task(level: int) -> Task:
    """The word-problem task of one level (see LEVELS)."""
    if level not in LEVELS:
        raise ValueError(f"arithmetic level {level} does not exist; levels: {sorted(LEVELS)}")
    return Task(
        name=f"arithmetic:{level}",
        instruction=INSTRUCTION,
        check_kind="numeric",
        numeric=True,
        sampler=lambda rng: sample_problem(rng, level),
        description=f"word problems, {LEVELS[level].about}; integer answers, gold rationales",
    )
