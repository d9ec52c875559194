"""Batch padding for tokenized features (see `lmdistill.data.tokenize`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lmdistill.data.tokenize import IGNORE_INDEX


class RowSource(Protocol):
    """Where stored teacher rows come from (`lmdistill.capture.TeacherStore`)."""

    def rows(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]: ...


@dataclass
class DistillCollator:
    """Right-pad a list of features into a batch of LongTensors.

    Call on ``[{"input_ids": list[int], "labels": list[int], "attention_mask": list[int]}, ...]``
    (B features) to get ``{"input_ids": [B, S], "attention_mask": [B, S], "labels": [B, S]}``
    where S is the longest feature, rounded up to a multiple of `pad_to_multiple_of` if set.
    Padding uses `pad_token_id` in input_ids, 0 in attention_mask and -100 in labels.

    Optional extras:
    - a feature's ``"weight"`` (float, default 1.0 for the others) -> ``"loss_weights"`` float32 [B],
      present when any feature of the batch has one;
    - with `teacher_store`, features carrying ``"example_index"`` get that example's stored top-k rows:
      ``"teacher_topk_ids"`` int64 [N, k], ``"teacher_topk_logprobs"`` float32 [N, k] and
      ``"teacher_tail"`` float32 [N], where N counts the batch's target tokens (labels[:, 1:] != -100)
      in row-major order, the order of the trainer's ``final[:, :-1][mask]``. Features without an
      index (held-out data) get no rows.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    teacher_store: RowSource | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        seq = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            seq = -(-seq // m) * m
        batch = {
            "input_ids": torch.full((len(features), seq), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), seq), dtype=torch.long),
            "labels": torch.full((len(features), seq), IGNORE_INDEX, dtype=torch.long),
        }
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask = f.get("attention_mask")
            batch["attention_mask"][i, :n] = 1 if mask is None else torch.as_tensor(mask, dtype=torch.long)
            batch["labels"][i, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
        if any("weight" in f for f in features):
            batch["loss_weights"] = torch.tensor([float(f.get("weight", 1.0)) for f in features])
        if self.teacher_store is not None and any("example_index" in f for f in features):
            self._add_teacher_rows(batch, features)
        return batch

    def _add_teacher_rows(self, batch: dict[str, torch.Tensor], features: list[dict[str, Any]]) -> None:
        if not all("example_index" in f for f in features):
            raise ValueError("a batch mixes features with and without a teacher-store example_index")
        ids, logprobs, tail, counts = self.teacher_store.rows([int(f["example_index"]) for f in features])
        wanted = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).tolist()
        if counts != wanted:
            bad = next(i for i, (a, b) in enumerate(zip(counts, wanted, strict=True)) if a != b)
            raise ValueError(
                f"teacher store rows do not line up with the batch: example {features[bad]['example_index']} "
                f"has {wanted[bad]} target tokens but {counts[bad]} stored rows"
            )
        batch.update(teacher_topk_ids=ids, teacher_topk_logprobs=logprobs, teacher_tail=tail)


def pad_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS, else 0 (masked out either way)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0
