"""The OpenAI wire format: request bodies in, chat.completion / text_completion objects out.

Only what a local causal LM can honour is accepted: one choice (n=1), text only. A field that would
change the answer and that the server cannot honour (`response_format`, `tools`, `logit_bias`, a
penalty, vLLM's guided decoding, ...; see `UNSUPPORTED`) is refused with a 400 naming it, unless it has
its neutral value; fields that change nothing (user, metadata, store, ...) are ignored.

Scoring (`/v1/completions` with `prompt_logprobs: k`, vLLM's field, or `echo: true, logprobs: k,
max_tokens: 0`, the OpenAI-legacy form) returns the log-probs of the prompt's own tokens; see
`prompt_logprobs_json` and `echo_logprobs` for the two shapes.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmdistill.serve.batcher import DEFAULT_MAX_TOKENS, ServeError
from lmdistill.serve.scoring import Scored
from lmdistill.teachers.types import Response, Sampling

#: Default most top log-probs per token a client may ask for (OpenAI's and vLLM's default limit);
#: `lmdistill serve --max-logprobs` raises it.
MAX_TOP_LOGPROBS = 20
#: Most stop strings per request.
MAX_STOP = 16


class _Body(BaseModel):
    # strict: a JSON string is not a number and a boolean is not an integer (the OpenAI API answers
    # `max_tokens: "12"` and `max_tokens: true` with a 400); an integer is still a valid number
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # int64, as vLLM and torch take
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = None
    stream_options: dict | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: str
    content: str | list[ContentPart] | None = None


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0)


class CompletionBody(_Body):
    # a string, a list of strings, a list of token ids, or a list of lists of token ids: see `prompt_list`
    prompt: Any
    max_tokens: int | None = Field(default=None, ge=0)  # 0: score only (with echo or prompt_logprobs)
    logprobs: int | None = Field(default=None, ge=0)
    prompt_logprobs: int | None = Field(default=None, ge=0)  # vLLM's scoring field
    echo: bool | None = None
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None


def _none(v: Any) -> bool:
    return v is None


def _empty(v: Any) -> bool:
    return not v


def _none_or_number_in(*neutral: float):
    """A test that a value is None or a number (not a boolean) equal to one of `neutral` (a penalty of 0,
    a top_k of -1, ...)."""
    return lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v in neutral)


#: Fields the server cannot honour, and the test for a value that asks for nothing (sent by some clients
#: by default): any other value is refused with a 400 naming the field.
UNSUPPORTED: dict[str, Any] = {
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "tools": _empty,
    "tool_choice": lambda v: v in (None, "none"),
    "functions": _empty,
    "function_call": lambda v: v in (None, "none"),
    "logit_bias": _empty,
    "presence_penalty": _none_or_number_in(0),
    "frequency_penalty": _none_or_number_in(0),
    "audio": _none,
    "modalities": lambda v: v is None or v == ["text"],
    "prediction": _none,
    "web_search_options": _none,
    "reasoning_effort": _none,
    # vLLM's extensions that change the output
    "top_k": _none_or_number_in(0, -1),
    "min_p": _none_or_number_in(0),
    "repetition_penalty": _none_or_number_in(1),
    "length_penalty": _none_or_number_in(1),
    "min_tokens": _none_or_number_in(0),
    "stop_token_ids": _empty,
    "bad_words": _empty,
    "allowed_token_ids": _none,
    "use_beam_search": _empty,
    "include_stop_str_in_output": _empty,
    "ignore_eos": _empty,
    "skip_special_tokens": lambda v: v in (None, True),
    "truncate_prompt_tokens": _none,
    "guided_json": _none,
    "guided_regex": _none,
    "guided_choice": _none,
    "guided_grammar": _none,
    "structured_outputs": _none,
    "logits_processors": _none,
}
#: Chat-only fields the server cannot honour (chat echo and prompt log-probs are vLLM extensions;
#: score a prompt through /v1/completions instead).
CHAT_UNSUPPORTED: dict[str, Any] = {
    "add_generation_prompt": lambda v: v in (None, True),
    "continue_final_message": _empty,
    "echo": _empty,
    "prompt_logprobs": _none,
}


def check_unsupported(data: dict, table: dict[str, Any]) -> None:
    """Refuse the first field of `data` that asks for something the server cannot do."""
    for name, neutral in table.items():
        if name in data and not neutral(data[name]):
            raise ServeError(
                f"{name} is not supported by this server (lmdistill serve); remove it from the request.",
                param=name,
                code="unsupported_parameter",
            )


def check_unicode(data: Any) -> None:
    """A 400 naming the first field whose text holds a lone UTF-16 surrogate: JSON's `\\ud800` escape
    decodes to one, but it is not a character, and a tokenizer (or a stop-string check) that encodes the
    text as UTF-8 fails on it. A surrogate pair (`\\ud83d\\ude00`) decodes to one character and passes.
    In a field name, the object holding it is named (None: the body), since the name cannot be sent back."""
    stack: list[tuple[tuple, Any, bool]] = [((), data, False)]  # (path, value, value is a field name)
    while stack:
        path, value, is_key = stack.pop()
        if isinstance(value, str):
            if value.isascii():
                continue
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                param = ".".join(str(p) for p in path) or None
                what = (f"a field name in '{param}'" if param else "a field name") if is_key else f"'{param}'"
                raise ServeError(
                    f"Invalid value for {what}: it holds a lone UTF-16 surrogate "
                    f"(\\u{ord(value[exc.start]):04x} at character {exc.start}), which is not a Unicode "
                    "character; send text as UTF-8 or as \\u escapes of whole surrogate pairs.",
                    param=param,
                    code="invalid_value",
                ) from None
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):  # the first field first, its name before its value
                stack.append(((*path, key), item, False))
                stack.append((path, key, True))
        elif isinstance(value, list):
            stack.extend(((*path, i), item, False) for i, item in reversed(list(enumerate(value))))


def parse_body(model: type[BaseModel], data: Any) -> Any:
    """Validate a decoded JSON body; a problem becomes a 400 ServeError naming the parameter. Text that
    is not Unicode (`check_unicode`), then fields the server cannot honour (`UNSUPPORTED`, and
    `CHAT_UNSUPPORTED` for chat) are refused first."""
    if not isinstance(data, dict):
        raise ServeError("the request body must be a JSON object")
    check_unicode(data)
    check_unsupported(data, UNSUPPORTED)
    if model is ChatBody:
        check_unsupported(data, CHAT_UNSUPPORTED)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc.errors()) from None


#: What a pydantic type error says the field expects, in the OpenAI API's words.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
}


def _json_type(value: Any) -> str:
    """The JSON type of a decoded value, as the OpenAI API names it in its messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _field_path(loc: tuple) -> tuple:
    """A pydantic error location without the union members' tags (`stop.str`, `stop.list[str]`)."""
    return tuple(
        p for p in loc if not (isinstance(p, str) and (p in ("str", "int", "float", "bool") or "[" in p))
    )


