"""Training features for a teacher with another tokenizer: each text tokenized by both, then aligned.

Tokenizers only, no models. A feature is the student's usual feature (`lmdistill.data.tokenize`:
input_ids, labels, attention_mask, the same ids, EOS and truncation as without a teacher) plus

- ``teacher_input_ids``: list[int], the teacher's tokenization of the same text (its own special
  tokens, e.g. Gemma's BOS), cut after the last token any group uses;
- ``xtok_groups``: list of [s_start, s_end, t_start, t_end], token ranges [start, end) of the student
  and of the teacher that cover the same bytes (`lmdistill.xtok.align`), in text order.

A group is kept when both sides can predict its first token (start >= 1) and at least one of its
student tokens is a training target (so prompt groups of prompt/completion records are left out).
`XtokCollator` batches such features; the groups become indices into the batch's real tokens,
flattened row by row (what `lmdistill.training.xtok_step` reads).

Several teachers routed by row, some with another tokenizer (`teachers[i].cross_tokenizer`): only the
rows routed to such a teacher are tokenized by both (`routed_pair_features`, with that teacher's
tokenizer), and `RoutedXtokCollator` batches each teacher's rows apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lmdistill.data.collator import DistillCollator
from lmdistill.data.records import detect_format, validate_record
from lmdistill.data.tokenize import IGNORE_INDEX, ROUTE_KEY, check_weight, tokenize_record
from lmdistill.errors import UserError
from lmdistill.xtok.align import align_token_offsets, tokenize_with_offsets


def record_text(record: dict[str, Any], where: str) -> str:
    """The one text both models read: a text record's text, or prompt + completion; chat records are refused."""
    fmt = detect_format(record)
    if fmt == "text":
        return record["text"]
    if fmt == "prompt_completion":
        return record["prompt"] + record["completion"]
    raise UserError(
        f"{where}: a teacher of another tokenizer (distill.cross_tokenizer, teachers[i].cross_tokenizer) needs "
        "text or prompt/completion records (both models must read the "
        "same text), but this is a 'messages' record that each model's chat template would render differently; "
        "render the conversations to text first"
    )


def pair_feature(
    record: dict[str, Any],
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    max_length: int,
    where: str = "record",
) -> dict[str, Any] | None:
    """One record -> the student's feature plus the teacher's ids and the aligned groups (module docstring).

    Returns None when no target token, or no aligned group with a target, survives truncation.
    """
    text = record_text(record, where)
    feature = tokenize_record(record, student_tokenizer, max_length)
    if feature is None:
        return None
    n = len(feature["input_ids"])
    try:
        s_ids, s_off = tokenize_with_offsets(student_tokenizer, text)
        t_ids, t_off = tokenize_with_offsets(teacher_tokenizer, text)
    except ValueError as exc:  # a slow (Python) tokenizer gives no offsets
        raise UserError(f"distill.cross_tokenizer: {exc}") from None
    if s_ids[:n] != feature["input_ids"][: len(s_ids)]:
        raise ValueError(
            f"{where}: the student's tokenization with offsets differs from its training feature"
        )
    s_off = (s_off + [(0, 0)] * n)[:n]  # the appended EOS covers no bytes
    alignment = align_token_offsets(text, s_off, t_off)
    targets = [lab != IGNORE_INDEX for lab in feature["labels"]]
    groups = [
        [sa, sb, ta, tb]
        for (sa, sb), (ta, tb) in zip(alignment.groups_a, alignment.groups_b, strict=True)
        if sa >= 1 and ta >= 1 and any(targets[sa:sb])
    ]
    if not groups:
        return None
    feature["teacher_input_ids"] = t_ids[: max(g[3] for g in groups)]
    feature["xtok_groups"] = groups
    return feature


