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
`processed_logits`; `_check_logprob_mode`): each failure is one UserError before anything else loads.

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

import contextlib
import hashlib
import logging
import math
import re
from dataclasses import dataclass

import torch

from lmdistill.chunked import TAIL_FLOOR, SparseTeacher
from lmdistill.errors import UserError
from lmdistill.teachers.api import ApiTeacher, _without_userinfo, check_base_url
from lmdistill.teachers.types import Response
from lmdistill.teachers.whitebox.source import TeacherQuery, TeacherScores, tail_from_topk

log = logging.getLogger(__name__)

PROMPT_LOGPROBS = "prompt_logprobs"
ECHO = "echo"
_CAP = re.compile(r"(max|greater|exceed|at most|limit|too (many|large))", re.IGNORECASE)
#: The request forms the probe tries, in order: (field, max_tokens).
_FORMS = ((PROMPT_LOGPROBS, 0), (PROMPT_LOGPROBS, 1), (ECHO, 0))
#: A log-prob may exceed 0 by this much (float rounding of a token that holds all the mass); read as 0.
LOGPROB_TOLERANCE = 1e-4
#: A position's probabilities (top k and the prompt token's own entry) may sum to 1 + this (rounding).
MASS_TOLERANCE = 1e-3


class _BadRow(Exception):
    """What is wrong with one position's entries; the caller says where it was."""


@dataclass(frozen=True)
class _Call:
    """One scoring request: a sequence's token ids, the response field asked for, and k."""

    ids: tuple[int, ...]
    mode: str
    k: int
    max_tokens: int = 0


class _CompletionsClient(ApiTeacher):
    """ApiTeacher's limits, retries, timeouts and key handling, for scoring calls to /v1/completions.

    `generate(calls)` returns, per call, the response's first choice as a plain dict, or a Response
    with finish_reason "error" (its `error` says why) once retries are spent. Such a failure is logged
    at DEBUG only: `ServerTeacher` stops with one UserError that carries it.
    """

    backend = "server"
    failure_log_level = logging.DEBUG
    url_field, key_env_field = "teacher.server", "teacher.server_api_key_env"

    def _kwargs(self, call: _Call) -> dict:
        kwargs = dict(model=self.model, prompt=list(call.ids), temperature=1.0)
        if call.mode == PROMPT_LOGPROBS:
            kwargs.update(max_tokens=call.max_tokens, extra_body={"prompt_logprobs": call.k})
        else:
            kwargs.update(echo=True, logprobs=call.k, max_tokens=0)
        return kwargs

    def _estimate(self, call: _Call) -> int:
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


