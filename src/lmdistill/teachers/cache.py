"""A crash-proof on-disk cache of teacher responses, and a `Teacher` wrapper that uses it.

Generating a data set from a teacher behind an API is slow and costs money, so every response is
committed to SQLite the moment it arrives: a run killed at any point (Ctrl-C, SIGKILL, an out-of-memory
kill) loses nothing it had received, and the rerun sends only what is missing.

Each row is keyed by `Request.key(backend, model)` (a sha256 over backend, model, messages and every
sampling parameter), holds the response as JSON (never pickle, so a cache file can be read safely),
and carries a sha256 checksum of that JSON: a row that does not match its checksum, or does not
parse, is treated as missing and is overwritten by the next answer. Failed responses
(finish_reason "error") are never stored, so a rerun retries them.

The database runs in WAL mode with synchronous=NORMAL: a killed process never loses a committed
response and never corrupts the file; only a power failure may drop the last few commits.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from lmdistill.errors import UserError
from lmdistill.teachers.types import Request, Response, collect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    checksum TEXT NOT NULL,
    created REAL NOT NULL
)
"""
_CHUNK = 500  # keys per SELECT ... IN (...), below SQLite's bound-variable limit


def _checksum(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _decode(value: str | None, checksum: str | None) -> Response | None:
    """The stored response, or None for a damaged row (bad checksum, bad JSON, unknown fields, an error)."""
    if not isinstance(value, str) or not isinstance(checksum, str) or _checksum(value) != checksum:
        return None
    try:
        data = json.loads(value)
        response = Response.from_json(data)
    except (ValueError, TypeError):
        return None
    if response.finish_reason == "error":
        return None
    return response


class ResponseCache:
    """Responses on disk, keyed by `Request.key(...)`; thread-safe, usable from several processes.

    Args:
        path: the SQLite file; created (with its folder) when missing.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # isolation_level=None: autocommit, so each put is its own committed transaction.
            self._conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(
                f"{self.path} is not a usable response cache ({e}); "
                "point the cache at a new file or delete this one"
            ) from e

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    def get(self, key: str) -> Response | None:
        """The cached response for `key`, or None when missing or damaged."""
        with self._lock:
            row = self._conn.execute("SELECT value, checksum FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else _decode(*row)

    def get_many(self, keys: Iterable[str]) -> dict[str, Response]:
        """{key: response} for the keys that have an intact cached response."""
        wanted = list(dict.fromkeys(keys))
        out: dict[str, Response] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT key, value, checksum FROM responses WHERE key IN ({marks})", chunk
                ).fetchall()
            for key, value, checksum in rows:
                response = _decode(value, checksum)
                if response is not None:
                    out[key] = response
        return out

    def put(self, key: str, response: Response) -> bool:
        """Store and commit `response` (replacing any row for `key`); returns False (and stores
        nothing) for a failed response, which a rerun should retry."""
        if response.finish_reason == "error":
            return False
        value = json.dumps(response.to_json(), ensure_ascii=False, sort_keys=True)
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, value, checksum, created) VALUES (?, ?, ?, ?)",
                (key, value, _checksum(value), time.time()),
            )
        return True

    def __len__(self) -> int:
        """Rows in the table (damaged rows included)."""
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CachedTeacher:
    """A `Teacher` that answers from `cache` where it can and sends only the misses to `teacher`.

    Each new response is committed to the cache before it is yielded; identical requests within one
    call are sent once. `hits` counts requests answered from the cache, `misses` the requests
    actually sent to the teacher (both accumulate over calls).
    """

    def __init__(self, teacher, cache: ResponseCache):
        self.teacher = teacher
        self.cache = cache
        self.hits = 0
        self.misses = 0

    @property
    def backend(self) -> str:
        return self.teacher.backend

    @property
    def name(self) -> str:
        return self.teacher.name

    def __repr__(self) -> str:
        return f"CachedTeacher({self.teacher!r}, {self.cache!r})"

    def key(self, request: Request) -> str:
        """The cache key of `request` for this teacher: backend, the teacher's `cache_id` (its name
        plus what else identifies it: endpoint, weights) or its name, messages and sampling."""
        return request.key(self.backend, getattr(self.teacher, "cache_id", self.name))

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        return collect(self.generate_iter(requests), len(requests))

    def generate_iter(self, requests: Sequence[Request]) -> Iterator[tuple[int, Response]]:
        keys = [self.key(r) for r in requests]
        cached = self.cache.get_many(keys)
        pending: dict[str, list[int]] = {}  # key -> the request indices waiting for it
        for i, key in enumerate(keys):
            if key in cached:
                self.hits += 1
                yield i, cached[key]
            else:
                pending.setdefault(key, []).append(i)
        if not pending:
            return
        miss_keys = list(pending)
        send = [requests[pending[k][0]] for k in miss_keys]
        self.misses += len(send)
        for j, response in self.teacher.generate_iter(send):
            key = miss_keys[j]
            self.cache.put(key, response)  # commit first: a kill after this line loses nothing
            for i in pending[key]:
                yield i, response