def pair_features(
    records: list[dict[str, Any]],
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    max_length: int,
    source: str = "<records>",
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """`pair_feature` for every record (each validated first; errors name ``source:index+1``).

    Returns (features, stats) like `lmdistill.data.tokenize_records`, stats also counting "groups"
    and "teacher_tokens". Raises UserError when nothing is kept.
    """
    features = _features(records, student_tokenizer, lambda _: teacher_tokenizer, max_length, source)
    stats = {
        "examples": len(records),
        "kept": len(features),
        "dropped_no_target": len(records) - len(features),
        "target_tokens": sum(sum(lab != IGNORE_INDEX for lab in f["labels"]) for f in features),
        "groups": sum(len(f["xtok_groups"]) for f in features),
        "teacher_tokens": sum(len(f["teacher_input_ids"]) for f in features),
    }
    return features, stats


@dataclass
class XtokCollator(DistillCollator):
    """`DistillCollator` plus the teacher's side of `pair_feature` features.

    Adds ``teacher_input_ids`` and ``teacher_attention_mask`` [B, S_t] (right-padded with
    `teacher_pad_token_id`), ``xtok_student_groups`` and ``xtok_teacher_groups`` int64 [G, 2]: each
    group's token range as indices into the batch's real tokens flattened row by row (the order of
    ``input_ids[attention_mask.bool()]``), and ``xtok_group_rows`` int64 [G]: each group's row.
    """

    teacher_pad_token_id: int = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        width = max(len(f["teacher_input_ids"]) for f in features)
        t_ids = torch.full((len(features), width), self.teacher_pad_token_id, dtype=torch.long)
        t_mask = torch.zeros((len(features), width), dtype=torch.long)
        s_groups, t_groups, rows = [], [], []
        s_offset = t_offset = 0
        for i, f in enumerate(features):
            n_t = len(f["teacher_input_ids"])
            t_ids[i, :n_t] = torch.as_tensor(f["teacher_input_ids"], dtype=torch.long)
            t_mask[i, :n_t] = 1
            for sa, sb, ta, tb in f["xtok_groups"]:
                s_groups.append((sa + s_offset, sb + s_offset))
                t_groups.append((ta + t_offset, tb + t_offset))
                rows.append(i)
            s_offset += len(f["input_ids"])
            t_offset += n_t
        batch["teacher_input_ids"] = t_ids
        batch["teacher_attention_mask"] = t_mask
        batch["xtok_student_groups"] = torch.tensor(s_groups, dtype=torch.long).reshape(-1, 2)
        batch["xtok_teacher_groups"] = torch.tensor(t_groups, dtype=torch.long).reshape(-1, 2)
        batch["xtok_group_rows"] = torch.tensor(rows, dtype=torch.long)
        return batch


def routed_pair_features(
    records: list[dict[str, Any]],
    student_tokenizer: Any,
    teacher_tokenizers: dict[int, Any],
    max_length: int,
    source: str = "<records>",
) -> list[dict[str, Any]]:
    """Rows routed among several teachers (each carrying its teacher index, `lmdistill.teachers.routing`):
    a row routed to a teacher of `teacher_tokenizers` ({index: its tokenizer}, the cross-tokenizer ones)
    gets `pair_feature` with that tokenizer, any other row the student's usual feature (`tokenize_record`,
    the same ids). Order kept; rows with no target (or no aligned group) left out; errors name
    ``source:index+1``; UserError when nothing is kept."""
    return _features(
        records, student_tokenizer, lambda r: teacher_tokenizers.get(r.get(ROUTE_KEY)), max_length, source
    )


def _features(
    records: list[dict[str, Any]],
    student_tokenizer: Any,
    teacher_of: Callable[[dict[str, Any]], Any],
    max_length: int,
    source: str,
) -> list[dict[str, Any]]:
    """Each record validated, then `pair_feature` with `teacher_of(record)`'s tokenizer, or the student's
    usual feature where that is None; records with no target left out; UserError when none is left."""
    features = []
    for i, record in enumerate(records):
        where = f"{source}:{i + 1}"
        validate_record(record, where)
        check_weight(record, where)
        teacher = teacher_of(record)
        if teacher is None:
            feature = tokenize_record(record, student_tokenizer, max_length)
        else:
            feature = pair_feature(record, student_tokenizer, teacher, max_length, where)
        if feature is not None:
            features.append(feature)
    if not features:
        raise UserError(
            f"no examples left after tokenization/truncation/alignment ({len(records)} read from {source}; "
            f"max_length={max_length}); raise max_length or shorten the prompts"
        )
    return features


@dataclass
class RoutedXtokCollator(DistillCollator):
    """`DistillCollator` over every row (what Trainer counts target tokens by), plus ``routed_parts``:
    each teacher's rows batched apart, as if they were the whole batch.

    ``routed_parts["plain"]``: the `DistillCollator` batch of the rows routed to teachers of the student's
    tokenizer (absent when there are none); ``routed_parts[str(i)]``: the `XtokCollator` batch of the rows
    routed to cross-tokenizer teacher i, padded with its `teacher_pad_token_ids[i]`. Rows keep their
    order inside each part.
    """

    teacher_pad_token_ids: dict[int, int] | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(features)
        pads = self.teacher_pad_token_ids or {}
        parts: dict[str, dict[str, torch.Tensor]] = {}
        plain = [f for f in features if f.get("teacher_index") not in pads]
        if plain:
            parts["plain"] = DistillCollator(self.pad_token_id, self.pad_to_multiple_of)(plain)
        for i, pad in sorted(pads.items()):
            mine = [f for f in features if f.get("teacher_index") == i]
            if mine:
                parts[str(i)] = XtokCollator(self.pad_token_id, self.pad_to_multiple_of, pad)(mine)
        batch["routed_parts"] = parts
        return batch