def _validation_error(errors: list[dict]) -> ServeError:
    """One 400 for a body pydantic refused, naming the field: the error that reached deepest (for a
    union, the member that matched furthest), e.g. `Invalid type for 'max_tokens': expected an
    integer, but got a string instead.` (code `invalid_type`, as OpenAI's) for a value of the wrong
    JSON type; the members of a union that refused a value's type are listed together."""
    err = max(errors, key=lambda e: len(_field_path(e.get("loc", ()))))
    path = _field_path(err.get("loc", ()))
    param = ".".join(str(p) for p in path) or None
    if err.get("type") == "missing":
        return ServeError(f"Missing required parameter: '{param}'.", param=param, code="invalid_value")
    if err.get("type") in _EXPECTED:
        expected = dict.fromkeys(
            _EXPECTED[e["type"]]
            for e in errors
            if e.get("type") in _EXPECTED and _field_path(e["loc"]) == path
        )
        return ServeError(
            f"Invalid type for '{param}': expected {' or '.join(expected)}, "
            f"but got {_json_type(err.get('input'))} instead.",
            param=param,
            code="invalid_type",
        )
    return ServeError(
        f"Invalid value for '{param}': {err.get('msg', 'invalid')}.", param=param, code="invalid_value"
    )


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def prompt_list(prompt: Any, *, vocab: int) -> list[str | list[int]]:
    """The prompts of a completions body, as the OpenAI API allows them: a string, a list of strings, a
    list of token ids (one prompt) or a list of lists of token ids (several). Token ids must lie in
    [0, vocab); they are used as given, never re-tokenised."""
    if isinstance(prompt, str):
        return [prompt]
    bad = ServeError(
        "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids.",
        param="prompt",
        code="invalid_value",
    )
    if not isinstance(prompt, list):
        raise bad
    if not prompt:
        raise ServeError("prompt must not be empty.", param="prompt", code="invalid_value")
    if all(_is_id(x) for x in prompt):
        items: list = [prompt]
    elif all(isinstance(x, str) for x in prompt):
        return list(prompt)
    elif all(isinstance(x, list) and all(_is_id(t) for t in x) for x in prompt):
        items = prompt
    else:
        raise bad
    for i, ids in enumerate(items):
        if not ids:
            raise ServeError(
                f"prompt {i} is an empty list of token ids.", param="prompt", code="invalid_value"
            )
        wrong = next((t for t in ids if not 0 <= t < vocab), None)
        if wrong is not None:
            raise ServeError(
                f"Token id {wrong} in prompt {i} is out of vocabulary (this model's ids are 0..{vocab - 1}).",
                param="prompt",
                code="invalid_value",
            )
    return [list(ids) for ids in items]


