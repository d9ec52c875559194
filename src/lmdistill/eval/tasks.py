"""Evaluation tasks: JSONL files of questions with gold answers, or prompts with reference texts.

A row is one of

* ``{"question": ..., "answer": ...}`` (optional ``"numeric": true``): scored by accuracy. The
  answer is extracted from the model's output with `extract_answer` ("Answer: X", GSM8K "#### X",
  and for numeric answers the last number) and compared after `normalize_answer`. When nothing can
  be extracted from a non-numeric output, the whole output is compared (so a bare "Paris" counts).
  A gold answer is numeric when the row says so, or else when it parses as a number; a gold written
  GSM8K style (worked solution, then "#### 18") is reduced to what follows "####".
* ``{"question": ..., "choices": [...], "answer": ...}``: multiple choice, scored by accuracy. The
  options are shown lettered (A., B., ...); the gold is an option's text or letter; the model's
  pick is a letter or option after "Answer:", else a leading letter, else the option named first
  in its output as whole words (`lmdistill.tasks.checks.choice_in`, shared with the label tasks).
* ``{"prompt": ..., "reference": ...}``: scored by ROUGE-L F1 against the reference.

``question`` and ``prompt`` are interchangeable, and a row may carry both ``answer`` and
``reference``. The prompt is sent as one user message through the model's chat template.

A built-in task name from `lmdistill.tasks` works in place of a file: ``arithmetic:1``,
``sentiment``, ``format_one_word``, ``format_json``, optionally ``@split`` and ``:count``
(``sentiment@train:100``); by default 50 held-out examples (fewer if the split holds fewer).
Its rows carry the task's checker in `TaskItem.check` (e.g. "one_word", "json:name,legs",
"label:positive,negative,neutral"), which `score_task` honours: for the format tasks the score is
the format pass rate. A file of that name, if one exists, wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lmdistill.data.records import _read_jsonl_numbered
from lmdistill.errors import UserError
from lmdistill.tasks.checks import check_output, choice_in, choice_of, extract
from lmdistill.text import normalize_answer, rouge_l

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class TaskItem:
    """One task row. `line` is its 1-based line in the file."""

    prompt: str
    answer: str | None = None
    reference: str | None = None
    numeric: bool = False
    line: int = 0
    choices: tuple[str, ...] = ()
    # A `lmdistill.tasks.checks` spec ("one_word", "json:name,legs", "label:a,b"): when set, it
    # decides whether an output is correct instead of comparing answers.
    check: str | None = None


@dataclass(frozen=True)
class Task:
    name: str  # the file's stem, made unique by `load_tasks`
    path: str
    items: tuple[TaskItem, ...]

    @property
    def kind(self) -> str:
        """ "accuracy" when any row has a gold answer, else "rouge_l"."""
        return "accuracy" if any(it.answer is not None for it in self.items) else "rouge_l"


def is_number(text: str | None) -> bool:
    return text is not None and _NUMBER.fullmatch(text.strip().replace(" ", "")) is not None


def _gold(answer: str) -> str:
    return answer.split("####")[-1].strip() if "####" in answer else answer.strip()


def load_task(path: str | Path, *, max_examples: int | None = None, name: str | None = None) -> Task:
    """Read and validate a task file, or build a built-in task (see the module doc); every problem
    in a file is a UserError naming ``file:line``."""
    from lmdistill.tasks import is_builtin, list_tasks

    if not Path(path).is_file() and is_builtin(str(path)):
        return builtin_task(str(path), max_examples=max_examples, name=name)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file not found: {path} (built-in tasks: {', '.join(list_tasks())})")
    items: list[TaskItem] = []
    for line, row in _read_jsonl_numbered(path):
        where = f"{path}:{line}"
        prompt = row.get("question", row.get("prompt"))
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: a task row needs a non-empty 'question' (or 'prompt') string")
        answer, reference = row.get("answer"), row.get("reference")
        if answer is None and reference is None:
            raise UserError(
                f"{where}: a task row needs a gold 'answer' (scored by accuracy) or a 'reference' "
                "(scored by ROUGE-L); this one has neither"
            )
        for key, value in (("answer", answer), ("reference", reference)):
            if value is not None and not isinstance(value, (str, int, float)):
                raise UserError(f"{where}: '{key}' must be a string or a number, got {type(value).__name__}")
        gold = None if answer is None else _gold(str(answer))
        choices = row.get("choices")
        if choices is not None:
            if not (
                isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)
            ):
                raise UserError(f"{where}: 'choices' must be a list of at least two strings")
            if gold is None or choice_of(gold, choices) is None:
                raise UserError(f"{where}: the 'answer' must be one of the choices (its text or letter)")
            gold = choice_of(gold, choices)
            prompt = prompt + "\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
            prompt += "\nAnswer with the letter of one option."
        numeric = row.get("numeric")
        if numeric is not None and not isinstance(numeric, bool):
            raise UserError(f"{where}: 'numeric' must be true or false, got {numeric!r}")
        if numeric is None:
            numeric = choices is None and is_number(gold)
        items.append(
            TaskItem(
                prompt=prompt,
                answer=gold,
                reference=None if reference is None else str(reference),
                numeric=bool(numeric),
                line=line,
                choices=tuple(choices or ()),
            )
        )
    if not items:
        raise UserError(f"task file {path} has no rows")
    if max_examples is not None:
        items = items[:max_examples]
    return Task(name=name or path.stem, path=str(path), items=tuple(items))


def load_tasks(paths: list[str], *, max_examples: int | None = None) -> list[Task]:
    """Load every task file; names are the file stems, suffixed -2, -3... when two files share one."""
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    from lmdistill.tasks import is_builtin

    for p in paths:
        stem = p if is_builtin(p) and not Path(p).is_file() else Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        tasks.append(load_task(p, max_examples=max_examples, name=name))
    return tasks


def builtin_task(spec: str, *, max_examples: int | None = None, name: str | None = None) -> Task:
    """A built-in task (`NAME[@SPLIT][:N]`, see `lmdistill.tasks.registry`) as eval rows."""
    from lmdistill.tasks import get_task, parse_spec
    from lmdistill.tasks.registry import DEFAULT_COUNT

    parsed = parse_spec(spec)
    task = get_task(parsed.name)
    n = parsed.n
    if n is None:  # the default count, or the whole split when it is smaller
        n = DEFAULT_COUNT if task.pool is None else min(DEFAULT_COUNT, len(task.examples(parsed.split)))
    if max_examples is not None:
        n = min(n, max_examples)
    items = []
    for i, ex in enumerate(task.examples(parsed.split, n, seed=0)):
        # numeric / exact tasks: `is_correct` applies the same numeric / exact checks
        check = None if task.check_kind in ("numeric", "exact") else task.check_spec(ex)
        items.append(
            TaskItem(prompt=task.prompt(ex), answer=ex.answer, numeric=task.numeric, line=i + 1, check=check)
        )
    return Task(name=name or spec, path=f"built-in:{spec}", items=tuple(items))


def predicted_answer(output: str, *, numeric: bool) -> str | None:
    """The normalised answer in a model's output (see the module doc), or None."""
    return normalize_answer(extract("numeric" if numeric else "exact", output))


