"""The on-disk teacher store: shard files, their completion records, the manifest and fingerprints.

A store folder holds:
- `shard-00000.safetensors`, ...: shard s covers examples [s * shard_size, (s + 1) * shard_size) in
  data order (see `codec` for what is inside);
- `shard-00000.json`, ...: written after its shard file, it records the shard's sha256, size,
  target-token count, the fingerprint of its examples and of the settings. A shard counts as done
  only when this record exists, matches the run's settings and the file's checksum: a shard file
  without its record (a kill between the two writes) is recomputed, never trusted;
- `manifest.json`: the settings from the start of a capture (`complete: false`), rewritten with
  every shard's record and `complete: true` at the end.
Every file is written atomically (temporary sibling, fsync, rename): under its final name a file is
always whole.

Fingerprints: the tokenizer's is the sha256 of its token -> id map (sorted JSON); the data's is the
sha256 of every tokenized example's input_ids and labels (int32, length-prefixed) in order, so it
changes with the data file, max_length, max_examples, the chat template and the tokenizer alike; the
teacher's is `teachers.local.weights_fingerprint` (config, dtype, weight files' names, sizes and
modification times; no weights are read).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lmdistill import __version__
from lmdistill.capture.codec import FORMAT, TopK, encode
from lmdistill.io import atomic_write, atomic_write_json

MANIFEST = "manifest.json"

#: Settings that must be equal for a store to be resumed into, and the config key each comes from.
MATCHED = {
    "format": "the store format",
    "teacher": "teacher.name",
    "teacher_dtype": "teacher.dtype",
    "teacher_hash": "the teacher's weights",
    "tokenizer_hash": "the tokenizer",
    "data_hash": "the tokenized data (data.train, data.max_length, data.max_examples or the chat template)",
    "examples": "the number of examples",
    "max_length": "data.max_length",
    "k": "capture.k",
    "temperature": "capture.temperature",
    "vocab": "the vocabulary size",
    "codec": "capture.codec",
    "shard_size": "capture.shard_size",
}


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def record_file(index: int) -> str:
    return f"shard-{index:05d}.json"


def shard_ranges(examples: int, shard_size: int) -> list[tuple[int, int]]:
    """[(start, end), ...] example ranges of consecutive shards."""
    return [(s, min(s + shard_size, examples)) for s in range(0, examples, shard_size)]


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the token -> id map (added tokens included), as sorted JSON."""
    text = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def data_hashes(features: list[dict], shard_size: int) -> tuple[str, list[str]]:
    """(hash of all examples, [hash of each shard's examples]) over input_ids and labels."""
    whole = hashlib.sha256()
    shards = []
    for start, end in shard_ranges(len(features), shard_size):
        part = hashlib.sha256()
        for f in features[start:end]:
            ids = np.asarray(f["input_ids"], dtype="<i4")
            chunk = np.int64(len(ids)).tobytes() + ids.tobytes() + np.asarray(f["labels"], "<i4").tobytes()
            whole.update(chunk)
            part.update(chunk)
        shards.append(part.hexdigest())
    return whole.hexdigest(), shards


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps({k: settings[k] for k in MATCHED}, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def differences(stored: dict, wanted: dict, keys=MATCHED) -> list[str]:
    """One phrase per setting that differs: 'capture.k: the store has 64, this run 128'."""
    out = []
    for key in keys:
        a, b = stored.get(key), wanted.get(key)
        if a != b:
            if key.endswith("_hash"):
                a, b = str(a)[:12], str(b)[:12]
            out.append(f"{MATCHED.get(key, key)}: the store has {a}, this run {b}")
    return out


_DTYPES = {
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "int32": "I32",
    "int64": "I64",
    "float16": "F16",
    "float32": "F32",
}


def safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A safetensors file with a deterministic header (sorted keys), so equal shards are equal bytes.

    (The safetensors library writes `__metadata__` in hash-map order, which varies from run to run.)
    Layout: little-endian u64 header length, JSON header padded with spaces to 8 bytes, tensor data.
    """
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset, blobs = 0, []
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        data = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": _DTYPES[a.dtype.name],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def write_shard(folder: Path, index: int, start: int, top: TopK, settings: dict, data_sha: str) -> dict:
    """Write shard `index` (examples from `start`) and then its completion record; return the record."""
    arrays, meta = encode(top, settings["codec"], settings["vocab"])
    path = folder / shard_file(index)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(safetensors_bytes(arrays, meta)))
    record = {
        "file": path.name,
        "examples": [start, start + len(top.counts)],
        "target_tokens": int(top.counts.sum()),
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "data_sha256": data_sha,
        "settings_sha256": settings_hash(settings),
    }
    atomic_write_json(folder / record_file(index), record)
    return record


def done_record(folder: Path, index: int, settings: dict, data_sha: str, verify: bool = True) -> dict | None:
    """The shard's completion record if the shard is complete for these settings and data, else None.

    verify: also re-read the shard file and compare its sha256 with the record (else: its size only).
    """
    try:
        record = json.loads((folder / record_file(index)).read_text())
    except (OSError, ValueError):
        return None
    if record.get("settings_sha256") != settings_hash(settings) or record.get("data_sha256") != data_sha:
        return None
    path = folder / shard_file(index)
    if not path.is_file() or path.stat().st_size != record.get("bytes"):
        return None
    return record if not verify or file_sha256(path) == record.get("sha256") else None


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def write_manifest(folder: Path, settings: dict, shards: list[dict] | None = None, **extra) -> Path:
    """manifest.json: settings, then (at the end) per-shard records, totals and complete: true."""
    manifest = {"lmdistill_version": __version__, **settings, "complete": False, **extra}
    if shards is not None:
        manifest["shards"] = [{k: v for k, v in r.items() if k != "settings_sha256"} for r in shards]
        manifest["target_tokens"] = sum(r["target_tokens"] for r in shards)
        manifest["bytes"] = sum(r["bytes"] for r in shards)
    return atomic_write_json(folder / MANIFEST, manifest)


def remove_store_files(folder: Path, temps_only: bool = False) -> None:
    """Delete this module's files in `folder` (all of them, or only abandoned temporary ones)."""
    for path in folder.iterdir():
        name = path.name
        is_temp = name.startswith((".shard-", f".{MANIFEST}")) and name.endswith(".tmp")
        ours = name == MANIFEST or (name.startswith("shard-") and name.endswith((".safetensors", ".json")))
        if path.is_file() and (is_temp or (ours and not temps_only)):
            os.unlink(path)
