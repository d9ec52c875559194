"""The two POST endpoints, /v1/chat/completions and /v1/completions: from a request to its answer.

Each handler goes through the same named steps: read the body (`body.read_body`), check the
request's settings and turn them into the batcher's terms (`chat_settings`, `completion_settings`,
where every 400 of the endpoint is raised), then either stream the jobs (`streaming.stream_jobs`) or
await them while watching the connection (`streaming.wait_watching`) and build the OpenAI object
(`protocol.chat_completion`, `completion_object`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse

from lmdistill.serve.batcher import Batcher, JobFuture, ServeError, StreamSink, raw_request
from lmdistill.serve.body import read_body
from lmdistill.serve.protocol import (
    ChatBody,
    CompletionBody,
    chat_completion,
    check_common,
    check_logprobs_cap,
    completion_choice,
    completion_logprobs,
    echo_logprobs,
    join_logprobs,
    message_dicts,
    prompt_list,
    prompt_logprobs_json,
    sampling_for,
    text_completion,
)
from lmdistill.serve.scoring import Scored
from lmdistill.serve.streaming import Chunks, stream_jobs, wait_watching
from lmdistill.teachers.types import Request, Response, Sampling

#: OpenAI's default max_tokens for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: A token-id prompt list longer than this is checked on a thread, off the event loop.
_LONG_ID_LIST = 10_000


@dataclass(frozen=True)
class Served:
    """What the handlers need from the app: the batcher, the served model's name and the limits."""

    batcher: Batcher
    model_name: str
    max_logprobs: int
    max_body_bytes: int

    def check_prompt_size(self, chars: int, param: str) -> None:
        """A 400 for a text of `chars` characters that cannot fit the context, before tokenizing it."""
        if not self.batcher.prompt_fits(chars):
            raise ServeError(
                f"This model's maximum context length is {self.batcher.context_length} tokens; the {param} "
                f"({chars} characters) is certainly longer. Please reduce the length of the {param}.",
                param=param,
                code="context_length_exceeded",
            )


# -- /v1/chat/completions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatSettings:
    """A checked chat request: the teacher's request, and what the answer must carry."""

    request: Request
    explicit_max_tokens: bool  # False: the worker may cut the default max_tokens to the context
    top_logprobs: int | None  # None: the client did not ask for logprobs
    include_usage: bool  # streaming: end with a usage chunk


def chat_settings(body: ChatBody, served: Served) -> ChatSettings:
    """Check a chat body (every 400 of the endpoint but the body's own) and build its request."""
    check_common(body, served.model_name)
    if body.top_logprobs and not body.logprobs:
        raise ServeError(
            "logprobs must be set to true if top_logprobs is used.",
            param="top_logprobs",
            code="invalid_value",
        )
    if body.stream and body.logprobs:
        raise ServeError(
            "logprobs are not supported with stream=true; send stream=false to get them.",
            param="logprobs",
            code="unsupported_value",
        )
    check_logprobs_cap(body.top_logprobs, "top_logprobs", served.max_logprobs)
    k = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    # the teacher only computes log-probs with top_logprobs >= 1; trim the list back to k on the way out
    sampling = sampling_for(body, max_tokens=max_tokens, top_logprobs=0 if k is None else max(k, 1))
    messages = message_dicts(body)
    served.check_prompt_size(sum(len(m["content"]) for m in messages), "messages")
    return ChatSettings(
        request=Request.chat(messages, sampling),
        explicit_max_tokens=max_tokens is not None,
        top_logprobs=k,
        include_usage=bool((body.stream_options or {}).get("include_usage")),
    )


async def chat_completions(request: HTTPRequest, served: Served) -> JSONResponse | StreamingResponse:
    """POST /v1/chat/completions: a chat.completion, or its chunks when streaming."""
    body: ChatBody = await read_body(request, ChatBody, served.max_body_bytes)
    settings = chat_settings(body, served)
    batcher = served.batcher

    def submit(sink: StreamSink | None = None) -> JobFuture:
        return batcher.submit(
            "chat", settings.request, explicit_max_tokens=settings.explicit_max_tokens, sink=sink
        )

    if body.stream:
        chunks = Chunks(chat=True, model=served.model_name, include_usage=settings.include_usage)
        return await stream_jobs(request, 1, lambda _i, sink: submit(sink), chunks)
    (response,) = await wait_watching(request, [submit()])
    return JSONResponse(
        chat_completion(response, model=served.model_name, top_logprobs=settings.top_logprobs)
    )


# -- /v1/completions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionSettings:
    """A checked completions request: its prompts, how to generate from them, and what to score."""

    prompts: list[str | list[int]]
    sampling: Sampling
    explicit_max_tokens: bool
    logprobs: int | None  # top log-probs per generated (and, with echo, prompt) token
    prompt_logprobs: int | None  # vLLM's scoring field
    echo: bool
    generating: bool  # False for max_tokens=0: score only
    include_usage: bool

    @property
    def scoring(self) -> bool:
        """Whether the prompts are scored (a forward over each): echo, or prompt_logprobs."""
        return self.echo or self.prompt_logprobs is not None


