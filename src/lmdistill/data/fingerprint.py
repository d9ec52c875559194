"""A fingerprint of the training data as the trainer sees it (tokenized features), so a resumed run
can tell that its data changed since the checkpoint was written."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable


def features_fingerprint(features: Iterable[dict]) -> str:
    """sha256 (hex) over every feature's keys and values in order: token ids, labels, weights, prompts.

    The order counts: the same rows shuffled differently are other data to a resume, which skips the
    first global_step x batch examples of the order it is given.
    """
    digest = hashlib.sha256()
    for feature in features:
        for key in sorted(feature):
            value = feature[key]
            record = json.dumps([key, value], separators=(",", ":"), default=_plain)
            digest.update(record.encode("utf-8"))
            digest.update(b"\n")
        digest.update(b"\x00")  # feature boundary: [a][b] and [a, b] differ
    return digest.hexdigest()


def _plain(value):
    """Tensors and numpy arrays as lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")
