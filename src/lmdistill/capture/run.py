"""`lmdistill capture`: run the teacher once over a data set and store its top-k knowledge.

The data is read and tokenized exactly as `lmdistill train` does (same `data` keys, same
completion-only labels), so training can line the stored rows up with its own target tokens.
For every target position (labels[:, 1:] != -100, row-major, as the trainer's `final[:, :-1][mask]`)
the teacher's log_softmax(logits / T) over the real vocabulary is computed in float32, chunk by chunk
through its head (never [batch, seq, vocab] at once), and its k largest entries, their ids and the log
of the mass outside them are kept (see `lmdistill.chunked` for how training uses them).

Resume: shards whose completion record matches the settings and the file's checksum are skipped;
anything else is computed again. A store written with other settings stops the run with one
message naming each difference (or is deleted first with capture.overwrite=true).

With `teacher.server` (an OpenAI-compatible server, see `lmdistill.teachers.whitebox.server`) no
teacher is loaded: the server scores each sequence's token ids and returns the top k log-probs
(capture.k, at temperature 1); the store has the same format, `teacher.name` names the tokenizer, and
the server's model and URL stand in for the weights' fingerprint.

Several processes (torchrun/accelerate: torch.distributed initialised, or WORLD_SIZE > 1 in the
environment): rank r computes the shards s with s % world == r; rank 0 writes the manifest once all
are done. Rank 0 holds the folder's lock (`lmdistill.outputs`) while the store is written: a second
capture into the same folder is refused at once.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmdistill.capture.codec import FORMAT, TopK, storage
from lmdistill.capture.config import CaptureConfig
from lmdistill.capture.store import (
    MATCHED,
    data_hashes,
    differences,
    done_record,
    read_manifest,
    remove_store_files,
    shard_ranges,
    tokenizer_hash,
    write_manifest,
    write_shard,
)
from lmdistill.data import DistillCollator, load_records, pad_id, tokenize_records
from lmdistill.errors import UserError
from lmdistill.outputs import LOCK_FILE, check_output_folder, hold_lock, writing
from lmdistill.teachers.whitebox import InProcessTeacher, TeacherQuery, TeacherSource, topk_rows

__all__ = ["CaptureSummary", "capture", "capture_features", "teacher_topk", "topk_rows"]


@dataclass
class CaptureSummary:
    """What a capture did. tokens/s counts the target tokens of the shards computed by this run."""

    folder: Path
    examples: int
    target_tokens: int
    bytes: int
    shards_computed: int
    shards_reused: int
    computed_tokens: int
    input_tokens: int
    seconds: float

    def line(self) -> str:
        speed = "nothing to compute"
        if self.computed_tokens and self.seconds > 0:
            speed = (
                f"{self.computed_tokens / self.seconds:.0f} target tokens/s "
                f"({self.input_tokens / self.seconds:.0f} input tokens/s through the teacher)"
            )
        return (
            f"teacher store {self.folder}: {self.examples} examples, {self.target_tokens} target tokens, "
            f"{self.bytes / 1e6:.2f} MB on disk, {self.bytes / max(self.target_tokens, 1):.1f} bytes/token; "
            f"shards computed {self.shards_computed}, reused {self.shards_reused}; {speed}"
        )


@torch.no_grad()
def teacher_topk(
    teacher: TeacherSource | torch.nn.Module,
    features: list[dict],
    *,
    k: int,
    temperature: float,
    vocab: int,
    pad_token_id: int,
    batch_size: int = 8,
    chunk_size: int = 256,
) -> TopK:
    """The teacher's top-k at every target token of `features`, in feature order (see `TopK`).

    teacher: a `TeacherSource` (a bare model is run in this process). Examples are batched longest
    first (less padding; the order within a call is fixed, so the result is reproducible); a dense
    teacher's logits are computed `chunk_size` target tokens at a time, in float32.
    """
    source = InProcessTeacher(teacher) if isinstance(teacher, torch.nn.Module) else teacher
    collate = DistillCollator(pad_token_id=pad_token_id)
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    parts: list = [None] * len(features)
    for start in range(0, len(order), batch_size):
        members = order[start : start + batch_size]
        query = TeacherQuery.from_batch(collate([features[i] for i in members]))
        top = source.score(query).topk(k, temperature=temperature, vocab=vocab, chunk_size=chunk_size)
        rows = zip(*(x.split(query.counts) for x in top), strict=True)
        for member, row in zip(members, rows, strict=True):
            parts[member] = row
    return TopK(
        ids=torch.cat([p[0] for p in parts]).numpy().astype(np.int64),
        logprobs=torch.cat([p[1] for p in parts]).numpy().astype(np.float32),
        tail=torch.cat([p[2] for p in parts]).numpy().astype(np.float32),
        counts=np.array([len(p[2]) for p in parts], dtype=np.int64),
    )


def capture(cfg: CaptureConfig, log=print) -> CaptureSummary | list[CaptureSummary]:
    """Capture the teacher's top-k over cfg.data.train into cfg.capture.output_dir (see module docstring).

    With several `teachers:`, one store per teacher holding only its routed rows (a list of summaries,
    see `lmdistill.capture.several`); a list of one is `teacher:`.
    """
    from lmdistill.models import load_tokenizer

    cfg.validate()
    if len(cfg.teachers) > 1:
        from lmdistill.capture.several import capture_several

        return capture_several(cfg, log)
    if cfg.teachers:
        cfg = one_teacher(cfg, cfg.teachers[0])
    check_output_folder(cfg.capture.output_dir, "capture", "capture.output_dir")
    if cfg.teacher.server:
        from lmdistill.teachers.whitebox import check_server_settings

        check_server_settings(cfg.teacher, cfg.capture.temperature, "capture.temperature")
    records = load_records(cfg.data.train)[: cfg.data.max_examples]  # [:None] keeps all
    tokenizer = load_tokenizer(cfg.teacher.name)
    features, stats = tokenize_records(records, tokenizer, cfg.data.max_length, source=cfg.data.train)
    return capture_features(cfg, tokenizer, features, stats, log=log)


def one_teacher(cfg: CaptureConfig, entry, **capture) -> CaptureConfig:
    """The capture config of one `teachers:` entry: it as `teacher:`, its temperature (when set) as
    capture.temperature, `capture` overrides (its output_dir) applied."""
    import dataclasses

    from lmdistill.config import TeacherConfig

    own = {f.name: getattr(entry, f.name) for f in dataclasses.fields(TeacherConfig)}
    options = dataclasses.replace(
        cfg.capture, temperature=entry.temperature or cfg.capture.temperature, **capture
    )
    return dataclasses.replace(cfg, teacher=TeacherConfig(**own), capture=options, teachers=[])


def capture_features(
    cfg: CaptureConfig, tokenizer, features: list[dict], stats: dict, *, extra: dict | None = None, log=print
) -> CaptureSummary:
    """Capture cfg.teacher's top-k over tokenized `features` (in order) into cfg.capture.output_dir.

    extra: more settings the manifest records (a routed capture: the teacher's id and the indices of
    its rows in the whole data, `lmdistill.capture.several`)."""
    from lmdistill.capture.distributed import Processes

    c, folder = cfg.capture, Path(cfg.capture.output_dir)
    settings, shard_hashes = _settings(cfg, tokenizer, features)
    settings.update(extra or {})
    procs = Processes.start()
    lock = contextlib.ExitStack()
    try:
        existing = _check_folder(folder, settings, c.overwrite, procs.rank, skip=("teacher_hash",))
        teacher, settings["teacher_hash"] = _open_teacher(cfg, tokenizer, settings["vocab"], procs)
        if procs.rank == 0:  # one writer per folder; the other ranks write only their own shards
            lock.enter_context(hold_lock(folder / LOCK_FILE, f"capture.output_dir {folder}", "capture"))
            existing = _check_folder(folder, settings, c.overwrite, procs.rank, skip=("teacher_hash",))
        if existing is not None:
            _check_folder(folder, settings, c.overwrite, procs.rank, skip=())
        # No space, read-only: one line naming the folder (a shard counts only once its record is written).
        with writing(f"capture.output_dir {folder}", "capture.output_dir", folder):
            ranges = shard_ranges(len(features), c.shard_size)
            if procs.rank == 0:
                folder.mkdir(parents=True, exist_ok=True)
                remove_store_files(folder, temps_only=True)  # a killed run's temporary files: never trusted
                done = [
                    done_record(folder, s, settings, shard_hashes[s], verify=False)
                    for s in range(len(ranges))
                ]
                if read_manifest(folder) is None or None in done:
                    write_manifest(folder, settings)  # complete: false until every shard is there
            procs.barrier()
            t0 = time.perf_counter()
            counts = [0, 0, 0, 0]  # shards computed, reused, target and input tokens computed
            for s in range(procs.rank, len(ranges), procs.world):
                _one_shard(
                    cfg, teacher, tokenizer, features, settings, s, ranges, shard_hashes[s], counts, log
                )
            seconds = time.perf_counter() - t0
            counts = procs.sum_across(counts)
            shards = []
            if procs.rank == 0:
                for s in range(len(ranges)):
                    record = done_record(folder, s, settings, shard_hashes[s], verify=False)
                    if record is None:
                        raise RuntimeError(f"shard {s} has no completion record after every process finished")
                    shards.append(record)
                write_manifest(folder, settings, shards, complete=True, tokenization=stats)
            procs.barrier()
    finally:
        lock.close()
        procs.close()
    summary = CaptureSummary(
        folder, len(features), stats["target_tokens"], sum(r["bytes"] for r in shards), *counts, seconds
    )
    if procs.rank == 0:
        log(summary.line())
    return summary


def _open_teacher(cfg: CaptureConfig, tokenizer, vocab: int, procs) -> tuple[TeacherSource, str]:
    """The teacher source and its fingerprint: a probed server, or the model loaded on this process's device."""
    from lmdistill.models import check_vocab, load_teacher, resolve_device
    from lmdistill.models.forward import weights_fingerprint
    from lmdistill.teachers.whitebox import ServerTeacher

    if cfg.teacher.server:
        source = ServerTeacher.connect(
            cfg.teacher, tokenizer, k=cfg.capture.k, vocab=vocab, k_key="capture.k"
        )
        return source, source.fingerprint
    name = cfg.teacher.name
    teacher = load_teacher(
        name, dtype=cfg.teacher.dtype, device=procs.device(cfg.capture.device, resolve_device)
    )
    check_vocab(tokenizer, tokenizer, teacher, teacher, teacher_name=name, student_name=name)
    return InProcessTeacher(teacher, name), weights_fingerprint(teacher)


