"""Turn records into causal-LM training features with completion-only labels.

A feature is ``{"input_ids": list[int], "labels": list[int], "attention_mask": list[int]}``, all of
length S <= max_length. ``labels[t]`` is ``input_ids[t]`` where token t is a training target and
``IGNORE_INDEX`` (-100) elsewhere. The loss (teacher KL or cross-entropy) is taken only at targets.

Targets are found by character span: the text is tokenized once with offsets, and a token is a
target when its character span overlaps a target span. A BPE token that straddles the
prompt/completion boundary therefore counts as a target.

A record may carry a numeric ``"weight"`` (>= 0, default 1.0): it is kept in the feature as
``"weight"`` and multiplies that example's per-token CE and KD terms in training (the collator turns it
into ``loss_weights``). Records without one give features without the key.

Position 0 is never a target: a causal LM predicts token t from tokens < t, so the first token has
no prediction. Forcing ``labels[0] = -100`` keeps target-token counts identical whether or not a
tokenizer adds a BOS token, and across transformers versions that shift labels differently.
"""

from __future__ import annotations

import math
from typing import Any

from lmdistill.data.records import detect_format, validate_record
from lmdistill.errors import UserError
from lmdistill.models.embedded import require_chat_template

IGNORE_INDEX = -100

Span = tuple[int, int]


def _encode(tokenizer: Any, text: str, spans: list[Span] | None, add_special_tokens: bool):
    """Tokenize `text`; return (ids, is_target) where is_target[t] says token t overlaps a span.

    `spans=None` marks every token as a target.
    """
    if spans is None:
        enc = tokenizer(text, add_special_tokens=add_special_tokens)
        ids = list(enc["input_ids"])
        return ids, [True] * len(ids)
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("a fast (Rust) tokenizer is needed to find completion tokens by character offset")
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    # A token (s, e) overlaps a span (a, b) when s < b and e > a; added special tokens have (0, 0).
    is_target = [any(s < b and e > a for a, b in spans) for s, e in enc["offset_mapping"]]
    return ids, is_target


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:
        raise UserError(f"the tokenizer's chat template could not render a conversation: {e}") from None


def chat_target_spans(messages: list[dict], tokenizer: Any) -> tuple[str, list[Span]]:
    """Render a chat and return (text, spans) where spans cover each assistant reply.

    A span runs from where ``render(messages[:i], add_generation_prompt=True)`` ends to where
    ``render(messages[:i+1])`` ends: the reply's content plus the end-of-turn text the template
    writes after it. An assistant message that opens the conversation has no prompt and is not a
    target. Raises UserError when the tokenizer has no chat template or the template is not
    prefix-stable (rendering a prefix of the chat is not a prefix of rendering the whole chat).
    """
    require_chat_template(tokenizer, "'messages' records")
    full = _render(tokenizer, messages)
    spans: list[Span] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i == 0:
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        if not (full.startswith(before) and full.startswith(through) and len(before) <= len(through)):
            raise UserError(
                "the chat template is not prefix-stable (rendering the first "
                f"{i} messages is not a prefix of rendering the whole conversation), so assistant "
                "replies cannot be located; use a template that renders earlier turns unchanged"
            )
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_record(record: dict[str, Any], tokenizer: Any, max_length: int) -> dict[str, Any] | None:
    """Tokenize one record into ``{"input_ids", "labels", "attention_mask"}`` (lists of length <= max_length).

    * text: every token is a target; EOS is appended (as a target) if the tokenizer has one.
    * prompt_completion: ``prompt + completion`` is tokenized as one string; tokens overlapping
      the completion's characters and the appended EOS are targets.
    * messages: rendered with the chat template (special tokens written by the template, not added);
      assistant replies and their end-of-turn text are targets (see `chat_target_spans`).

    Truncation keeps the first max_length tokens. ``labels[0]`` is always -100. A numeric ``"weight"``
    in the record is kept as ``feature["weight"]`` (float). Returns None
    when no target token survives.
    """
    fmt = detect_format(record)
    eos = tokenizer.eos_token_id
    append_eos = False
    if fmt == "text":
        ids, is_target = _encode(tokenizer, record["text"], None, add_special_tokens=True)
        append_eos = True
    elif fmt == "prompt_completion":
        prompt, completion = record["prompt"], record["completion"]
        text = prompt + completion
        ids, is_target = _encode(tokenizer, text, [(len(prompt), len(text))], add_special_tokens=True)
        append_eos = True
    else:
        text, spans = chat_target_spans(record["messages"], tokenizer)
        ids, is_target = _encode(tokenizer, text, spans, add_special_tokens=False)
    if append_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        is_target.append(True)

    ids, is_target = ids[:max_length], is_target[:max_length]
    labels = [tok if tgt else IGNORE_INDEX for tok, tgt in zip(ids, is_target, strict=True)]
    if labels:
        labels[0] = IGNORE_INDEX
    if all(lab == IGNORE_INDEX for lab in labels):
        return None
    feature = {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
    if record.get("weight") is not None:
        feature["weight"] = float(record["weight"])
    carry_route(record, feature)
    return feature


#: The key under which `lmdistill.teachers.routing` writes a row's teacher (an index into `teachers:`)
#: into a copy of the row; tokenization carries it into the feature as "teacher_index".
ROUTE_KEY = "_lmdistill_teacher_index"


def carry_route(record: dict[str, Any], feature: dict[str, Any]) -> None:
    """A routed row's teacher index into its feature (nothing for a row that was not routed)."""
    if record.get(ROUTE_KEY) is not None:
        feature["teacher_index"] = int(record[ROUTE_KEY])


def check_weight(record: dict[str, Any], where: str) -> None:
    """A record's optional "weight" must be a finite number >= 0 (UserError naming `where` otherwise)."""
    w = record.get("weight")
    if w is None:
        return
    if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
        raise UserError(f'{where}: "weight" must be a finite number >= 0, got {w!r}')


def tokenize_records(
    records: list[dict[str, Any]], tokenizer: Any, max_length: int, source: str = "<records>"
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Tokenize all records; drop those with no target left.

    Each record is validated first (errors name ``source:index+1``).
    Returns (features, stats) with stats ``{"examples", "kept", "dropped_no_target",
    "target_tokens"}``. Raises UserError when nothing is kept.
    """
    features: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        validate_record(rec, f"{source}:{i + 1}")
        check_weight(rec, f"{source}:{i + 1}")
        feat = tokenize_record(rec, tokenizer, max_length)
        if feat is not None:
            features.append(feat)
    stats = {
        "examples": len(records),
        "kept": len(features),
        "dropped_no_target": len(records) - len(features),
        "target_tokens": sum(sum(lab != IGNORE_INDEX for lab in f["labels"]) for f in features),
    }
    if not features:
        raise UserError(
            f"no examples left after tokenization/truncation ({len(records)} read from {source}; "
            f"max_length={max_length}); raise max_length or shorten the prompts"
        )
    return features, stats
