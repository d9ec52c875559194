"""A teacher behind an OpenAI-compatible server: top-k log-probs of given token ids over /v1/completions.

Each sequence is one request whose prompt is its token ids (no re-tokenisation), asking either
- vLLM's `prompt_logprobs: k`, with `max_tokens: 0` where the server takes it (`lmdistill serve`: it
  then only scores) and `max_tokens: 1` otherwise (vLLM; the sampled token is ignored): per prompt token
  j >= 1, a dict {token id: {"logprob", "rank", "decoded_token"}} holding the top k and the prompt
  token itself (so k or k + 1 entries); entry 0 is null; or
- the OpenAI-legacy `echo: true, logprobs: k, max_tokens: 0`: `logprobs.top_logprobs[j]`, a dict
  {token text: logprob}; the texts are mapped back to ids with the local tokenizer (below).
Position t of the query (predicting token t + 1) is entry t + 1. The k largest entries are kept, and
the tail is log(1 - their mass) (`tail_from_topk`), as the offline store's rows: the loss is the same
top-k + tail divergence. Servers return log-probs at temperature 1, so this source needs T = 1.

Which field the server answers is found once, by `connect`'s probe, which also checks that the
server's vocabulary is the local tokenizer's (known token ids go out, the server's token texts come
back and are compared; a server that refuses every form but scores the probe's two lowest ids has a
smaller vocabulary, and is told so) and that it returns k log-probs (vLLM caps them at 20 unless started with
`--max-logprobs`), and that they are log-probs, not logits (vLLM's `--logprobs-mode raw_logits` or
`processed_logits`; `server_probe.check_logprob_mode`): each failure is one UserError before anything
else loads (`server_probe` holds these checks; `server_reply` reads the replies).

Requests go through `lmdistill.teachers.api.ApiTeacher`'s machinery (pointed at /v1/completions):
`concurrency` in flight, optional request/token rate limits, retries with backoff or the server's
Retry-After on 429/5xx/timeouts/lost connections, and the API key read from an environment variable
and never shown. A request that still fails stops the run with one message.

Every scored position is checked before anything trains on it, and a bad one stops the run with one
UserError naming the server, the row, the position and what was wrong: every log-prob a finite number
(NaN, +inf or a string is refused; -inf, a token that cannot occur, is read as TAIL_FLOOR) and at most 0
(up to LOGPROB_TOLERANCE, read as 0: float rounding of a token holding all the mass); a position's
probabilities, its top k and the prompt token's own entry, summing to at most 1 + MASS_TOLERANCE; every
token id inside the local vocabulary (0 <= id < vocab), once. The order of a position's entries is not
relied on (vLLM puts the prompt token's own entry after the top k; JSON objects carry no order): they
are sorted by log-prob, descending, here. The probe's reply is checked the same way.

Echo mode identifies tokens by text: a text that several ids share (byte fragments such as "\\ufffd")
or that no id has cannot be placed; such entries are left to the tail bucket and the row is padded
with unused ids at TAIL_FLOOR, counted in `stats()["unmapped_entries"]` and warned about once. Prefer
prompt_logprobs (vLLM, `lmdistill serve`) where the server has it; keys "token_id:N" (vLLM's
--return-tokens-as-token-ids) are read exactly.
"""

from __future__ import annotations

import hashlib
import logging
import math

import torch

from lmdistill.chunked import TAIL_FLOOR, SparseTeacher
from lmdistill.errors import UserError
from lmdistill.teachers.api import ApiTeacher, _without_userinfo
from lmdistill.teachers.whitebox.server_probe import (
    cap_message,
    check_server_settings,
    only_model,
    probe,
    quiet,
    texts_to_ids,
)
from lmdistill.teachers.whitebox.server_reply import (
    MASS_TOLERANCE,
    PROMPT_LOGPROBS,
    BadRow,
    Call,
    failed,
    read_logprob,
    reply_entries,
)
from lmdistill.teachers.whitebox.source import TeacherQuery, TeacherScores, tail_from_topk

__all__ = ["ServerTeacher", "check_server_settings"]

log = logging.getLogger(__name__)


class _CompletionsClient(ApiTeacher):
    """ApiTeacher's limits, retries, timeouts and key handling, for scoring calls to /v1/completions.

    `generate(calls)` returns, per call, the response's first choice as a plain dict, or a Response
    with finish_reason "error" (its `error` says why) once retries are spent. Such a failure is logged
    at DEBUG only: `ServerTeacher` stops with one UserError that carries it.
    """

    backend = "server"
    failure_log_level = logging.DEBUG
    url_field, key_env_field = "teacher.server", "teacher.server_api_key_env"

    def _kwargs(self, call: Call) -> dict:
        kwargs = dict(model=self.model, prompt=list(call.ids), temperature=1.0)
        if call.mode == PROMPT_LOGPROBS:
            kwargs.update(max_tokens=call.max_tokens, extra_body={"prompt_logprobs": call.k})
        else:
            kwargs.update(echo=True, logprobs=call.k, max_tokens=0)
        return kwargs

    def _estimate(self, call: Call) -> int:
        return len(call.ids) + call.max_tokens

    def _create(self, kwargs: dict):
        return self._client.completions.create(**kwargs)

    def _response(self, completion, estimate: int) -> dict:
        data = completion.model_dump()
        usage = data.get("usage") or {}
        prompt, completion_tokens = (
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )
        self._add(prompt_tokens=prompt, completion_tokens=completion_tokens)
        if self._tpm is not None and usage:
            self._tpm.refund(estimate - prompt - completion_tokens)
        choices = data.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            raise ValueError("the server returned no choices")
        return choices[0]


