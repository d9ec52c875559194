"""The task interface: examples with gold answers, a 0-shot prompt, a checker, and two splits.

A `Task` is either *finite* (a fixed pool of examples: user files, the format tasks, sentiment) or
*procedural* (a sampler that draws fresh examples: arithmetic). Both split the same way, by a hash
of the normalised question, so the train and held-out splits never share a question whatever the
seed, and a question stays in its split when the pool grows:

* finite: the distinct questions are ordered by that hash and the last `heldout_fraction` of them
  are held out (a row may also name its split, as user files allow);
* procedural: a question is held out when its hash falls in the first `heldout_fraction` of the
  hash range, and the sampler is drawn from until enough questions of the wanted split are found.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from lmdistill.errors import UserError
from lmdistill.tasks import checks

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")


@dataclass(frozen=True)
class Example:
    """One task example: the input x (no instruction), the gold answer y, optionally a rationale."""

    question: str
    answer: str
    rationale: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def _key(question: str) -> str:
    return " ".join(question.lower().split())


def question_hash(question: str) -> int:
    """A stable 64-bit hash of a question (case and spacing ignored); decides its split."""
    return int.from_bytes(hashlib.sha256(_key(question).encode()).digest()[:8], "big")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


@dataclass(frozen=True)
class Task:
    """A task with gold answers.

    Attributes:
        name: the registry name ("arithmetic:2", "sentiment", a file's stem).
        instruction: the instruction I shown before the question (and before ICL demonstrations).
        check_kind: how outputs are checked: "numeric", "exact", "label" (one of `choices`),
            "one_word" or "json" (the keys are in each example's meta["keys"]); see `checks`.
        numeric: answers are numbers (compared as numbers).
        choices: the allowed labels of a classification task, else None.
        pool: the examples of a finite task; `sampler` draws those of a procedural task.
        prompt_template: the 0-shot user message; {instruction} and {question} are replaced.
        heldout_fraction: the share of questions held out for evaluation.
        description: one line for `list_tasks` and the docs.
    """

    name: str
    instruction: str
    check_kind: str = "exact"
    numeric: bool = False
    choices: tuple[str, ...] | None = None
    pool: tuple[Example, ...] | None = None
    sampler: Callable[[random.Random], Example] | None = None
    prompt_template: str = "{instruction}\n\n{question}"
    heldout_fraction: float = 0.25
    description: str = ""

    def __post_init__(self) -> None:
        if (self.pool is None) == (self.sampler is None):
            raise ValueError("a Task needs exactly one of `pool` (finite) or `sampler` (procedural)")
        if self.check_kind not in checks.KINDS:
            raise ValueError(f"unknown check_kind {self.check_kind!r}; known: {', '.join(checks.KINDS)}")

    # ---- examples ---------------------------------------------------------------------------------
    def examples(self, split: Split = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        """`n` distinct examples of `split`, the same ones for the same seed.

        A finite task returns its split shuffled by `seed` (all of it when n is None); a
        procedural task needs `n`. Asking for more than a split holds is a UserError.
        """
        _check_split(split)
        if n is not None and n < 0:
            raise UserError(f"n must be >= 0, got {n}")
        if self.pool is not None:
            rows = self._finite_split(split)
            random.Random(f"{self.name}|{split}|{seed}").shuffle(rows)
            if n is not None and n > len(rows):
                raise UserError(
                    f"task {self.name}: {n} {split} examples requested, only {len(rows)} available"
                )
            return rows if n is None else rows[:n]
        if n is None:
            raise UserError(f"task {self.name} generates examples: say how many (n)")
        return self._sample(split, n, seed)

    def _finite_split(self, split: str) -> list[Example]:
        assert self.pool is not None
        # A row may name its split (meta["split"], user files); the others are split by question
        # hash over *distinct* questions, so duplicates of one question land in the same split.
        free = [e for e in self.pool if not e.meta.get("split")]
        keys = sorted({_key(e.question) for e in free}, key=lambda k: (question_hash(k), k))
        n_held = round(len(keys) * self.heldout_fraction)
        if len(keys) >= 2:
            n_held = min(max(n_held, 1), len(keys) - 1)  # both splits non-empty
        held = set(keys[len(keys) - n_held :])
        return [
            e
            for e in self.pool
            if (e.meta.get("split") or ("heldout" if _key(e.question) in held else "train")) == split
        ]

    def in_heldout(self, question: str) -> bool:
        """Whether a procedural task holds this question out."""
        return question_hash(question) < int(self.heldout_fraction * 2**64)

    def _sample(self, split: str, n: int, seed: int) -> list[Example]:
        assert self.sampler is not None
        rng = random.Random(f"{self.name}|{split}|{seed}")
        want_heldout = split == "heldout"
        seen: set[str] = set()
        out: list[Example] = []
        budget = 200 * n + 1000  # generous: a level's question space runs to many thousands
        while len(out) < n and budget > 0:
            budget -= 1
            ex = self.sampler(rng)
            key = _key(ex.question)
            if key in seen or self.in_heldout(ex.question) != want_heldout:
                continue
            seen.add(key)
            out.append(ex)
        if len(out) < n:
            raise UserError(f"task {self.name}: could only generate {len(out)} distinct {split} examples")
        return out

    # ---- prompting and checking -----------------------------------------------------------------
    def prompt(self, example: Example) -> str:
        """The 0-shot user message: the instruction and the question."""
        text = self.prompt_template.replace("{instruction}", self.instruction)
        return text.replace("{question}", example.question).strip()

    def check_spec(self, example: Example) -> str:
        """The checker for this example as a string ("numeric", "label:a,b", "json:name,legs")."""
        if self.check_kind == "label":
            return "label:" + ",".join(self.choices or ())
        if self.check_kind == "json":
            return "json:" + ",".join(example.meta.get("keys", ()))
        return self.check_kind

    def extract(self, output: str, example: Example | None = None) -> str | None:
        """What the checker reads from an output (a number, a label, the word, the JSON), or None."""
        spec = self.check_spec(example) if example is not None else self.check_kind
        if spec == "label" and self.choices:
            spec = "label:" + ",".join(self.choices)
        return checks.extract(spec, output)

    def check(self, output: str, example: Example) -> bool:
        """Whether an output is right: the gold answer, or (format tasks) the required format."""
        return checks.check_output(self.check_spec(example), output, example.answer)

    def grade(self, output: str, example: Example) -> dict:
        """{"passed": check(), "correct": matches the gold answer (None when not computable),
        "extracted": extract()}. For format tasks "passed" is the format and "correct" the content."""
        spec = self.check_spec(example)
        return {
            "passed": checks.check_output(spec, output, example.answer),
            "correct": checks.matches_gold(spec, output, example),
            "extracted": checks.extract(spec, output),
        }
