"""The run's data part: rows read from files (or given as a list / `datasets.Dataset`), tokenized as the
trainer needs them, and a fingerprint a resume checks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lmdistill.config import RunConfig
from lmdistill.config_teachers import cross_tokenizer_members
from lmdistill.data import load_records, tokenize_records
from lmdistill.data.fingerprint import features_fingerprint
from lmdistill.models import load_tokenizer


@dataclass
class RunData:
    """Tokenized features: `train` (each with input_ids, labels and, on-policy, prompt_ids; with a teacher
    of another tokenizer, both tokenizations aligned), `eval` (None without held-out data), and
    `fingerprint`, the sha256 of the training features in order (`features_fingerprint`)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]] | None
    fingerprint: str


def read_rows(path: str, max_examples: int | None = None, validate: bool = True) -> list[dict]:
    """The records of a data file (JSONL, a datasets folder, a hub name), the first `max_examples`."""
    records = load_records(path, validate=validate)
    return records[:max_examples] if max_examples is not None else records


def read_run_rows(cfg: RunConfig) -> tuple[list[dict], list[dict] | None]:
    """data.train (its first data.max_examples) and data.eval. On-policy rows may be prompts alone:
    `tokenize_run_data` checks them itself."""
    train = read_rows(cfg.data.train, cfg.data.max_examples, validate=not cfg.on_policy.enabled)
    return train, read_rows(cfg.data.eval) if cfg.data.eval else None


def tokenize_run_data(
    cfg: RunConfig,
    train_rows: Iterable[dict],
    eval_rows: Iterable[dict] | None,
    tokenizer,
    *,
    train_source: str | None = None,
    eval_source: str | None = None,
) -> RunData:
    """Tokenize rows exactly as `lmdistill train` does: completion-only labels at data.max_length; with
    on-policy steps each feature carries its prompt; with distill.cross_tokenizer each text in both
    tokenizations, aligned (the teacher's tokenizer loaded from teacher.name); with several teachers
    routed by row, the rows routed to a cross-tokenizer teacher in both (its tokenizer and the student's).

    *_source: the name errors cite (default: the config's data.train / data.eval)."""
    train_rows, eval_rows = list(train_rows), list(eval_rows) if eval_rows is not None else None
    train_source = train_source or cfg.data.train or "<train rows>"
    eval_source = eval_source or cfg.data.eval or "<eval rows>"
    n = cfg.data.max_length
    crossing = cross_tokenizer_members(cfg)
    if crossing:  # several teachers: the rows routed to one of another tokenizer are tokenized by both
        return _routed_across_tokenizers(
            cfg, crossing, train_rows, eval_rows, tokenizer, train_source, eval_source
        )
    if cfg.distill.cross_tokenizer:
        from lmdistill.xtok.data import pair_features

        teacher_tok = load_tokenizer(cfg.teacher.name)
        train = pair_features(train_rows, tokenizer, teacher_tok, n, source=train_source)[0]
        evalf = (
            pair_features(eval_rows, tokenizer, teacher_tok, n, source=eval_source)[0] if eval_rows else None
        )
    else:
        train = tokenize_train(cfg, train_rows, tokenizer, train_source)
        evalf = tokenize_records(eval_rows, tokenizer, n, source=eval_source)[0] if eval_rows else None
    return RunData(train, evalf, features_fingerprint(train))


def _routed_across_tokenizers(
    cfg: RunConfig, crossing: dict[int, str], train_rows, eval_rows, tokenizer, train_source, eval_source
) -> RunData:
    """Routed rows (each carrying its teacher): a row routed to a cross-tokenizer teacher -> both
    tokenizations aligned, with that teacher's tokenizer (loaded only for teachers some row routes to);
    any other row -> the student's usual feature."""
    from lmdistill.data.tokenize import ROUTE_KEY
    from lmdistill.xtok.data import routed_pair_features

    routes = {r.get(ROUTE_KEY) for r in [*train_rows, *(eval_rows or [])]}
    tokenizers = {i: load_tokenizer(cfg.teachers[i].name) for i in crossing if i in routes}
    n = cfg.data.max_length
    train = routed_pair_features(train_rows, tokenizer, tokenizers, n, source=train_source)
    evalf = (
        routed_pair_features(eval_rows, tokenizer, tokenizers, n, source=eval_source) if eval_rows else None
    )
    return RunData(train, evalf, features_fingerprint(train))


def tokenize_train(cfg: RunConfig, rows: list[dict], tokenizer, source: str | None = None) -> list[dict]:
    """Training features; with on-policy steps each also carries its prompt (`prompt_features`)."""
    source = source or cfg.data.train
    o = cfg.on_policy
    if not o.enabled:
        return tokenize_records(rows, tokenizer, cfg.data.max_length, source=source)[0]
    from lmdistill.training.sampling import prompt_features

    always_generated = o.seq_kd or (o.schedule == "constant" and o.lmbda == 1.0)
    return prompt_features(
        rows,
        tokenizer,
        cfg.data.max_length,
        o.max_new_tokens,
        source=source,
        need_answers=not always_generated,
    )
