"""Which teacher scores each row, among several (`teachers:` with `routing.mode: route`).

A row names its teacher's id in `routing.field` (default "teacher"); else `routing.rules` maps the
value of its `routing.by` key (its task, its tag) to an id; else it goes to `routing.default`; else it
is refused. Pure functions over rows and the config: no model, no tokenizer.
"""

from __future__ import annotations

from typing import Any

from lmdistill.data.tokenize import ROUTE_KEY
from lmdistill.errors import UserError


def route_rows(rows: list[dict[str, Any]], ids: list[str], routing, source: str) -> list[int]:
    """Each row's teacher as an index into `ids` (the `teachers:` ids in order).

    routing: a `RoutingConfig`; source: the name errors cite as `source:row` (1-based). UserError for
    a row that names a teacher not listed, or that gets none while routing.default is null.
    """
    index = {name: i for i, name in enumerate(ids)}
    rules = {str(k): v for k, v in routing.rules.items()}
    out = []
    for n, row in enumerate(rows):
        where = f"{source}:{n + 1}"
        named = row.get(routing.field) if isinstance(row, dict) else None
        if named is not None:
            if named not in index:
                raise UserError(
                    f"{where}: {routing.field} {named!r} is not a listed teacher (teachers: {', '.join(ids)})"
                )
            out.append(index[named])
            continue
        value = row.get(routing.by) if routing.by and isinstance(row, dict) else None
        target = rules.get(str(value)) if value is not None else None
        target = target if target is not None else routing.default
        if target is None:
            rule = f", and no routing.rules entry for {routing.by} {value!r}" if routing.by else ""
            raise UserError(
                f"{where}: no teacher for this row (no {routing.field!r} key{rule}) and routing.default is "
                "null: name one in the row or set routing.default"
            )
        out.append(index[target])
    return out


def routed(rows: list[dict[str, Any]], routes: list[int]) -> list[dict[str, Any]]:
    """Copies of the rows carrying their teacher index, which tokenization puts into each feature as
    "teacher_index" (`lmdistill.data.tokenize.carry_route`)."""
    return [{**row, ROUTE_KEY: r} for row, r in zip(rows, routes, strict=True)]
