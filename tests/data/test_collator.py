"""Padding a batch of features."""

from __future__ import annotations

import torch

from lmdistill.data import IGNORE_INDEX, DistillCollator, tokenize_records


def feats():
    return [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]},
        {"input_ids": [8], "labels": [-100], "attention_mask": [1]},
    ]


def test_right_pads_to_longest():
    batch = DistillCollator(pad_token_id=0)(feats())
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for t in batch.values():
        assert t.dtype == torch.long and t.shape == (2, 3)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]


def test_pad_to_multiple_of():
    batch = DistillCollator(pad_token_id=9, pad_to_multiple_of=8)(feats())
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [8] + [9] * 7
    assert (batch["labels"][:, 3:] == IGNORE_INDEX).all()
    assert batch["attention_mask"].sum().item() == 4


def test_collates_real_features(tiny_tokenizer):
    records = [{"text": "Hello world"}, {"prompt": "What is the capital?\n", "completion": "Paris."}]
    features, _ = tokenize_records(records, tiny_tokenizer, max_length=64)
    batch = DistillCollator(pad_token_id=tiny_tokenizer.pad_token_id)(features)
    lengths = [len(f["input_ids"]) for f in features]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for i, f in enumerate(features):
        n = lengths[i]
        assert batch["labels"][i, :n].tolist() == f["labels"]
        assert (batch["input_ids"][i, n:] == tiny_tokenizer.pad_token_id).all()


def test_example_index_travels_with_the_batch():
    import pytest

    indexed = [{**f, "example_index": i} for i, f in zip((7, 3), feats(), strict=True)]
    batch = DistillCollator(pad_token_id=9)(indexed)
    assert batch["example_index"].dtype == torch.int64 and batch["example_index"].tolist() == [7, 3]
    assert "example_index" not in DistillCollator(pad_token_id=9)(feats())
    with pytest.raises(ValueError, match="mixes features with and without an example_index"):
        DistillCollator(pad_token_id=9)([indexed[0], feats()[1]])