def _settings(cfg: CaptureConfig, tokenizer, features: list[dict]) -> tuple[dict, list[str]]:
    """What the store records about how it was made (teacher_hash filled in later), and per-shard data hashes."""
    from lmdistill.models.vocab import real_vocab_size

    c = cfg.capture
    vocab = real_vocab_size(tokenizer)
    if c.k > vocab:
        raise UserError(f"capture.k={c.k} is larger than the vocabulary ({vocab} tokens)")
    data_hash, shard_hashes = data_hashes(features, c.shard_size)
    settings = {
        "format": FORMAT,
        "teacher": cfg.teacher.name,
        "teacher_dtype": cfg.teacher.dtype,
        "teacher_hash": None,  # known once the teacher is loaded
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "data_hash": data_hash,
        "data_source": cfg.data.train,
        "max_examples": cfg.data.max_examples,
        "examples": len(features),
        "max_length": cfg.data.max_length,
        "k": c.k,
        "temperature": c.temperature,
        "vocab": vocab,
        "codec": c.codec,
        "dtypes": storage(c.codec, vocab),
        "shard_size": c.shard_size,
    }
    return settings, shard_hashes


def _one_shard(cfg, teacher, tokenizer, features, settings, s, ranges, data_sha, counts, log) -> None:
    """Reuse shard s if it is complete, else compute and write it; add to counts (see `capture`)."""
    c, folder = cfg.capture, Path(cfg.capture.output_dir)
    start, end = ranges[s]
    where = f"shard {s + 1}/{len(ranges)} (examples {start}-{end - 1})"
    if done_record(folder, s, settings, data_sha) is not None:
        counts[1] += 1
        log(f"{where}: already complete, reused")
        return
    t0 = time.perf_counter()
    top = teacher_topk(
        teacher,
        features[start:end],
        k=c.k,
        temperature=c.temperature,
        vocab=settings["vocab"],
        pad_token_id=pad_id(tokenizer),
        batch_size=c.batch_size,
        chunk_size=c.chunk_size,
    )
    record = write_shard(folder, s, start, top, settings, data_sha)
    counts[0] += 1
    counts[2] += record["target_tokens"]
    counts[3] += sum(len(f["input_ids"]) for f in features[start:end])
    log(
        f"{where}: {record['target_tokens']} target tokens, {record['bytes'] / 1e6:.2f} MB "
        f"({record['bytes'] / record['target_tokens']:.1f} bytes/token), {time.perf_counter() - t0:.1f} s"
    )


def _check_folder(
    folder: Path, settings: dict, overwrite: bool, rank: int, skip: tuple[str, ...]
) -> dict | None:
    """The existing manifest if it matches `settings` (keys in `skip` aside); else a UserError naming
    each difference or, with overwrite, None after rank 0 deleted the old store's files."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise UserError(f"capture.output_dir {folder} is a file, not a folder")
    manifest = read_manifest(folder)
    if manifest is None:
        strangers = [p.name for p in folder.iterdir() if not p.name.startswith(("shard-", ".shard-", "."))]
        if strangers:
            raise UserError(
                f"capture.output_dir {folder} holds other files ({', '.join(sorted(strangers)[:3])}) and no "
                "teacher store manifest; choose an empty or new folder"
            )
        return None
    diff = differences(manifest, settings, [key for key in MATCHED if key not in skip])
    if not diff:
        return manifest
    if not overwrite:
        raise UserError(
            f"capture.output_dir {folder} holds a store captured with other settings ("
            + "; ".join(diff)
            + "); use another output_dir, or capture.overwrite=true to replace it"
        )
    if rank == 0:
        remove_store_files(folder)
    return None
