"""A user's own task, from a JSONL file of examples.

One JSON object per line::

    {"instruction": "Answer the riddle with one word.", "numeric": false}     <- optional header
    {"question": "What has keys but no locks?", "answer": "piano", "rationale": "A piano has keys."}
    {"question": "...", "answer": "...", "split": "heldout"}

* ``question`` (non-empty string) and ``answer`` (string or number) are required on every row;
  ``rationale`` (string) and ``split`` ("train" or "heldout") are optional; any other field is
  kept in the example's ``meta``.
* Task options go on the first line, alone (a header) or on the first example: ``instruction``
  (the I of the ICL layout), ``numeric`` (answers are numbers; inferred when every answer is one),
  ``choices`` (labels; every answer must be one of them). `load_task(..., instruction=...)`
  overrides the file's instruction.
* Without any ``split`` field, a quarter of the rows (chosen by question hash) are held out.

Every bad row is a UserError naming ``file:line`` and the field.
"""

from __future__ import annotations

import re
from pathlib import Path

from lmdistill.data.records import _read_jsonl_numbered
from lmdistill.errors import UserError
from lmdistill.tasks.base import SPLITS, Example, Task

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_OPTIONS = ("instruction", "numeric", "choices")
_ROW_FIELDS = ("question", "answer", "rationale", "split")


def _options(row: dict, where: str) -> dict:
    out: dict = {}
    if "instruction" in row:
        if not isinstance(row["instruction"], str):
            raise UserError(f"{where}: 'instruction' must be a string")
        out["instruction"] = row["instruction"].strip()
    if "numeric" in row:
        if not isinstance(row["numeric"], bool):
            raise UserError(f"{where}: 'numeric' must be true or false, got {row['numeric']!r}")
        out["numeric"] = row["numeric"]
    if "choices" in row:
        c = row["choices"]
        if not (isinstance(c, list) and len(c) >= 2 and all(isinstance(x, str) and x.strip() for x in c)):
            raise UserError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        out["choices"] = tuple(x.strip() for x in c)
    return out


def _example(row: dict, path: Path, line: int) -> tuple[Example, str | None]:
    where = f"{path}:{line}"
    question = row.get("question")
    if question is None:
        raise UserError(f"{where}: missing field 'question' (has: {', '.join(row) or 'nothing'})")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: 'question' must be a non-empty string, got {question!r}")
    answer = row.get("answer")
    if answer is None:
        raise UserError(f"{where}: missing field 'answer' (the gold answer for this question)")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
        raise UserError(f"{where}: 'answer' must be a non-empty string or a number, got {answer!r}")
    rationale = row.get("rationale")
    if rationale is not None and not isinstance(rationale, str):
        raise UserError(f"{where}: 'rationale' must be a string, got {type(rationale).__name__}")
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise UserError(f"{where}: 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
    meta = {k: v for k, v in row.items() if k not in _ROW_FIELDS and k not in _OPTIONS}
    meta["line"] = line  # so later checks (choices, splits) can name the row
    example = Example(question.strip(), str(answer).strip(), rationale, meta)
    return example, split


def load_task(path: str | Path, *, instruction: str | None = None, name: str | None = None) -> Task:
    """Read a user task file (see the module doc) into a finite `Task`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file not found: {path}")
    records = _read_jsonl_numbered(path)
    if not records:
        raise UserError(
            f"task file {path} is empty: it needs one JSON object per line with 'question' and 'answer'"
        )
    options: dict = {}
    examples: list[tuple[Example, str | None]] = []
    for i, (line, row) in enumerate(records):
        where = f"{path}:{line}"
        if i == 0:
            options = _options(row, where)
            if "question" not in row and "answer" not in row:
                if not options:
                    raise UserError(
                        f"{where}: neither an example ('question', 'answer') nor task options "
                        f"({', '.join(_OPTIONS)})"
                    )
                continue
        elif any(k in row for k in _OPTIONS):
            key = next(k for k in _OPTIONS if k in row)
            raise UserError(f"{where}: task option '{key}' belongs on the first line only")
        examples.append(_example(row, path, line))
    if not examples:
        raise UserError(f"task file {path} has task options but no examples")
    choices = options.get("choices")
    if choices is not None:
        lower = {c.lower(): c for c in choices}
        for ex, _ in examples:
            if ex.answer.lower() not in lower:
                raise UserError(
                    f"{path}:{ex.meta['line']}: 'answer' {ex.answer!r} is not one of the choices ({', '.join(choices)})"
                )
    numeric = options.get("numeric")
    if numeric is None:
        numeric = choices is None and all(_NUMBER.fullmatch(ex.answer.replace(" ", "")) for ex, _ in examples)
    pool = _with_splits(examples, path)
    kind = "label" if choices else ("numeric" if numeric else "exact")
    return Task(
        name=name or path.stem,
        instruction=instruction if instruction is not None else options.get("instruction", ""),
        check_kind=kind,
        numeric=bool(numeric),
        choices=choices,
        pool=pool,
        description=f"user task from {path}",
    )


def _with_splits(examples: list[tuple[Example, str | None]], path: Path) -> tuple[Example, ...]:
    """The pool, with explicit splits in meta["split"] (`Task` honours them). A split named for a
    question applies to every row of that question, so the splits still never share one."""
    named: dict[str, tuple[str, int]] = {}
    for ex, split in examples:
        key = " ".join(ex.question.lower().split())
        if split is None:
            continue
        if key in named and named[key][0] != split:
            first_split, first_line = named[key]
            raise UserError(
                f"{path}:{ex.meta['line']}: 'split' {split!r} conflicts with {first_split!r} for the same "
                f"question on line {first_line} (a question belongs to one split)"
            )
        named[key] = (split, ex.meta["line"])
    out = []
    for ex, _ in examples:
        key = " ".join(ex.question.lower().split())
        if key in named:
            ex = Example(ex.question, ex.answer, ex.rationale, {**ex.meta, "split": named[key][0]})
        out.append(ex)
    return tuple(out)
