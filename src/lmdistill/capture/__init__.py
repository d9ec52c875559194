"""Offline teacher knowledge: `lmdistill capture` stores the teacher's top-k log-probs and tail mass
per target token; `distill.teacher_store` trains from them with no teacher in memory.

See docs/capture.md for the file format, the loss and measured sizes.
"""

from lmdistill.capture.codec import CODECS, LOGPROB_STEP, Decoded, TopK, decode, encode
from lmdistill.capture.config import CaptureConfig, CaptureOptions, load_capture_config
from lmdistill.capture.reader import TeacherStore
from lmdistill.capture.run import CaptureSummary, capture, teacher_topk
from lmdistill.capture.store import data_hashes, tokenizer_hash

__all__ = [
    "CODECS",
    "LOGPROB_STEP",
    "CaptureConfig",
    "CaptureOptions",
    "CaptureSummary",
    "Decoded",
    "TeacherStore",
    "TopK",
    "capture",
    "data_hashes",
    "decode",
    "encode",
    "load_capture_config",
    "teacher_topk",
    "tokenizer_hash",
]