async def completion_settings(body: CompletionBody, served: Served) -> CompletionSettings:
    """Check a completions body (every 400 of the endpoint but the body's own) and list its prompts."""
    check_common(body, served.model_name)
    if body.best_of not in (None, 1):
        raise ServeError("Only best_of=1 is supported.", param="best_of", code="unsupported_value")
    if body.suffix:
        raise ServeError("suffix is not supported.", param="suffix", code="unsupported_value")
    vocab = served.batcher.vocab
    if isinstance(body.prompt, list) and len(body.prompt) > _LONG_ID_LIST:
        prompts = await asyncio.to_thread(prompt_list, body.prompt, vocab=vocab)
    else:
        prompts = prompt_list(body.prompt, vocab=vocab)
    for p in prompts:
        served.check_prompt_size(len(p) if isinstance(p, str) else 0, "prompt")
    k, k_prompt, echo = body.logprobs, body.prompt_logprobs, bool(body.echo)
    check_logprobs_cap(k, "logprobs", served.max_logprobs)
    check_logprobs_cap(k_prompt, "prompt_logprobs", served.max_logprobs)
    if body.stream:
        for name, value in (("logprobs", k), ("prompt_logprobs", k_prompt), ("echo", body.echo or None)):
            if value is not None:
                raise ServeError(
                    f"{name} is not supported with stream=true; send stream=false.",
                    param=name,
                    code="unsupported_value",
                )
    if body.max_tokens == 0 and not (echo or k_prompt is not None):
        raise ServeError(
            "max_tokens=0 generates nothing: use it with echo=true or prompt_logprobs to score the prompt.",
            param="max_tokens",
            code="invalid_value",
        )
    explicit = body.max_tokens is not None
    sampling = sampling_for(
        body,
        max_tokens=body.max_tokens if explicit else COMPLETIONS_DEFAULT_MAX_TOKENS,
        top_logprobs=0 if k is None else max(k, 1),
    )
    return CompletionSettings(
        prompts=prompts,
        sampling=sampling,
        explicit_max_tokens=explicit,
        logprobs=k,
        prompt_logprobs=k_prompt,
        echo=echo,
        generating=body.max_tokens != 0,
        include_usage=bool((body.stream_options or {}).get("include_usage")),
    )


def submit_generation(
    batcher: Batcher, prompt: str | list[int], settings: CompletionSettings, sink: StreamSink | None = None
) -> JobFuture:
    """Queue generation from one prompt: a text prompt as is ("raw"), token ids without re-tokenising."""
    if isinstance(prompt, str):
        request = raw_request(prompt, settings.sampling)
        return batcher.submit("raw", request, explicit_max_tokens=settings.explicit_max_tokens, sink=sink)
    return batcher.submit_ids(
        prompt, settings.sampling, explicit_max_tokens=settings.explicit_max_tokens, sink=sink
    )


async def completions(request: HTTPRequest, served: Served) -> JSONResponse | StreamingResponse:
    """POST /v1/completions: a text_completion with one choice per prompt (generated and/or scored),
    or its chunks when streaming."""
    body: CompletionBody = await read_body(request, CompletionBody, served.max_body_bytes)
    settings = await completion_settings(body, served)
    batcher, prompts = served.batcher, settings.prompts
    if body.stream:
        chunks = Chunks(chat=False, model=served.model_name, include_usage=settings.include_usage)
        return await stream_jobs(
            request,
            len(prompts),
            lambda i, sink: submit_generation(batcher, prompts[i], settings, sink),
            chunks,
        )
    # one scoring job (a forward over the prompt) and/or one generation job per prompt
    score_k = max(settings.prompt_logprobs or 0, (settings.logprobs or 0) if settings.echo else 0)
    scores = [batcher.submit_score(p, score_k) if settings.scoring else None for p in prompts]
    gens = [submit_generation(batcher, p, settings) if settings.generating else None for p in prompts]
    results = await wait_watching(request, scores + gens)
    scored, responses = results[: len(prompts)], results[len(prompts) :]
    return JSONResponse(completion_object(settings, scored, responses, model=served.model_name))


def completion_object(
    settings: CompletionSettings,
    scored: list[Scored | None],
    responses: list[Response | None],
    *,
    model: str,
) -> dict:
    """The text_completion for each prompt's score (None unless scoring) and generation (None for
    max_tokens=0): the echoed prompt and/or the completion, their log-probs, and the usage."""
    k, k_prompt = settings.logprobs, settings.prompt_logprobs
    choices, n_prompt, n_completion = [], 0, 0
    for i, (p, sc, r) in enumerate(zip(settings.prompts, scored, responses, strict=True)):
        text, logprobs = "", None
        if settings.echo:
            text = p if isinstance(p, str) else sc.text
            if k is not None:
                logprobs = echo_logprobs(sc, k)
        if r is not None:
            if k is not None:
                offset = len(text) if settings.echo else (len(p) if isinstance(p, str) else 0)
                generated = completion_logprobs(r, k, offset)
                logprobs = generated if logprobs is None else join_logprobs(logprobs, generated)
            text += r.text
        n_prompt += len(sc.ids) if sc is not None else r.prompt_tokens
        n_completion += r.completion_tokens if r is not None else 0
        choices.append(
            completion_choice(
                i,
                text,
                r.finish_reason if r is not None else "length",
                logprobs=logprobs,
                prompt_logprobs=None if k_prompt is None else prompt_logprobs_json(sc, k_prompt),
            )
        )
    return text_completion(choices, model=model, prompt_tokens=n_prompt, completion_tokens=n_completion)
