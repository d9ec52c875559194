"""Real prompts for the demo: the English conversations of the `chatterbot-corpus` package."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lmdistill.errors import UserError

T = TypeVar("T")

INSTALL_HINT = "install it with `pip install chatterbot-corpus` (or `pip install lmdistill[demo]`)"


def chatterbot_data_dir() -> Path:
    """The folder holding chatterbot-corpus's English ``*.yml`` files (the package is not imported)."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the demo prompts need the chatterbot-corpus package; {INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        d = Path(root) / "data" / "english"
        if d.is_dir():
            return d
    raise UserError(f"chatterbot-corpus has no data/english folder; reinstall it: {INSTALL_HINT}")


def chatterbot_conversations(categories: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Return ``[{"prompt": str, "response": str, "category": str}, ...]``.

    One item per conversation with at least two string turns: its first line is the prompt, its
    second the response. `category` is the file's stem (e.g. "ai", "food"); pass `categories` to
    keep only those. Order is deterministic: files sorted by name, conversations in file order.
    """
    import yaml

    files = sorted(chatterbot_data_dir().glob("*.yml"))
    if categories is not None:
        wanted = {c.lower() for c in categories}
        unknown = wanted - {f.stem for f in files}
        if unknown:
            known = ", ".join(f.stem for f in files)
            raise UserError(f"unknown chatterbot categories: {', '.join(sorted(unknown))} (known: {known})")
        files = [f for f in files if f.stem in wanted]
    items: list[dict[str, str]] = []
    for f in files:
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            if not isinstance(conv, list) or len(conv) < 2:
                continue
            prompt, response = conv[0], conv[1]
            if not (isinstance(prompt, str) and isinstance(response, str)):
                continue
            prompt, response = prompt.strip(), response.strip()
            if prompt and response:
                items.append({"prompt": prompt, "response": response, "category": f.stem})
    return items


def split_train_heldout(
    items: Sequence[T],
    heldout_fraction: float,
    seed: int,
    key: Callable[[T], Hashable] | None = None,
) -> tuple[list[T], list[T]]:
    """Deterministically split `items` into (train, heldout), each keeping the input order.

    About ``heldout_fraction`` of the items go to heldout (at least one when the fraction is > 0
    and there are two or more groups). With `key`, items sharing a key (e.g. the same prompt)
    land on the same side, so held-out prompts are never seen in training.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise UserError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    keys: list[Any] = [key(it) for it in items] if key else list(range(len(items)))
    groups = list(dict.fromkeys(keys))
    n_held = round(len(groups) * heldout_fraction)
    if heldout_fraction > 0 and n_held == 0 and len(groups) >= 2:
        n_held = 1
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    held_groups = {groups[i] for i in order[:n_held]}
    train = [it for it, k in zip(items, keys, strict=True) if k not in held_groups]
    heldout = [it for it, k in zip(items, keys, strict=True) if k in held_groups]
    return train, heldout
