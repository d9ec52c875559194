"""The OpenAI wire format: request bodies in, chat.completion / text_completion objects out.

Only what a local causal LM can honour is accepted: one choice (n=1), no streaming. Fields the server
does not use (user, frequency_penalty, ...) are ignored, as other OpenAI-compatible servers do.

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
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

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


def parse_body(model: type[BaseModel], data: Any) -> Any:
    """Validate a decoded JSON body; a problem becomes a 400 ServeError naming the parameter."""
    if not isinstance(data, dict):
        raise ServeError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ())) or None
        if err.get("type") == "missing":
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {err.get('msg', 'invalid')}."
        raise ServeError(message, param=param, code="invalid_value") from None


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
    """The checks shared by both endpoints: the model name, n=1 and no streaming."""
    if body.model is not None and body.model != model_name:
        raise ServeError(
            f"The model '{body.model}' does not exist; this server serves '{model_name}'.",
            status=404,
            param="model",
            code="model_not_found",
        )
    if body.n not in (None, 1):
        raise ServeError("Only n=1 is supported.", param="n", code="unsupported_value")
    if body.stream:
        raise ServeError(
            "Streaming is not supported; send stream=false.", param="stream", code="unsupported_value"
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
