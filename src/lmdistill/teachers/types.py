"""What every teacher backend speaks: requests in, responses out, in the same shapes everywhere.

A backend (local Hugging Face model, OpenAI-compatible API) implements `Teacher`: `generate_iter`
yields `(index, Response)` pairs as responses arrive, in any order, so callers (the cache, progress
bars) can commit each one at once; `generate` collects them in request order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; every field is part of the cache key."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = 0  # sampling seed; N samples of one prompt use seed, seed + 1, ...
    stop: tuple[str, ...] = ()  # stop strings (not included in the text)
    top_logprobs: int = 0  # per generated token, return the k most likely tokens' log-probs

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Request:
    """One chat request: messages as [{"role": ..., "content": ...}, ...]."""

    messages: tuple[tuple[tuple[str, str], ...], ...]
    sampling: Sampling = field(default_factory=Sampling)

    @classmethod
    def chat(cls, messages: Sequence[dict], sampling: Sampling | None = None) -> Request:
        frozen = tuple(tuple(sorted((str(k), str(v)) for k, v in m.items())) for m in messages)
        return cls(frozen, sampling or Sampling())

    @property
    def message_dicts(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.messages]

    def key(self, backend: str, model: str) -> str:
        """sha256 over backend, model, messages and every sampling parameter (the cache key)."""
        payload = {
            "backend": backend,
            "model": model,
            "messages": self.message_dicts,
            "sampling": asdict(self.sampling),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class Response:
    """A teacher's answer. finish_reason: "stop" (ended by itself or a stop string), "length" (cut at
    max_new_tokens) or "error" (failed for good; `error` says why; never cached)."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Per generated token: {"token": str, "logprob": float, "top": [{"token": str, "logprob": float}, ...]}
    logprobs: list[dict] | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Response:
        return cls(**data)


class Teacher(Protocol):
    """A black-box teacher: only its outputs are read."""

    backend: str  # "local", "api"
    name: str  # model name, as recorded in provenance
    cache_id: str  # name plus what else identifies the teacher (endpoint, weights): part of cache keys

    def generate_iter(self, requests: Sequence[Request]) -> Iterator[tuple[int, Response]]: ...

    def generate(self, requests: Sequence[Request]) -> list[Response]: ...


def collect(pairs: Iterator[tuple[int, Response]], n: int) -> list[Response]:
    """Order `(index, response)` pairs back into a list of length n."""
    out: list[Response | None] = [None] * n
    for i, r in pairs:
        out[i] = r
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise RuntimeError(f"teacher returned no response for requests {missing[:5]}")
    return out  # type: ignore[return-value]