def _failed(result) -> str | None:
    return result.error if isinstance(result, Response) else None


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
            client.model = client.name = _only_model(client, where)
        source = cls(client, tokenizer, k=k, vocab=vocab, mode=PROMPT_LOGPROBS, k_key=k_key)
        source._probe()
        return source

    def _probe(self) -> None:
        """Find the field the server answers; check its vocabulary and the number of log-probs."""
        ids = probe_ids(self.tokenizer, self.vocab)
        where = f"teacher.server {self.name}"
        errors = []
        # Scoring alone first; vLLM refuses max_tokens 0 without echo, so it then gets 1 (one wasted token).
        for mode, max_tokens in _FORMS:
            result = self._ask(ids, mode, max_tokens)
            error = _failed(result)
            if error is None:
                entries, texts = _entries(result, mode, ids)
                if entries is not None:
                    self.mode, self.max_tokens = mode, max_tokens
                    break
                error = f"the reply has no {'prompt_logprobs' if mode == PROMPT_LOGPROBS else 'logprobs'}"
            elif "logprob" in error.lower() and _CAP.search(error) and error.startswith("4"):
                raise UserError(self._cap_message(where, error))
            errors.append(f"{mode} with max_tokens {max_tokens}: {error}")
        else:
            # every form refused as invalid (400/422: not a missing route, a lost connection or a 5xx)
            if all(e.split(": ", 2)[1] in ("400", "422") for e in errors):
                self._check_refused_ids(ids, where, errors)
            raise UserError(
                f"{where} scored no token ids: it answered neither vLLM's prompt_logprobs nor echo + logprobs "
                f"with max_tokens 0 on /v1/completions ({'; '.join(errors)})"
            )
        if len(entries) != len(ids):
            raise UserError(f"{where} returned log-probs for {len(entries)} of the {len(ids)} prompt tokens")
        self._check_vocab(ids, texts, where)
        self._check_logprob_mode(entries[1:], where)
        for j, entry in enumerate(entries[1:], start=1):
            try:
                self._pairs(entry)
            except _BadRow as bad:
                raise UserError(
                    f"{where} answered the probe with a bad row (position {j - 1} of its {len(ids)} token ids): {bad}"
                ) from None
        # vLLM adds the prompt token to the top k, and echo replies key tokens by text (texts that several
        # ids share collapse): judged by the fullest position.
        got = max(_top_count(e, i) for e, i in zip(entries[1:], ids[1:], strict=True))
        if got < self.k:
            raise UserError(self._cap_message(where, f"it returned {got} log-probs per position"))

    def _check_logprob_mode(self, entries: list, where: str) -> None:
        """The probe's values must be log-probs of one distribution per position, not logits: vLLM started
        with --logprobs-mode raw_logits or processed_logits returns the logits themselves in prompt_logprobs
        (vLLM 0.32 `gpu_model_runner._get_prompt_logprobs_dict`). Log-probs never exceed 0, a position's
        entries hold at most all the mass, and its largest is at least -log(vocab) (some token has at least
        1/V); logits shifted by a log-normaliser of any sign break one of these at some position. Sets
        `logprob_mode` ("log-probs") for reports. raw_logprobs (vLLM's default) and processed_logprobs are
        the same numbers for prompt tokens, which skip the sampling processors, and this client asks at
        temperature 1 anyway: both are accepted."""
        floor = -math.log(self.vocab) - 1e-3
        for j, entry in enumerate(entries):
            values = _numbers(entry)
            if not values:
                continue
            top, mass = max(values), math.fsum(math.exp(min(v, 700.0)) for v in values)
            if top > LOGPROB_TOLERANCE:
                why = f"a value of {top:g} at position {j}, above 0"
            elif mass > 1 + MASS_TOLERANCE:
                why = f"the {len(values)} values at position {j} hold {mass:.6g} of the mass, above 1"
            elif top < floor:
                why = (
                    f"the largest value at position {j} is {top:g}, below -log({self.vocab}) = "
                    f"{-math.log(self.vocab):.4g}, which the most likely token of {self.vocab} cannot be"
                )
            else:
                continue
            raise UserError(
                f"{where} returns logits, not log-probs ({why}): vLLM does with --logprobs-mode raw_logits or "
                "processed_logits; start it with --logprobs-mode raw_logprobs (vLLM's default)"
            )
        self.logprob_mode = "log-probs"

    def _ask(self, ids: tuple[int, ...], mode: str, max_tokens: int):
        with _quiet(logging.getLogger(ApiTeacher.__module__)):  # a refused field is an answer here
            return self.client.generate([_Call(ids, mode, self.k, max_tokens)])[0]

    def _check_refused_ids(self, ids: tuple[int, ...], where: str, errors: list[str]) -> None:
        """Every form refused the probe. A server with a smaller vocabulary refuses ids past its end (vLLM,
        `lmdistill serve`: 400 "Token id N is out of vocabulary"): if it scores the probe's two lowest ids,
        that is the cause, and the message leads with it."""
        low = tuple(sorted(ids)[:2])
        for (mode, max_tokens), error in zip(_FORMS, errors, strict=True):
            result = self._ask(low, mode, max_tokens)
            if _failed(result) is None and _entries(result, mode, low)[0] is not None:
                local = getattr(self.tokenizer, "name_or_path", "") or "the local tokenizer"
                why = error.split(": ", 1)[1].rstrip(".")
                raise UserError(
                    f"{where} does not use the student's vocabulary ({local}): it refuses the probe's token ids "
                    f"(up to {max(ids)}; the student's vocabulary has {self.vocab} tokens) but scores the lowest "
                    f"({', '.join(map(str, low))}): {why}. Serve a teacher with the student's tokenizer"
                )

    def _cap_message(self, where: str, what: str) -> str:
        return (
            f"{where} does not return the {self.k} log-probs per position asked ({what}): vLLM caps them at 20 "
            f"unless started with --max-logprobs (vllm serve MODEL --max-logprobs {self.k}); or lower {self.k_key}"
        )

    def _check_vocab(self, ids: tuple[int, ...], texts: list[str | None], where: str) -> None:
        checked, wrong = 0, []
        for i, text in zip(ids, texts, strict=True):
            if text is None:
                continue
            checked += 1
            if not _same_token(self.tokenizer, i, text):
                wrong.append(f"id {i} is {text!r} there but {self.tokenizer.decode([i])!r} here")
        if checked == 0:
            log.warning("%s returned no token texts: its vocabulary could not be compared", where)
        if wrong:
            local = getattr(self.tokenizer, "name_or_path", "") or "the local tokenizer"
            raise UserError(
                f"{where} does not use the student's vocabulary ({local}): {len(wrong)} of {checked} probe "
                f"tokens differ, e.g. {'; '.join(wrong[:3])}. Serve a teacher with the student's tokenizer"
            )

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
            calls.append(_Call(tuple(q.input_ids[b, :length].tolist()), self.mode, self.k, self.max_tokens))
            wanted.append(where)
        results = self.client.generate([c for c, w in zip(calls, wanted, strict=True) if w])
        ids, logprobs, own = [], [], []
        it = iter(results)
        for b, (call, where) in enumerate(zip(calls, wanted, strict=True)):
            if not where:
                continue
            result = next(it)
            error = _failed(result)
            entries = None if error else _entries(result, self.mode)[0]
            if entries is None or len(entries) != len(call.ids):
                error = error or "the reply does not hold one log-prob entry per prompt token"
                raise UserError(f"teacher.server {self.name}: scoring a sequence failed: {error}")
            for t in where:
                try:
                    row_ids, row_lp, pairs = self._row(entries[t + 1])
                    own.append(self._own(result, pairs, call.ids[t + 1], t + 1))
                except _BadRow as bad:
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
        return float("nan") if value is None else _logprob(value, f"token id {token} (the sequence's own)")

    def _row(self, entry) -> tuple[list[int], list[float], dict[int, float]]:
        """One position's entries -> the k largest as (ids, log-probs), and every placed entry {id: log-prob};
        unplaceable ones padded (see module). _BadRow if an entry is not a log-prob of a local token."""
        pairs, missing = self._pairs(entry)
        top = sorted(pairs.items(), key=lambda p: -p[1])[: self.k]
        if len(top) < self.k:
            if not missing and self.mode == PROMPT_LOGPROBS:
                raise UserError(
                    self._cap_message(f"teacher.server {self.name}", f"a position had {len(top)}")
                )
            self._pad(top)
        return [i for i, _ in top], [lp for _, lp in top], pairs

    def _pairs(self, entry) -> tuple[dict[int, float], int]:
        """One position's entries, checked (module docstring) -> ({id: log-prob}, entries not placed)."""
        if not isinstance(entry, dict):
            raise _BadRow(
                f"the entry is {type(entry).__name__} {str(entry)[:40]!r}, not an object of log-probs"
            )
        pairs: dict[int, float] = {}
        missing, mass = 0, []
        for key, value in entry.items():
            token = self._token_id(key)
            label = f"token id {token}" if token is not None else f"token {str(key)[:40]!r}"
            lp = _logprob(value.get("logprob") if isinstance(value, dict) else value, label)
            mass.append(lp)
            if token is None or token in pairs:
                if token is not None and self.mode == PROMPT_LOGPROBS:
                    raise _BadRow(f"token id {token} has two entries")
                missing += 1
            else:
                pairs[token] = lp
        total = math.fsum(math.exp(lp) for lp in mass)
        if total > 1 + MASS_TOLERANCE:
            raise _BadRow(
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
        """A reply's token key -> a local id < vocab, or None if a text names none or several. _BadRow for
        an id (prompt_logprobs' keys, "token_id:N") that is not an integer inside the local vocabulary."""
        key = str(key)
        if self.mode == PROMPT_LOGPROBS or key.startswith("token_id:"):
            try:
                token = int(key.removeprefix("token_id:"))
            except ValueError:
                raise _BadRow(f"the key {key[:40]!r} is not a token id") from None
            if not 0 <= token < self.vocab:
                raise _BadRow(
                    f"token id {token} is outside the vocabulary (the local tokenizer's ids are "
                    f"0..{self.vocab - 1})"
                )
            return token
        if self._by_text is None:
            self._by_text = _texts_to_ids(self.tokenizer, self.vocab)
        found = self._by_text.get(key, [])
        return found[0] if len(found) == 1 else None

    def stats(self) -> dict[str, int]:
        return {**self.client.stats(), "unmapped_entries": self.unmapped}


def _logprob(value, label: str) -> float:
    """A reply's log-prob for `label`, checked: a finite number <= 0 (LOGPROB_TOLERANCE allowed, read as 0);
    -inf (cannot occur) is read as TAIL_FLOOR. _BadRow otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            what = f"the string {value[:40]!r}"
        else:
            what = "null" if value is None else f"{type(value).__name__} {str(value)[:40]}"
        raise _BadRow(f"the log-prob of {label} is {what}, not a number")
    lp = float(value)
    if math.isnan(lp) or lp == math.inf:
        raise _BadRow(f"the log-prob of {label} is {lp}, not a finite number")
    if lp > LOGPROB_TOLERANCE:
        raise _BadRow(f"the log-prob of {label} is {lp:g}, above 0 (a probability above 1)")
    return TAIL_FLOOR if lp == -math.inf else min(lp, 0.0)


def _numbers(entry) -> list[float]:
    """A reply entry's log-prob values that are finite numbers (the rest is `_pairs`' to refuse)."""
    if not isinstance(entry, dict):
        return []
    out = []
    for value in entry.values():
        v = value.get("logprob") if isinstance(value, dict) else value
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    """Hold `logger` to errors for the block (the probe's expected refusals are not warnings)."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _only_model(client: _CompletionsClient, where: str) -> str:
    """The single model the server lists (teacher.server_model not set)."""
    try:
        models = [m.id for m in client._client.models.list()]
    except Exception as e:  # connection refused, 404, a non-JSON page: one line, no traceback
        raise UserError(
            f"{where}: could not list its models (GET /models): {client._scrub(str(e))[:300]}"
        ) from None
    if len(models) != 1:
        raise UserError(
            f"{where} serves {len(models)} models ({', '.join(models[:5]) or 'none'}): set teacher.server_model"
        )
    return models[0]


def _entries(
    choice: dict, mode: str, ids: tuple[int, ...] = ()
) -> tuple[list[dict] | None, list[str | None]]:
    """Per prompt token j, its top log-prob dict (entry 0: {}); and, given the prompt `ids`, the server's
    text of each prompt token (None where it gave none)."""
    if mode == PROMPT_LOGPROBS:
        raw = choice.get("prompt_logprobs")
        if not isinstance(raw, list):
            return None, []
        entries = [e or {} for e in raw]
        texts: list[str | None] = []
        for j, i in enumerate(ids):
            entry = entries[j] if j < len(entries) else None
            value = entry.get(str(i)) if isinstance(entry, dict) else None  # vLLM adds the prompt token
            texts.append(value.get("decoded_token") if isinstance(value, dict) else None)
        return entries, texts
    lp = choice.get("logprobs")
    if not isinstance(lp, dict) or not isinstance(lp.get("top_logprobs"), list):
        return None, []
    tokens = list(lp.get("tokens") or [])
    texts = [tokens[j] if j < len(tokens) else None for j in range(len(ids))]
    return [e or {} for e in lp["top_logprobs"]], texts


def _top_count(entry: dict, prompt_id: int) -> int:
    """How many of a position's entries are its top ones: the prompt token's own entry is not counted
    unless its rank (where given) places it before the last."""
    own = entry.get(str(prompt_id))
    if own is None:
        return len(entry)
    rank = own.get("rank") if isinstance(own, dict) else None
    return len(entry) if rank is not None and rank < len(entry) else len(entry) - 1


def probe_ids(tokenizer, vocab: int, n: int = 16) -> tuple[int, ...]:
    """n ids spread over the vocabulary whose local text is plain (no specials, no byte fragments)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    step = max(1, vocab // (8 * n))
    for i in range(1, vocab, step):
        text = tokenizer.decode([i])
        if i not in special and text.strip() and "\ufffd" not in text and text.isprintable():
            out.append(i)
    if len(out) < 2:
        raise UserError("the tokenizer has too few plain tokens to probe a teacher server's vocabulary")
    pick = [out[round(j * (len(out) - 1) / (n - 1))] for j in range(n)] if len(out) > n else out
    return tuple(dict.fromkeys(pick))


def _spellings(tokenizer, i: int) -> set[str]:
    """The texts a server may give token i: decoded alone, the raw vocabulary entry, its string form."""
    token = tokenizer.convert_ids_to_tokens(i)
    forms = {tokenizer.decode([i]), str(token), f"token_id:{i}"}
    with contextlib.suppress(Exception):  # a tokenizer without that method for this token
        forms.add(tokenizer.convert_tokens_to_string([token]))
    return forms


def _same_token(tokenizer, i: int, text: str) -> bool:
    forms = _spellings(tokenizer, i)
    return text in forms or text.strip() in {f.strip() for f in forms}


def _texts_to_ids(tokenizer, vocab: int) -> dict[str, list[int]]:
    """Every local spelling of every id -> the ids it spells (several: ambiguous)."""
    table: dict[str, list[int]] = {}
    for i in range(vocab):
        for text in _spellings(tokenizer, i) - {f"token_id:{i}"}:
            ids = table.setdefault(text, [])
            if i not in ids:
                ids.append(i)
    return table


def check_server_settings(teacher_cfg, temperature: float, temperature_key: str) -> None:
    """Settings a server teacher needs, checked before anything loads: an http(s) URL without credentials
    in it, temperature 1, concurrency, retries and timeout in range."""
    check_base_url(teacher_cfg.server, field="teacher.server", key_env_field="teacher.server_api_key_env")
    if temperature != 1.0:
        raise UserError(
            f"teacher.server returns log-probs at temperature 1, but {temperature_key}={temperature}: set it to 1 "
            "(or capture/train with a teacher in this process)"
        )
    for key in ("server_concurrency", "server_max_retries"):
        if getattr(teacher_cfg, key) < (1 if key == "server_concurrency" else 0):
            raise UserError(f"teacher.{key} must be at least {1 if key == 'server_concurrency' else 0}")
    if not teacher_cfg.server_timeout > 0:
        raise UserError(f"teacher.server_timeout must be positive, got {teacher_cfg.server_timeout}")