def predicted_choice(output: str, choices) -> str | None:
    """The option a model picked: a letter or option after "Answer:", else in the whole output
    (`lmdistill.tasks.checks.choice_in`, the rules the built-in label tasks use too)."""
    return choice_in(output, choices, letters=True)


def is_correct(output: str, gold: str, *, numeric: bool, choices=()) -> bool:
    """Whether the answer in `output` equals `gold` after normalisation (the `numeric` / `exact`
    checks of `lmdistill.tasks.checks`), or, with `choices`, whether it picked the gold option."""
    if choices:
        return predicted_choice(output, choices) == gold
    return check_output("numeric" if numeric else "exact", output, gold)


def score_task(task: Task, outputs: list[str]) -> dict:
    """Accuracy over rows with an answer and mean ROUGE-L over rows with a reference.

    Returns {"kind", "score", "accuracy", "rouge_l", "examples", "correct"}; "score" is the task's
    headline number (accuracy, or ROUGE-L for reference-only tasks).
    """
    if len(outputs) != len(task.items):
        raise ValueError(f"{len(outputs)} outputs for {len(task.items)} task rows")
    correct = answered = 0
    rouges: list[float] = []
    for item, out in zip(task.items, outputs, strict=True):
        if item.check is not None:
            answered += 1
            correct += check_output(item.check, out, item.answer)
        elif item.answer is not None:
            answered += 1
            correct += is_correct(out, item.answer, numeric=item.numeric, choices=item.choices)
        if item.reference is not None:
            rouges.append(rouge_l(out, item.reference))
    accuracy = correct / answered if answered else None
    rouge = sum(rouges) / len(rouges) if rouges else None
    return {
        "kind": task.kind,
        "score": accuracy if task.kind == "accuracy" else rouge,
        "accuracy": accuracy,
        "rouge_l": rouge,
        "examples": len(task.items),
        "correct": correct,
    }
