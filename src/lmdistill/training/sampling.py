"""On-policy sampling: prompts cut from training rows, completions sampled in batches, and the ordinary
training batches built from them (prompt and everything after the first end-of-sequence masked).

`lmdistill.training.on_policy.OnPolicyTrainer` calls these once per optimizer window; they know nothing
of the trainer, so the same batches serve the student's own samples (on-policy) and the teacher's
(sequence-level KD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmdistill.data.collator import DistillCollator
from lmdistill.data.records import detect_format, validate_record
from lmdistill.data.tokenize import IGNORE_INDEX, _render, carry_route, check_weight, tokenize_record
from lmdistill.errors import UserError
from lmdistill.models.embedded import require_chat_template
from lmdistill.models.forward import unwrap


def prompt_ids(record: dict[str, Any], tokenizer, where: str) -> list[int] | None:
    """The token ids of a row's prompt, or None for a row without one (`text` rows).

    prompt rows: the prompt text with the tokenizer's special tokens (as training tokenizes it);
    messages: rendered by the chat template up to the last user turn, with the generation prompt (a
    conversation ending in assistant turns drops them).
    """
    if record.get("messages") is not None:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in msgs
        ):
            raise UserError(f'{where}: "messages" must be a list of {{"role", "content"}} objects')
        last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=None)
        if last_user is None:
            raise UserError(f"{where}: no user message to sample an answer to")
        require_chat_template(tokenizer, "'messages' records")
        text = _render(tokenizer, msgs[: last_user + 1], add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if isinstance(record.get("prompt"), str):
        return list(tokenizer(record["prompt"], add_special_tokens=True)["input_ids"])
    return None


def _has_answer(record: dict[str, Any]) -> bool:
    msgs = record.get("messages")
    if msgs is not None:
        return isinstance(msgs, list) and any(
            isinstance(m, dict) and m.get("role") == "assistant" for m in msgs
        )
    return record.get("completion") is not None or record.get("text") is not None


def prompt_features(
    records: list[dict[str, Any]],
    tokenizer,
    max_length: int,
    max_new_tokens: int,
    *,
    source: str = "<records>",
    need_answers: bool = True,
) -> list[dict[str, Any]]:
    """Training features that also carry their prompt: each is `tokenize_record`'s feature (or, for a
    prompt-only row, the prompt with every label -100) plus "prompt_ids" (list[int]).

    Prompts longer than max_length - max_new_tokens keep their last tokens (the generation prompt
    survives). need_answers: off-policy steps train on the answers, so every row needs one (UserError
    naming the first row without). Raises UserError for a row without a prompt.
    """
    room = max_length - max_new_tokens
    features, missing = [], []
    for i, rec in enumerate(records):
        where = f"{source}:{i + 1}"
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected a JSON object")
        check_weight(rec, where)
        prompt = prompt_ids(rec, tokenizer, where)
        if prompt is None:
            detect_format(rec, where)  # an unknown layout says so; a text row has no prompt
            raise UserError(
                f"{where}: a text row has no prompt to sample from; on-policy training needs `prompt` or "
                "`messages` rows"
            )
        if not prompt:
            raise UserError(f"{where}: the prompt is empty")
        prompt = prompt[-room:]
        feature = None
        if _has_answer(rec):
            validate_record(rec, where)
            feature = tokenize_record(rec, tokenizer, max_length)
        if feature is None:
            missing.append(where)
            feature = {
                "input_ids": prompt,
                "labels": [IGNORE_INDEX] * len(prompt),
                "attention_mask": [1] * len(prompt),
            }
            if rec.get("weight") is not None:
                feature["weight"] = float(rec["weight"])
        feature["prompt_ids"] = prompt
        carry_route(rec, feature)  # its samples are scored by the prompt's teacher
        features.append(feature)
    if need_answers and missing:
        raise UserError(
            f"{missing[0]}: no answer to train on ({len(missing)} of {len(records)} rows have none), but the "
            "off-policy steps (share 1 - on_policy.lmbda) train on the data's answers: give answers, set "
            "on_policy.lmbda=1, or on_policy.seq_kd=true"
        )
    if not features:
        raise UserError(f"{source}: no rows")
    return features


@dataclass
class PromptCollator:
    """`DistillCollator`'s batch plus "prompt_ids": the B prompts as lists of ids (not padded)."""

    inner: DistillCollator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)  # with "teacher_index" [B] when the rows were routed
        if all("prompt_ids" in f for f in features):  # held-out features have none
            batch["prompt_ids"] = [list(f["prompt_ids"]) for f in features]
        return batch


# -- sampling -----------------------------------------------------------------------------------------


def eos_ids(tokenizer, model) -> set[int]:
    """Every id that ends a sequence: the tokenizer's EOS and the model's generation_config ones."""
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *([gen] if isinstance(gen, int) else (gen or []))}
    return {int(i) for i in ids if i is not None}


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    pad_id: int,
    eos: set[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[list[int]]:
    """Sample one completion per prompt in one batched `generate` call (left padding, KV cache).

    Returns per prompt the new token ids up to and including the first EOS (all of them when none
    came). The model is put in eval mode for the call and back as it was; torch's global RNG is
    forked, so sampling is reproducible from `seed` and leaves the caller's random state alone.
    """
    model = unwrap(model)
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = torch.tensor(p)
        mask[b, width - len(p) :] = 1
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=sorted(eos) or None,
                use_cache=True,
            )
    finally:
        model.train(was_training)
    completions = []
    for row in out[:, width:].tolist():
        cut = next((t + 1 for t, tok in enumerate(row) if tok in eos), len(row))
        completions.append(row[:cut])
    return completions


def sequence_batch(
    prompts: list[list[int]], completions: list[list[int]], *, pad_id: int, max_length: int
) -> dict[str, torch.Tensor]:
    """Right-padded trainer batch of prompt + completion rows: input_ids, attention_mask, labels [B, S].

    labels: -100 on the prompt, on padding and (since completions end at their first EOS) after it;
    the completion's tokens, the EOS included, are the targets. Rows are cut to max_length tokens.
    """
    rows = [(p + c)[:max_length] for p, c in zip(prompts, completions, strict=True)]
    width = max(len(r) for r in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
    }
    for b, (p, r) in enumerate(zip(prompts, rows, strict=True)):
        batch["input_ids"][b, : len(r)] = torch.tensor(r)
        batch["attention_mask"][b, : len(r)] = 1
        start = max(len(p), 1)  # position 0 is never a target (as in tokenize_record)
        if len(r) > start:
            batch["labels"][b, start : len(r)] = torch.tensor(r[start:])
    return batch