class ServerTeacher:
    """Sparse answers (top-k + tail) from a server; build it with `connect`, which probes the server.

    Attributes: name ("MODEL at URL"), k, vocab (the local tokenizer's real vocabulary, which the probe
    found the server to share), mode (PROMPT_LOGPROBS or ECHO), fingerprint (model and URL hashed).
    """

    def __init__(self, client: _CompletionsClient, tokenizer, *, k: int, vocab: int, mode: str, k_key: str):
        self.client, self.tokenizer = client, tokenizer
        self.k, self.vocab, self.mode, self.k_key = k, vocab, mode, k_key
        url = _without_userinfo(client.base_url).rstrip("/")
        self.url = url
        self.name = f"{client.model} at {url}"
        self.fingerprint = "server:" + hashlib.sha256(f"{client.model}@{url}".encode()).hexdigest()[:16]
        self.max_tokens = 0  # what the probe found the server to accept alongside the scoring field
        self.device = torch.device("cpu")
        self.unmapped = 0
        self.logprob_mode: str | None = None  # "log-probs" once the probe checked the values
        self._by_text: dict[str, list[int]] | None = None

    # -- building: settings, model name, probe ---------------------------------------------------------

    @classmethod
    def connect(
        cls, teacher_cfg, tokenizer, *, k: int, vocab: int, k_key: str = "teacher.server_k"
    ) -> ServerTeacher:
        """Client from the `teacher.server*` settings, then the probe; UserError on every failure.

        teacher_cfg: a `TeacherConfig` with `server` set; tokenizer: the local (student's) tokenizer;
        k: log-probs per position; k_key: the config key that set k (named in messages).
        """
        t = teacher_cfg
        if k < 1:
            raise UserError(f"{k_key} must be at least 1, got {k}")
        if k > vocab:
            raise UserError(f"{k_key}={k} is larger than the vocabulary ({vocab} tokens)")
        client = _CompletionsClient(
            t.server_model or "unknown",
            base_url=t.server,
            api_key_env=t.server_api_key_env,
            concurrency=t.server_concurrency,
            requests_per_minute=t.server_requests_per_minute,
            tokens_per_minute=t.server_tokens_per_minute,
            max_retries=t.server_max_retries,
            timeout=t.server_timeout,
        )
        where = f"teacher.server {_without_userinfo(t.server)}"
        if not t.server_model:
            client.model = client.name = only_model(client, where)
        source = cls(client, tokenizer, k=k, vocab=vocab, mode=PROMPT_LOGPROBS, k_key=k_key)
        probe(source)
        return source

    def ask(self, ids: tuple[int, ...], mode: str, max_tokens: int):
        with quiet(logging.getLogger(ApiTeacher.__module__)):  # a refused field is an answer here
            return self.client.generate([Call(ids, mode, self.k, max_tokens)])[0]

    # -- the interface --------------------------------------------------------------------------------

    def to(self, device) -> ServerTeacher:
        self.device = torch.device(device)
        return self

    def score(self, query: TeacherQuery) -> TeacherScores:
        """One request per row (its real tokens); rows come back as they finish, at `concurrency`."""
        q = query.to("cpu")
        calls, wanted = [], []
        for b in range(q.input_ids.shape[0]):
            length = int(q.attention_mask[b].sum())
            where = q.positions[b].nonzero().flatten().tolist()
            if where and where[-1] + 1 >= length:
                raise ValueError(f"row {b}: position {where[-1]} has no next token among its {length} tokens")
            calls.append(Call(tuple(q.input_ids[b, :length].tolist()), self.mode, self.k, self.max_tokens))
            wanted.append(where)
        results = self.client.generate([c for c, w in zip(calls, wanted, strict=True) if w])
        ids, logprobs, own = [], [], []
        it = iter(results)
        for b, (call, where) in enumerate(zip(calls, wanted, strict=True)):
            if not where:
                continue
            result = next(it)
            error = failed(result)
            entries = None if error else reply_entries(result, self.mode)[0]
            if entries is None or len(entries) != len(call.ids):
                error = error or "the reply does not hold one log-prob entry per prompt token"
                raise UserError(f"teacher.server {self.name}: scoring a sequence failed: {error}")
            for t in where:
                try:
                    row_ids, row_lp, pairs = self._row(entries[t + 1])
                    own.append(self._own(result, pairs, call.ids[t + 1], t + 1))
                except BadRow as bad:
                    row = f"batch row {b}"
                    if q.example_index is not None:
                        row = f"example {int(q.example_index[b])} ({row})"
                    raise UserError(
                        f"teacher.server {self.name} returned a bad row for {row}, position {t} (the scores "
                        f"of token {t + 1} of {len(call.ids)}): {bad}"
                    ) from None
                ids.append(row_ids)
                logprobs.append(row_lp)
        return self._scores(ids, logprobs, own)

    def _scores(
        self, ids: list[list[int]], logprobs: list[list[float]], own: list[float] | None = None
    ) -> TeacherScores:
        k = self.k
        ids_t = torch.tensor(ids, dtype=torch.long).reshape(-1, k)
        lp = torch.tensor(logprobs, dtype=torch.float64).reshape(-1, k)
        sparse = SparseTeacher(
            ids_t.to(self.device), lp.float().to(self.device), tail_from_topk(lp).to(self.device)
        )
        target = None if own is None else torch.tensor(own, dtype=torch.float32, device=self.device)
        return TeacherScores(sparse=sparse, target_logprobs=target)

    def _own(self, choice: dict, pairs: dict[int, float], token: int, j: int) -> float:
        """The log-prob of the sequence's own token j (what on-policy's `sampled` estimator reads): vLLM and
        `lmdistill serve` add it to prompt_logprobs' entry (`pairs`, the entry checked); echo replies give it
        in token_logprobs. NaN where the reply has none (the reader then looks in the top k)."""
        if self.mode == PROMPT_LOGPROBS:
            return pairs.get(token, float("nan"))
        lps = (choice.get("logprobs") or {}).get("token_logprobs") or []
        value = lps[j] if j < len(lps) else None
        return (
            float("nan") if value is None else read_logprob(value, f"token id {token} (the sequence's own)")
        )

    def _row(self, entry) -> tuple[list[int], list[float], dict[int, float]]:
        """One position's entries -> the k largest as (ids, log-probs), and every placed entry {id: log-prob};
        unplaceable ones padded (see module). BadRow if an entry is not a log-prob of a local token."""
        pairs, missing = self.read_entry(entry)
        top = sorted(pairs.items(), key=lambda p: -p[1])[: self.k]
        if len(top) < self.k:
            if not missing and self.mode == PROMPT_LOGPROBS:
                raise UserError(
                    cap_message(self, f"teacher.server {self.name}", f"a position had {len(top)}")
                )
            self._pad(top)
        return [i for i, _ in top], [lp for _, lp in top], pairs

    def read_entry(self, entry) -> tuple[dict[int, float], int]:
        """One position's entries, checked (module docstring) -> ({id: log-prob}, entries not placed)."""
        if not isinstance(entry, dict):
            raise BadRow(
                f"the entry is {type(entry).__name__} {str(entry)[:40]!r}, not an object of log-probs"
            )
        pairs: dict[int, float] = {}
        missing, mass = 0, []
        for key, value in entry.items():
            token = self._token_id(key)
            label = f"token id {token}" if token is not None else f"token {str(key)[:40]!r}"
            lp = read_logprob(value.get("logprob") if isinstance(value, dict) else value, label)
            mass.append(lp)
            if token is None or token in pairs:
                if token is not None and self.mode == PROMPT_LOGPROBS:
                    raise BadRow(f"token id {token} has two entries")
                missing += 1
            else:
                pairs[token] = lp
        total = math.fsum(math.exp(lp) for lp in mass)
        if total > 1 + MASS_TOLERANCE:
            raise BadRow(
                f"the probabilities of its {len(mass)} entries sum to {total:.6g}, above 1 (more than the "
                f"{MASS_TOLERANCE:g} that rounding may add): these are not log-probs of one distribution"
            )
        return pairs, missing

    def _pad(self, top: list[tuple[int, float]]) -> None:
        if self.unmapped == 0:
            log.warning(
                "teacher.server %s: some top-k entries name tokens by a text that no single local id has; "
                "their mass goes to the tail bucket (prompt_logprobs servers give ids exactly)",
                self.name,
            )
        used = {i for i, _ in top}
        candidate = 0
        while len(top) < self.k:
            if candidate not in used:
                top.append((candidate, TAIL_FLOOR))
                self.unmapped += 1
            candidate += 1

    def _token_id(self, key) -> int | None:
        """A reply's token key -> a local id < vocab, or None if a text names none or several. BadRow for
        an id (prompt_logprobs' keys, "token_id:N") that is not an integer inside the local vocabulary."""
        key = str(key)
        if self.mode == PROMPT_LOGPROBS or key.startswith("token_id:"):
            try:
                token = int(key.removeprefix("token_id:"))
            except ValueError:
                raise BadRow(f"the key {key[:40]!r} is not a token id") from None
            if not 0 <= token < self.vocab:
                raise BadRow(
                    f"token id {token} is outside the vocabulary (the local tokenizer's ids are "
                    f"0..{self.vocab - 1})"
                )
            return token
        if self._by_text is None:
            self._by_text = texts_to_ids(self.tokenizer, self.vocab)
        found = self._by_text.get(key, [])
        return found[0] if len(found) == 1 else None

    def stats(self) -> dict[str, int]:
        return {**self.client.stats(), "unmapped_entries": self.unmapped}