def check_logprobs_cap(k: int | None, param: str, cap: int) -> None:
    """A 400 naming `--max-logprobs` when a client asks for more top log-probs than the server allows
    (vLLM refuses such requests the same way)."""
    if k is not None and k > cap:
        raise ServeError(
            f"Requested {param} of {k}, which is greater than max allowed: {cap} "
            f"(start lmdistill serve with --max-logprobs {k} to allow more).",
            param=param,
            code="invalid_value",
        )


def check_common(body: _Body, model_name: str) -> None:
    """The checks shared by both endpoints: the model name, n=1, stream_options only with stream."""
    if body.model is not None and body.model != model_name:
        raise ServeError(
            f"The model '{body.model}' does not exist; this server serves '{model_name}'.",
            status=404,
            param="model",
            code="model_not_found",
        )
    if body.n not in (None, 1):
        raise ServeError("Only n=1 is supported.", param="n", code="unsupported_value")
    if body.stream_options is not None and not body.stream:
        raise ServeError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    include_usage = (body.stream_options or {}).get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise ServeError(
            f"Invalid type for 'stream_options.include_usage': expected a boolean, "
            f"but got {_json_type(include_usage)} instead.",
            param="stream_options.include_usage",
            code="invalid_type",
        )
    if body.stream_options is not None and set(body.stream_options) - {"include_usage"}:
        extra = sorted(set(body.stream_options) - {"include_usage"})[0]
        raise ServeError(
            f"stream_options.{extra} is not supported (only include_usage).",
            param="stream_options",
            code="unsupported_parameter",
        )


def message_dicts(body: ChatBody) -> list[dict[str, str]]:
    """Messages as [{"role", "content"}], text parts joined; "developer" is sent as "system"."""
    out = []
    for i, m in enumerate(body.messages):
        if m.content is None:
            content = ""
        elif isinstance(m.content, str):
            content = m.content
        else:
            texts = []
            for part in m.content:
                if part.type != "text" or part.text is None:
                    raise ServeError(
                        f"Only text content parts are supported, got {part.type!r}.",
                        param=f"messages.{i}.content",
                        code="unsupported_value",
                    )
                texts.append(part.text)
            content = "\n".join(texts)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    return out


def sampling_for(body: _Body, *, max_tokens: int | None, top_logprobs: int) -> Sampling:
    """The teacher's Sampling for a request. OpenAI defaults: temperature 1, top_p 1. Greedy requests
    drop top_p and seed (they change nothing) so that they all batch together."""
    stop = _stops(body.stop)
    new = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
    temperature = 1.0 if body.temperature is None else float(body.temperature)
    if temperature <= 0.0:
        return Sampling(max_new_tokens=new, temperature=0.0, stop=stop, top_logprobs=top_logprobs)
    return Sampling(
        max_new_tokens=new,
        temperature=temperature,
        top_p=1.0 if body.top_p is None else float(body.top_p),
        seed=body.seed,
        stop=stop,
        top_logprobs=top_logprobs,
    )


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else list(stop)
    if len(items) > MAX_STOP:
        raise ServeError(
            f"At most {MAX_STOP} stop sequences are supported.", param="stop", code="invalid_value"
        )
    return tuple(dict.fromkeys(s for s in items if s))


# -- responses ---------------------------------------------------------------------------------------


