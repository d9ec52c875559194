"""Data: reading records, tokenizing with completion-only labels, batching, demo prompts."""

from lmdistill.data.collator import DistillCollator, pad_id
from lmdistill.data.corpus import chatterbot_conversations, chatterbot_data_dir, split_train_heldout
from lmdistill.data.records import (
    FORMATS,
    detect_format,
    load_records,
    read_jsonl,
    validate_record,
    validate_records,
)
from lmdistill.data.tokenize import IGNORE_INDEX, chat_target_spans, tokenize_record, tokenize_records

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "DistillCollator",
    "chat_target_spans",
    "chatterbot_conversations",
    "chatterbot_data_dir",
    "detect_format",
    "load_records",
    "pad_id",
    "read_jsonl",
    "split_train_heldout",
    "tokenize_record",
    "tokenize_records",
    "validate_record",
    "validate_records",
]
