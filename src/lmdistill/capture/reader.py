"""Reading a teacher store for training: checks against the run, then rows by example index.

`TeacherStore.open(folder)` refuses a store that is missing, unfinished or of another format.
`check_run` compares it with what a training run would feed it and raises one UserError naming
every difference. `rows(indices)` returns the stored top-k of those examples, concatenated in the
given order: exactly the row-major order of the trainer's target tokens (`final[:, :-1][mask]`).

Decoded shards are kept in a small LRU cache (`cache_shards`, in their smallest exact form: 3 to 4
bytes per stored entry), so memory stays bounded however large the store; each shard file's sha256
is checked against the manifest the first time this process reads it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from lmdistill.capture.codec import FORMAT, Decoded, decode
from lmdistill.capture.store import data_hashes, file_sha256, read_manifest, shard_ranges, tokenizer_hash
from lmdistill.errors import UserError


class TeacherStore:
    """A finished store written by `lmdistill capture` (see `lmdistill.capture.store`).

    Args:
        folder: the store folder (holds manifest.json).
        cache_shards: decoded shards kept in memory at once.
    """

    def __init__(self, folder: str | Path, manifest: dict, cache_shards: int = 8):
        self.folder = Path(folder)
        self.manifest = manifest
        self.cache_shards = cache_shards
        self._cache: OrderedDict[int, Decoded] = OrderedDict()
        self._verified: set[int] = set()

    @classmethod
    def open(cls, folder: str | Path, cache_shards: int = 8) -> TeacherStore:
        """Open a store; UserError if it is missing, not a store, or its capture did not finish."""
        path = Path(folder)
        if not (path / "manifest.json").is_file():
            raise UserError(
                f"teacher store {folder}: no manifest.json there; write one with `lmdistill capture`"
            )
        manifest = read_manifest(path)
        if manifest is None:
            raise UserError(f"teacher store {folder}: manifest.json is not a {FORMAT} manifest")
        if not manifest.get("complete"):
            raise UserError(
                f"teacher store {folder} is incomplete (its capture did not finish); rerun the same "
                "`lmdistill capture` to complete it"
            )
        return cls(path, manifest, cache_shards)

    @classmethod
    def open_for(cls, folder: str | Path, teacher_id: str, cache_shards: int = 8) -> TeacherStore:
        """Teacher `teacher_id`'s store: `folder` itself, or, when `folder` is a capture with several
        teachers (no manifest.json of its own), its subfolder `folder/teacher_id`."""
        path = Path(folder)
        if not (path / "manifest.json").is_file() and (path / teacher_id / "manifest.json").is_file():
            path = path / teacher_id
        return cls.open(path, cache_shards)

    @property
    def routed_for(self) -> str | None:
        """The teacher id of a store from a capture with several teachers (its routed rows only), else None."""
        return self.manifest.get("teacher_id")

    def check_routes(self, key: str, teacher_id: str, rows: list[int], examples: int) -> None:
        """A routed store must be `teacher_id`'s and hold exactly the run's `rows` routed to it (indices
        among the run's `examples` tokenized examples); one UserError naming `key` otherwise."""
        m = self.manifest
        if m["teacher_id"] != teacher_id:
            raise UserError(
                f"{key}: teacher store {self.folder} was captured for teacher {m['teacher_id']!r}, not "
                f"{teacher_id!r}: give {teacher_id!r} its own store (capture.output_dir/{teacher_id})"
            )
        stored = list(m["rows"])
        if stored != rows or m["routed_examples"] != examples:
            changed = sorted(set(stored) ^ set(rows))
            where = "the same rows, but the whole data's size differs"
            if changed:
                now = "routed to it now, not then" if changed[0] in rows else "routed to it then, not now"
                where = f"first difference: example {changed[0]}, {now}"
            raise UserError(
                f"{key}: teacher store {self.folder} holds the rows routed to {teacher_id!r} at capture time "
                f"({len(stored)} of {m['routed_examples']} examples), but this run routes {len(rows)} of "
                f"{examples} to it ({where}); the data or the routing changed: capture again with this "
                "run's teachers and routing"
            )

    def __getstate__(self):  # DataLoader workers get their own empty cache
        return {**self.__dict__, "_cache": OrderedDict(), "_verified": set()}

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def vocab(self) -> int:
        return int(self.manifest["vocab"])

    def check_temperature(self, temperature: float) -> None:
        if float(self.manifest["temperature"]) != float(temperature):
            raise UserError(
                f"teacher store {self.folder} was captured at temperature {self.manifest['temperature']}, "
                f"this run uses distill.temperature={temperature}; capture again at that temperature"
            )

    def check_run(self, tokenizer, features: list[dict], temperature: float) -> None:
        """Raise one UserError naming every way the run differs from the capture."""
        m = self.manifest
        problems = []
        if float(m["temperature"]) != float(temperature):
            problems.append(f"it was captured at temperature {m['temperature']}, this run uses {temperature}")
        if tokenizer_hash(tokenizer) != m["tokenizer_hash"]:
            problems.append(
                f"the tokenizer differs (store: {m['tokenizer_hash'][:12]}, this run: "
                f"{tokenizer_hash(tokenizer)[:12]})"
            )
        data = self._data_difference(features) if not problems else None
        if data:
            problems.append(
                f"the tokenized data differs: {data} (the store was captured from {m['data_source']} with "
                f"data.max_length={m['max_length']}, data.max_examples={m['max_examples']}; the chat template "
                "counts too)"
            )
        if problems:
            raise UserError(f"teacher store {self.folder} does not match this run: " + "; ".join(problems))

    def _data_difference(self, features: list[dict]) -> str | None:
        """Where the run's tokenized examples first differ from the store's, or None."""
        m, size = self.manifest, int(self.manifest["shard_size"])
        if len(features) != m["examples"]:
            return f"the store holds {m['examples']} examples, this run has {len(features)}"
        whole, parts = data_hashes(features, size)
        if whole == m["data_hash"]:
            return None
        first = next(
            (i for i, (a, b) in enumerate(zip(parts, m["shards"], strict=True)) if a != b["data_sha256"]), 0
        )
        start, end = shard_ranges(len(features), size)[first]
        return f"from example {start} on (shard {first}, examples {start}-{end - 1})"

    def rows(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Stored rows of examples `indices`, concatenated in that order.

        Returns (ids int64 [N, k], logprobs float32 [N, k], tail float32 [N], counts [B] rows per example).
        """
        ids, values, tails, counts = [], [], [], []
        for index in indices:
            if not 0 <= index < self.manifest["examples"]:
                raise IndexError(f"example {index} is not in teacher store {self.folder}")
            shard = self._shard(index // int(self.manifest["shard_size"]))
            local = index % int(self.manifest["shard_size"])
            a, b = int(shard.offsets[local]), int(shard.offsets[local + 1])
            ids.append(shard.ids[a:b])
            values.append(shard.values[a:b].astype(np.float32) * np.float32(shard.scale))
            tails.append(shard.tail[a:b].astype(np.float32))
            counts.append(b - a)
        return (
            torch.from_numpy(np.concatenate(ids).astype(np.int64)),
            torch.from_numpy(np.concatenate(values)),
            torch.from_numpy(np.concatenate(tails)),
            counts,
        )

    def _shard(self, index: int) -> Decoded:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        from safetensors import safe_open

        info = self.manifest["shards"][index]
        path = self.folder / info["file"]
        if index not in self._verified:
            if not path.is_file() or file_sha256(path) != info["sha256"]:
                raise UserError(
                    f"teacher store {self.folder}: {info['file']} is missing or changed since the capture "
                    "(checksum differs); rerun `lmdistill capture` with the same settings to repair it"
                )
            self._verified.add(index)
        with safe_open(str(path), framework="np") as fh:
            decoded = decode({key: fh.get_tensor(key) for key in fh.keys()}, fh.metadata())  # noqa: SIM118
        self._cache[index] = decoded
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return decoded


class RoutedRows:
    """A routed store read by the run's example indices: example `rows[j]` is the store's row j.

    rows: the run's examples routed to the store's teacher, in data order (checked by
    `TeacherStore.check_routes`). `rows(indices)` answers as `TeacherStore.rows` does.
    """

    def __init__(self, store: TeacherStore, rows: list[int]):
        self.store, self.folder, self.k, self.vocab = store, store.folder, store.k, store.vocab
        self._local = {n: j for j, n in enumerate(rows)}

    def rows(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        missing = [i for i in indices if i not in self._local]
        if missing:
            raise IndexError(
                f"example {missing[0]} is not routed to teacher {self.store.routed_for!r} "
                f"(store {self.folder})"
            )
        return self.store.rows([self._local[i] for i in indices])