def _logprob(value: float) -> float:
    """JSON has no -inf or NaN; OpenAI reports impossible tokens as -9999.0."""
    return value if math.isfinite(value) else -9999.0


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def usage(responses: list[Response]) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in responses)
    completion = sum(r.completion_tokens for r in responses)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_logprobs(response: Response, k: int) -> dict:
    content = [
        {
            "token": t["token"],
            "logprob": _logprob(t["logprob"]),
            "bytes": _bytes(t["token"]),
            "top_logprobs": [
                {"token": a["token"], "logprob": _logprob(a["logprob"]), "bytes": _bytes(a["token"])}
                for a in t["top"][:k]
            ],
        }
        for t in response.logprobs or []
    ]
    return {"content": content, "refusal": None}


def chat_completion(response: Response, *, model: str, top_logprobs: int | None) -> dict:
    """A chat.completion object; `top_logprobs` None means the client did not ask for logprobs."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": response.text, "refusal": None},
                "logprobs": None if top_logprobs is None else chat_logprobs(response, top_logprobs),
                "finish_reason": response.finish_reason,
            }
        ],
        "usage": usage([response]),
        "system_fingerprint": None,
    }


def completion_logprobs(response: Response, k: int, offset: int) -> dict:
    """The legacy completions format: parallel lists, top alternatives as {token: logprob} maps."""
    tokens, values, tops, offsets = [], [], [], []
    for t in response.logprobs or []:
        offsets.append(offset)
        offset += len(t["token"])
        tokens.append(t["token"])
        values.append(_logprob(t["logprob"]))
        top: dict[str, float] = {}
        for a in t["top"][:k]:
            top.setdefault(a["token"], _logprob(a["logprob"]))
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def prompt_logprobs_json(scored: Scored, k: int) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: one entry per prompt token, the first None (nothing predicts it), each
    other {"<token id>": {"logprob", "rank", "decoded_token"}} holding the actual prompt token first,
    then the k most likely tokens best first (k + 1 entries, or k when the actual token is among them).
    Keys are token ids as strings, as vLLM's JSON has them; rank 1 is the most likely token."""
    out: list[dict | None] = [None]
    for t in range(len(scored.logprobs)):
        actual = scored.ids[t + 1]
        entry = {
            str(actual): {
                "logprob": _logprob(scored.logprobs[t]),
                "rank": scored.ranks[t],
                "decoded_token": scored.tokens[t + 1],
            }
        }
        for r, (j, v, text) in enumerate(
            zip(scored.top_ids[t][:k], scored.top_logprobs[t][:k], scored.top_tokens[t][:k], strict=True)
        ):
            entry.setdefault(str(j), {"logprob": _logprob(v), "rank": r + 1, "decoded_token": text})
        out.append(entry)
    return out


def echo_logprobs(scored: Scored, k: int) -> dict:
    """The OpenAI-legacy log-probs of an echoed prompt: `tokens`, `token_logprobs` and `top_logprobs`
    (the first entry None in both), `text_offset` from 0. `top_logprobs` maps token *strings* to
    log-probs (the actual token first, then the top k, as vLLM does): two ids that decode to the same
    string collide there, so a client that needs ids should use `prompt_logprobs`."""
    tokens, values, tops, offsets = [], [], [], []
    offset = 0
    for t, token in enumerate(scored.tokens):
        offsets.append(offset)
        offset += len(token)
        tokens.append(token)
        if t == 0:
            values.append(None)
            tops.append(None)
            continue
        values.append(_logprob(scored.logprobs[t - 1]))
        top = {token: _logprob(scored.logprobs[t - 1])}
        for text, v in zip(scored.top_tokens[t - 1][:k], scored.top_logprobs[t - 1][:k], strict=True):
            top.setdefault(text, _logprob(v))
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def join_logprobs(first: dict, second: dict) -> dict:
    """Two legacy log-prob objects (an echoed prompt's, then its completion's) as one."""
    return {key: first[key] + second[key] for key in first}


def completion_choice(
    index: int, text: str, finish_reason: str, *, logprobs: dict | None, prompt_logprobs: list | None
) -> dict:
    """One choice of a text_completion; `prompt_logprobs` only when the client asked for it."""
    choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}
    if prompt_logprobs is not None:
        choice["prompt_logprobs"] = prompt_logprobs
    return choice


def text_completion(choices: list[dict], *, model: str, prompt_tokens: int, completion_tokens: int) -> dict:
    """A text_completion object with one choice per prompt."""
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": None,
    }
