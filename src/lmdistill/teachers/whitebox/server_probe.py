"""What `ServerTeacher.connect` checks before anything trains: the server's scoring field, its vocabulary,
its log-prob count and that it returns log-probs, not logits (see `server`'s docstring). Each failure is
one UserError. Also the token-text helpers the vocabulary comparison needs (used by the vLLM sampler's
connect check too) and the settings check that runs before anything loads.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from typing import TYPE_CHECKING

from lmdistill.errors import UserError
from lmdistill.teachers.api import ApiTeacher, check_base_url
from lmdistill.teachers.whitebox.server_reply import (
    ECHO,
    LOGPROB_TOLERANCE,
    MASS_TOLERANCE,
    PROMPT_LOGPROBS,
    BadRow,
    failed,
    numbers,
    reply_entries,
    top_count,
)

if TYPE_CHECKING:
    from lmdistill.teachers.whitebox.server import ServerTeacher

log = logging.getLogger("lmdistill.teachers.whitebox.server")

_CAP = re.compile(r"(max|greater|exceed|at most|limit|too (many|large))", re.IGNORECASE)
#: The request forms the probe tries, in order: (field, max_tokens).
_FORMS = ((PROMPT_LOGPROBS, 0), (PROMPT_LOGPROBS, 1), (ECHO, 0))


def probe(source: ServerTeacher) -> None:
    """Find the field the server answers; check its vocabulary and the number of log-probs."""
    ids = probe_ids(source.tokenizer, source.vocab)
    where = f"teacher.server {source.name}"
    errors = []
    # Scoring alone first; vLLM refuses max_tokens 0 without echo, so it then gets 1 (one wasted token).
    for mode, max_tokens in _FORMS:
        result = source.ask(ids, mode, max_tokens)
        error = failed(result)
        if error is None:
            entries, texts = reply_entries(result, mode, ids)
            if entries is not None:
                source.mode, source.max_tokens = mode, max_tokens
                break
            error = f"the reply has no {'prompt_logprobs' if mode == PROMPT_LOGPROBS else 'logprobs'}"
        elif "logprob" in error.lower() and _CAP.search(error) and error.startswith("4"):
            raise UserError(cap_message(source, where, error))
        errors.append(f"{mode} with max_tokens {max_tokens}: {error}")
    else:
        # every form refused as invalid (400/422: not a missing route, a lost connection or a 5xx)
        if all(e.split(": ", 2)[1] in ("400", "422") for e in errors):
            _check_refused_ids(source, ids, where, errors)
        raise UserError(
            f"{where} scored no token ids: it answered neither vLLM's prompt_logprobs nor echo + logprobs "
            f"with max_tokens 0 on /v1/completions ({'; '.join(errors)})"
        )
    if len(entries) != len(ids):
        raise UserError(f"{where} returned log-probs for {len(entries)} of the {len(ids)} prompt tokens")
    _check_vocab(source, ids, texts, where)
    check_logprob_mode(source, entries[1:], where)
    for j, entry in enumerate(entries[1:], start=1):
        try:
            source.read_entry(entry)
        except BadRow as bad:
            raise UserError(
                f"{where} answered the probe with a bad row (position {j - 1} of its {len(ids)} token ids): {bad}"
            ) from None
    # vLLM adds the prompt token to the top k, and echo replies key tokens by text (texts that several
    # ids share collapse): judged by the fullest position.
    got = max(top_count(e, i) for e, i in zip(entries[1:], ids[1:], strict=True))
    if got < source.k:
        raise UserError(cap_message(source, where, f"it returned {got} log-probs per position"))


def check_logprob_mode(source: ServerTeacher, entries: list, where: str) -> None:
    """The probe's values must be log-probs of one distribution per position, not logits: vLLM started
    with --logprobs-mode raw_logits or processed_logits returns the logits themselves in prompt_logprobs
    (vLLM 0.32 `gpu_model_runner._get_prompt_logprobs_dict`). Log-probs never exceed 0, a position's
    entries hold at most all the mass, and its largest is at least -log(vocab) (some token has at least
    1/V); logits shifted by a log-normaliser of any sign break one of these at some position. Sets
    `logprob_mode` ("log-probs") for reports. raw_logprobs (vLLM's default) and processed_logprobs are
    the same numbers for prompt tokens, which skip the sampling processors, and this client asks at
    temperature 1 anyway: both are accepted."""
    floor = -math.log(source.vocab) - 1e-3
    for j, entry in enumerate(entries):
        values = numbers(entry)
        if not values:
            continue
        top, mass = max(values), math.fsum(math.exp(min(v, 700.0)) for v in values)
        if top > LOGPROB_TOLERANCE:
            why = f"a value of {top:g} at position {j}, above 0"
        elif mass > 1 + MASS_TOLERANCE:
            why = f"the {len(values)} values at position {j} hold {mass:.6g} of the mass, above 1"
        elif top < floor:
            why = (
                f"the largest value at position {j} is {top:g}, below -log({source.vocab}) = "
                f"{-math.log(source.vocab):.4g}, which the most likely token of {source.vocab} cannot be"
            )
        else:
            continue
        raise UserError(
            f"{where} returns logits, not log-probs ({why}): vLLM does with --logprobs-mode raw_logits or "
            "processed_logits; start it with --logprobs-mode raw_logprobs (vLLM's default)"
        )
    source.logprob_mode = "log-probs"


def _check_refused_ids(source: ServerTeacher, ids: tuple[int, ...], where: str, errors: list[str]) -> None:
    """Every form refused the probe. A server with a smaller vocabulary refuses ids past its end (vLLM,
    `lmdistill serve`: 400 "Token id N is out of vocabulary"): if it scores the probe's two lowest ids,
    that is the cause, and the message leads with it."""
    low = tuple(sorted(ids)[:2])
    for (mode, max_tokens), error in zip(_FORMS, errors, strict=True):
        result = source.ask(low, mode, max_tokens)
        if failed(result) is None and reply_entries(result, mode, low)[0] is not None:
            local = getattr(source.tokenizer, "name_or_path", "") or "the local tokenizer"
            why = error.split(": ", 1)[1].rstrip(".")
            raise UserError(
                f"{where} does not use the student's vocabulary ({local}): it refuses the probe's token ids "
                f"(up to {max(ids)}; the student's vocabulary has {source.vocab} tokens) but scores the lowest "
                f"({', '.join(map(str, low))}): {why}. Serve a teacher with the student's tokenizer"
            )


def cap_message(source: ServerTeacher, where: str, what: str) -> str:
    return (
        f"{where} does not return the {source.k} log-probs per position asked ({what}): vLLM caps them at 20 "
        f"unless started with --max-logprobs (vllm serve MODEL --max-logprobs {source.k}); or lower {source.k_key}"
    )


def _check_vocab(source: ServerTeacher, ids: tuple[int, ...], texts: list[str | None], where: str) -> None:
    checked, wrong = 0, []
    for i, text in zip(ids, texts, strict=True):
        if text is None:
            continue
        checked += 1
        if not same_token(source.tokenizer, i, text):
            wrong.append(f"id {i} is {text!r} there but {source.tokenizer.decode([i])!r} here")
    if checked == 0:
        log.warning("%s returned no token texts: its vocabulary could not be compared", where)
    if wrong:
        local = getattr(source.tokenizer, "name_or_path", "") or "the local tokenizer"
        raise UserError(
            f"{where} does not use the student's vocabulary ({local}): {len(wrong)} of {checked} probe "
            f"tokens differ, e.g. {'; '.join(wrong[:3])}. Serve a teacher with the student's tokenizer"
        )


@contextlib.contextmanager
def quiet(logger: logging.Logger):
    """Hold `logger` to errors for the block (the probe's expected refusals are not warnings)."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def only_model(client: ApiTeacher, where: str) -> str:
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


def spellings(tokenizer, i: int) -> set[str]:
    """The texts a server may give token i: decoded alone, the raw vocabulary entry, its string form."""
    token = tokenizer.convert_ids_to_tokens(i)
    forms = {tokenizer.decode([i]), str(token), f"token_id:{i}"}
    with contextlib.suppress(Exception):  # a tokenizer without that method for this token
        forms.add(tokenizer.convert_tokens_to_string([token]))
    return forms


def same_token(tokenizer, i: int, text: str) -> bool:
    forms = spellings(tokenizer, i)
    return text in forms or text.strip() in {f.strip() for f in forms}


def texts_to_ids(tokenizer, vocab: int) -> dict[str, list[int]]:
    """Every local spelling of every id -> the ids it spells (several: ambiguous)."""
    table: dict[str, list[int]] = {}
    for i in range(vocab):
        for text in spellings(tokenizer, i) - {f"token_id:{i}"}:
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
