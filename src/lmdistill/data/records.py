"""Reading training examples from JSONL files, saved `datasets` folders or hub data sets.

Each example is a dict in one of three layouts (see `detect_format`):

* ``{"messages": [{"role": ..., "content": ...}, ...]}`` - a chat; assistant turns are trained on.
* ``{"prompt": str, "completion": str}`` - the completion is trained on.
* ``{"text": str}`` - every token is trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmdistill.errors import UserError
from lmdistill.io import read_text_lines

FORMATS = ("messages", "prompt_completion", "text")
LAYOUTS_HELP = (
    'accepted layouts: {"messages": [{"role": ..., "content": ...}, ...]}, '
    '{"prompt": ..., "completion": ...}, or {"text": ...}'
)


def _read_jsonl_numbered(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Like `read_jsonl`, but each record comes with its 1-based line number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    out: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(read_text_lines(path), start=1):  # not UTF-8: names the line
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
        out.append((lineno, obj))
    return out


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file: one JSON object per line, blank lines skipped.

    Raises UserError if the file is missing, or naming ``file:line`` for a line that is not
    valid JSON or not a JSON object.
    """
    return [obj for _, obj in _read_jsonl_numbered(path)]


def detect_format(record: dict[str, Any], where: str | None = None) -> str:
    """Return the record's layout: "messages", "prompt_completion" or "text".

    A null field counts as missing (`datasets` tables fill absent columns with None).
    Raises UserError (prefixed with `where`, e.g. ``data.jsonl:3``) when no layout matches.
    """

    def has(key: str) -> bool:
        return record.get(key) is not None

    if has("messages"):
        return "messages"
    if has("prompt") and has("completion"):
        return "prompt_completion"
    if has("text"):
        return "text"
    prefix = f"{where}: " if where else ""
    keys = ", ".join(sorted(str(k) for k, v in record.items() if v is not None)) or "none"
    raise UserError(f"{prefix}unrecognised record (non-null keys: {keys}); {LAYOUTS_HELP}")


def validate_record(record: dict[str, Any], where: str) -> str:
    """Check a record's fields and return its layout (see `detect_format`).

    Raises UserError starting with `where` when a field has the wrong type, or a chat has no
    assistant message.
    """
    fmt = detect_format(record, where)
    if fmt == "messages":
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise UserError(f'{where}: messages[{j}] must be an object with a string "role"')
            if not isinstance(m.get("content"), str):
                raise UserError(f'{where}: messages[{j}]["content"] must be a string')
        if not any(m["role"] == "assistant" for m in msgs):
            raise UserError(f"{where}: no assistant message (nothing to train on)")
    else:
        fields = ("prompt", "completion") if fmt == "prompt_completion" else ("text",)
        for key in fields:
            if not isinstance(record[key], str):
                raise UserError(f'{where}: "{key}" must be a string, got {type(record[key]).__name__}')
    return fmt


def validate_records(
    records: list[dict[str, Any]], source: str, line_numbers: list[int] | None = None
) -> None:
    """Validate every record; errors name ``source:line`` (line = index + 1 unless given)."""
    for i, rec in enumerate(records):
        lineno = line_numbers[i] if line_numbers is not None else i + 1
        validate_record(rec, f"{source}:{lineno}")


def _load_saved_dataset(path: Path, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"{path}: could not load the saved data set: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{path}: no split {split!r} (available: {', '.join(ds)})")
        ds = ds[split]
    return ds.to_list()


def load_records(
    path_or_name: str | Path, split: str = "train", validate: bool = True
) -> list[dict[str, Any]]:
    """Load and validate examples from a JSONL file, a `save_to_disk` folder or a hub data set name.

    validate=False leaves the rows to the caller (on-policy training also takes prompt-only rows).

    * ``*.jsonl`` / ``*.json`` (JSON Lines) -> `read_jsonl`; errors name the real line number.
    * a folder written by ``datasets.Dataset.save_to_disk`` (or ``DatasetDict``, using `split`).
    * anything else -> ``datasets.load_dataset(name, split=split)``.

    Returns a list of record dicts; raises UserError for anything the user can fix, an empty data set
    included.
    """
    path = Path(path_or_name)
    if path.suffix.lower() in (".jsonl", ".json"):
        numbered = _read_jsonl_numbered(path)
        records = [obj for _, obj in numbered]
        if not records:
            raise UserError(f"{path}: no examples, the file is empty")
        if validate:
            validate_records(records, str(path), [n for n, _ in numbered])
        return records
    if path.is_dir():
        if not any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
            raise UserError(f"{path} is a folder but not one written by datasets' save_to_disk")
        records = _load_saved_dataset(path, split)
    elif path.is_file():
        raise UserError(f"{path}: unsupported file type; use JSON Lines (.jsonl)")
    else:
        records = _load_hub_dataset(str(path_or_name), split)
    if not records:
        raise UserError(f"{path_or_name}: no examples, the data set is empty")
    if validate:
        validate_records(records, str(path_or_name))
    return records


def _load_hub_dataset(name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"data set {name!r} could not be found locally (no such file or folder) "
            f"or loaded from the Hugging Face hub (split {split!r}): {reason}"
        ) from None
    return ds.to_list()
