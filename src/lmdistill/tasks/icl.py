"""The in-context-learning prompt layout of the survey: an instruction I, then k demonstrations
f(x_1, y_1) ... f(x_k, y_k), then the query f(x_{k+1}, .) whose answer the model writes.

    Classify the sentiment ...            <- I
                                          <- separator
    Q: The meal was great.                <- f(x_1, y_1), from `template`
    A: positive
                                          <- separator
    Q: The bank opens at ten o'clock.     <- f(x_{k+1}, .): the template cut where its first answer
    A:                                       field ({answer} or {rationale}) begins

`select_demos` picks the k demonstrations from a pool: at random, or the lexically nearest to the
query (Jaccard similarity of lower-case word sets), never the query itself.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Literal

from lmdistill.errors import UserError
from lmdistill.tasks.base import Example, Task

DEFAULT_TEMPLATE = "Q: {question}\nA: {answer}"
_FIELD = re.compile(r"\{(question|answer|rationale)\}")
_WORDS = re.compile(r"[^\W_]+")


def _words(text: str) -> set[str]:
    return set(_WORDS.findall(text.lower()))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the lower-case word sets of two texts, in [0, 1]."""
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 0.0


def _same(a: Example, b: Example) -> bool:
    return " ".join(a.question.lower().split()) == " ".join(b.question.lower().split())


def select_demos(
    pool: Sequence[Example],
    query: Example,
    k: int,
    method: Literal["random", "nearest"] = "random",
    seed: int = 0,
) -> list[Example]:
    """k demonstrations for `query` from `pool` (any example with the query's question is skipped).

    "random": a seeded sample, the same for the same seed and query. "nearest": the k most similar
    questions (`similarity`), most similar first; ties keep pool order.
    """
    if k < 0:
        raise UserError(f"k must be >= 0, got {k}")
    candidates = [e for e in pool if not _same(e, query)]
    if k > len(candidates):
        raise UserError(f"k={k} demonstrations requested, only {len(candidates)} available")
    if method == "random":
        return random.Random(f"{seed}|{query.question}").sample(candidates, k)
    if method == "nearest":
        ranked = sorted(
            range(len(candidates)), key=lambda i: (-similarity(candidates[i].question, query.question), i)
        )
        return [candidates[i] for i in ranked[:k]]
    raise UserError(f"unknown demonstration selection {method!r}: use random or nearest")


def render(template: str, example: Example) -> str:
    """One demonstration f(x, y): {question}, {answer} and {rationale} replaced in one pass (so
    braces inside the texts are left alone)."""
    values = {"question": example.question, "answer": example.answer, "rationale": example.rationale or ""}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def render_query(template: str, example: Example) -> str:
    """f(x, .): the template up to its first answer field, the question filled in, right-stripped."""
    cut = min((m.start() for m in _FIELD.finditer(template) if m.group(1) != "question"), default=None)
    if cut is None:
        raise UserError(f"the demonstration template {template!r} has no {{answer}} or {{rationale}} field")
    return render(template[:cut], example).rstrip()


def icl_prompt(
    task: Task,
    demos: Sequence[Example],
    query: Example,
    template: str = DEFAULT_TEMPLATE,
    separator: str = "\n\n",
    instruction: str | None = None,
) -> str:
    """The k-shot prompt: instruction, demonstrations, query, joined by `separator`.

    With no demonstrations this is the task's 0-shot prompt (`task.prompt(query)`). `instruction`
    overrides the task's; an empty instruction is left out.
    """
    if "{question}" not in template:
        raise UserError(f"the demonstration template {template!r} has no {{question}} field")
    if not demos:
        return task.prompt(query)
    intro = task.instruction if instruction is None else instruction
    parts = [intro] if intro.strip() else []
    parts += [render(template, d) for d in demos]
    parts.append(render_query(template, query))
    return separator.join(parts)
