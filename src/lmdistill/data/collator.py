"""Batch padding for tokenized features (see `lmdistill.data.tokenize`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmdistill.data.tokenize import IGNORE_INDEX


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
    - a feature's ``"example_index"`` (its index in the training data, which an offline teacher store
      looks its rows up by; see `lmdistill.teachers.whitebox.StoreTeacher`) -> ``"example_index"``
      int64 [B]; a batch must not mix features with and without one;
    - a feature's ``"teacher_index"`` (its teacher among several, `lmdistill.teachers.routing`) ->
      ``"teacher_index"`` int64 [B] (-1 for a feature without one).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

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
        indexed = ["example_index" in f for f in features]
        if any(indexed):
            if not all(indexed):
                raise ValueError("a batch mixes features with and without an example_index")
            batch["example_index"] = torch.tensor([int(f["example_index"]) for f in features])
        if any("teacher_index" in f for f in features):  # several teachers: each row's (routing)
            batch["teacher_index"] = torch.tensor([int(f.get("teacher_index", -1)) for f in features])
        return batch


def pad_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS, else 0 (masked out either way)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0
