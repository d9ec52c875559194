"""A teacher behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, ...).

Requests run on a pool of `concurrency` threads and are yielded as they complete. Optional
requests-per-minute and tokens-per-minute limits pace them (token buckets shared by the threads).
Rate limits (429), timeouts, connection errors, 408, 409 and 5xx are retried with exponential backoff
and full jitter, or after exactly the server's `Retry-After` (a 429's Retry-After holds back every
worker, since the limit is shared); any other 4xx, or a request that still
fails after `max_retries`, comes back as a Response with finish_reason "error" instead of raising,
so one bad prompt does not stop a data set (and the cache does not store it, so a rerun retries it).

The API key is read from an environment variable and handed to the client only: it is never
logged, printed, stored, put in a repr or in an error message (server messages are scrubbed of it).
A server on a loopback address (127.0.0.0/8, ::1, localhost: `lmdistill serve`, a local vLLM) needs
no key: when the variable is not set, a placeholder is sent instead of stopping. A `base_url` with
credentials in it (`http://user:password@host`) is refused (`check_base_url`): keys come only from
the environment, so that no URL ever carries one into a config copy, a cache or a log.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import math
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone

from lmdistill.errors import UserError
from lmdistill.teachers.types import Request, Response, collect

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx
NO_KEY = "EMPTY"  # what local servers that need no key are sent


class TokenBucket:
    """A thread-safe token bucket: `rate` tokens per second, at most `capacity` saved up.

    `acquire(n)` reserves n tokens and sleeps until they are due: it waits until the bucket holds
    min(n, capacity) and may then run into debt, so a cost above the capacity is still admitted and
    the long-run rate holds. Reservations are made under the lock, so waiting threads queue in order.
    """

    def __init__(self, rate: float, capacity: float, *, sleep: Callable[[float], None] = time.sleep):
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._level = capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()
        self._sleep = sleep

    def _refill(self, now: float) -> None:
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def acquire(self, n: float = 1.0) -> float:
        """Reserve `n` tokens, sleep until they are available; returns the seconds waited."""
        with self._lock:
            now = time.monotonic()
            self._refill(now)
            need = min(n, self.capacity)
            delay = max(0.0, (need - self._level) / self.rate)
            self._level -= n
        if delay > 0:
            self._sleep(delay)
        return delay

    def refund(self, n: float) -> None:
        """Give back `n` tokens (negative: charge more), e.g. to correct an estimate with real usage."""
        with self._lock:
            self._refill(time.monotonic())
            self._level = min(self.capacity, self._level + n)


def estimate_tokens(request: Request) -> int:
    """What a request may cost before it is sent: prompt characters / 4 + max_new_tokens."""
    chars = sum(len(m.get("content", "")) for m in request.message_dicts)
    return math.ceil(chars / 4) + request.sampling.max_new_tokens


def parse_retry_after(headers) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` (seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _retryable(status: int) -> bool:
    return status in RETRY_STATUS or 500 <= status < 600


def is_loopback(url: str) -> bool:
    """True when `url`'s host is a loopback address (127.0.0.0/8, ::1) or "localhost"."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(
    url: str, *, field: str = "teacher.base_url", key_env_field: str = "teacher.api_key_env"
) -> None:
    """Refuse a URL that is not http(s)://HOST... or that carries a user name or password (the
    message shows it with the credentials masked). field: the setting that gave the URL; key_env_field:
    the setting that names the key's environment variable (both named in the messages)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number or out of range
    except ValueError as exc:
        raise UserError(f"{field}: {_without_userinfo(url)!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"{field}: {_without_userinfo(url)!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1"
        )
    if "@" in parts.netloc:
        raise UserError(
            f"{field}: {_without_userinfo(url)!r} has a user name or password in it; lmdistill reads API keys "
            f"only from the environment: remove it from the URL and export it in the variable named by "
            f"{key_env_field}"
        )


def _without_userinfo(url: str) -> str:
    """`url` without any "user:password@" part."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


_SECRET_LIKE = re.compile(r"(Bearer\s+)\S+|\bsk-[A-Za-z0-9_\-*]{6,}", re.IGNORECASE)


class ApiTeacher:
    """`Teacher` over an OpenAI-compatible `/chat/completions` endpoint.

    Args:
        model: the model name sent to the server (and used in cache keys).
        base_url: the API root, e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8000/v1".
        api_key_env: the environment variable holding the key, read once here. An unset variable is
            a UserError, except for a loopback `base_url`, which gets the placeholder ("EMPTY"); for
            any other server that needs no key, pass None or "" or set the variable to an empty string.
        concurrency: requests in flight at most (worker threads).
        requests_per_minute, tokens_per_minute: optional client-side rate limits.
        max_retries: retries per request after the first try (retryable failures only).
        timeout: seconds per HTTP request.
        backoff_base, backoff_max: retry waits are uniform(0, min(backoff_max, backoff_base * 2**attempt)).
        max_retry_after: a server's Retry-After is obeyed exactly, up to this many seconds (hosted APIs
            ask for 60 s on token limits; retrying earlier only burns retries).
        sleep: the sleep function used for backoff and rate limits (tests may replace it).

    Counters (thread-safe, accumulate over calls): `requests_sent` (HTTP attempts, retries included),
    `retries`, `failed` (responses returned with finish_reason "error"), `prompt_tokens`,
    `completion_tokens` (as reported by the server).
    """

    backend = "api"
    #: How a request that failed for good is logged. generate keeps going past it, so it warns; a
    #: subclass whose caller turns every failure into one error message (`teachers.whitebox.server`)
    #: lowers it, so that the user sees that one line and not a warning per request before it.
    failure_log_level = logging.WARNING
    #: The settings that give `base_url` and `api_key_env`, named in messages about them.
    url_field, key_env_field = "teacher.base_url", "teacher.api_key_env"

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_retries: int = 5,
        timeout: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if concurrency < 1:
            raise UserError(f"concurrency must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise UserError(f"max_retries must be 0 or more, got {max_retries}")
        for label, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and value <= 0:
                raise UserError(f"{label} must be positive (or unset for no limit), got {value}")
        check_base_url(base_url, field=self.url_field, key_env_field=self.key_env_field)
        key = NO_KEY
        if api_key_env:
            if api_key_env in os.environ:
                key = os.environ[api_key_env].strip() or NO_KEY
            elif is_loopback(base_url):
                log.info("%s is not set; %s is a loopback server, sending no key", api_key_env, base_url)
            else:
                raise UserError(
                    f"the API key variable {api_key_env} is not set: export {api_key_env}=<your key> "
                    f"(for a server that needs no key, set it to an empty string or set {self.key_env_field}: null)"
                )
        try:
            import openai
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise UserError("the API teacher needs the openai package: pip install 'lmdistill[api]'") from e

        self.name = model
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._openai = openai
        # The key lives only inside the client; nothing here prints or stores it.
        self._client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)
        self._rpm = TokenBucket(requests_per_minute / 60.0, 1.0, sleep=sleep) if requests_per_minute else None
        # One second's worth of tokens may be spent at once; bigger requests run the bucket into debt.
        self._tpm = (
            TokenBucket(tokens_per_minute / 60.0, max(1.0, tokens_per_minute / 60.0), sleep=sleep)
            if tokens_per_minute
            else None
        )
        self._lock = threading.Lock()
        self._pause_until = 0.0  # monotonic time before which no worker sends (after a 429)
        self.requests_sent = 0
        self.retries = 0
        self.failed = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def __repr__(self) -> str:
        return f"ApiTeacher(model={self.model!r}, base_url={_without_userinfo(self.base_url)!r})"

    @property
    def cache_id(self) -> str:
        """What identifies this teacher in cache keys: the model at this endpoint (never the key)."""
        return f"{self.name}@{_without_userinfo(self.base_url).rstrip('/')}"

    def stats(self) -> dict[str, int]:
        """The counters, for a run summary."""
        with self._lock:
            return {
                "requests_sent": self.requests_sent,
                "retries": self.retries,
                "failed": self.failed,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }

    def _add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def _scrub(self, text: str) -> str:
        """`text` without the key or anything shaped like a key or bearer token."""
        key = self._client.api_key
        if key and key != NO_KEY:
            text = text.replace(key, "***")
        return _SECRET_LIKE.sub(lambda m: (m.group(1) or "sk-") + "***", text)

    # -- Teacher protocol ---------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        return collect(self.generate_iter(requests), len(requests))

    def generate_iter(self, requests: Sequence[Request]) -> Iterator[tuple[int, Response]]:
        """Yield (index, response) as each request completes; at most `concurrency` in flight."""
        if not requests:
            return
        window = 2 * self.concurrency  # submitted but unfinished; bounds memory for huge inputs
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="api-teacher")
        pending: dict[Future, int] = {}
        todo = iter(range(len(requests)))
        try:
            while True:
                for i in todo:
                    pending[pool.submit(self._send_with_retries, requests[i])] = i
                    if len(pending) >= window:
                        break
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        finally:
            # On early exit (an exception, a closed generator) drop queued work; running calls finish.
            pool.shutdown(wait=not pending, cancel_futures=True)

    # -- one request, with limits and retries -------------------------------------------------------

    def _kwargs(self, request: Request) -> dict:
        s = request.sampling
        kwargs = dict(
            model=self.model,
            messages=request.message_dicts,
            max_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
        )
        if s.stop:
            kwargs["stop"] = list(s.stop)
        if s.seed is not None:
            kwargs["seed"] = s.seed
        if s.top_logprobs > 0:
            kwargs.update(logprobs=True, top_logprobs=s.top_logprobs)
        return kwargs

    def _estimate(self, request) -> int:
        return estimate_tokens(request)

    def _create(self, kwargs: dict):
        """One HTTP call; a subclass may point it at another endpoint (`teachers.whitebox.server`)."""
        return self._client.chat.completions.create(**kwargs)

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2**attempt))

    def _send_with_retries(self, request: Request) -> Response:
        """Send one request within the rate limits, retrying what may pass on a later try (429, 5xx,
        timeouts, lost connections); the Response, or one with finish_reason "error" once that fails."""
        openai = self._openai
        kwargs = self._kwargs(request)
        estimate = self._estimate(request)
        attempt = 0
        while True:
            with self._lock:
                paused = self._pause_until - time.monotonic()
            if paused > 0:  # another worker was told to back off: the limit is shared
                self._sleep(paused)
            if self._rpm is not None:
                self._rpm.acquire(1)
            if self._tpm is not None:
                self._tpm.acquire(estimate)
            self._add(requests_sent=1)
            retry_after: float | None = None
            status = None
            try:
                completion = self._create(kwargs)
            except openai.APIStatusError as e:
                status = e.status_code
                error = f"{status}: {self._server_message(e)}"
                retryable = _retryable(status)
                retry_after = parse_retry_after(getattr(e.response, "headers", None))
            except openai.APITimeoutError:
                error, retryable = f"timeout after {self.timeout:g} s", True
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e
                error, retryable = self._scrub(f"connection error: {type(cause).__name__}: {cause}"), True
            except openai.APIError as e:  # e.g. a response body that is not a chat completion
                error, retryable = self._scrub(f"bad response: {e.message}")[:300], False
            else:
                try:
                    return self._response(completion, estimate)
                except Exception as e:  # an unreadable completion fails this row, not the data set
                    error, retryable = self._scrub(f"bad response: {type(e).__name__}: {e}")[:300], False
            if self._tpm is not None:
                self._tpm.refund(estimate)  # a failed request is not billed
            if not retryable or attempt >= self.max_retries:
                self._add(failed=1)
                if retryable:
                    error = f"{error} (gave up after {attempt + 1} {'try' if attempt == 0 else 'tries'})"
                log.log(self.failure_log_level, "request failed for good: %s", error)
                return Response(text="", finish_reason="error", error=error)
            delay = (
                min(self.max_retry_after, retry_after) if retry_after is not None else self._backoff(attempt)
            )
            if retry_after is not None and status == 429:
                with self._lock:  # hold back every worker, not only this one
                    self._pause_until = max(self._pause_until, time.monotonic() + delay)
            log.info("retrying in %.2f s (retry %d of %d): %s", delay, attempt + 1, self.max_retries, error)
            self._add(retries=1)
            attempt += 1
            if delay > 0:
                self._sleep(delay)

    def _server_message(self, e) -> str:
        """The server's short error message, scrubbed of the key, at most 300 characters."""
        body = getattr(e, "body", None)
        message = None
        if isinstance(body, dict):
            inner = body.get("error", body)
            message = inner.get("message") if isinstance(inner, dict) else inner
        elif isinstance(body, str):
            message = body
        if not message:
            try:
                message = e.response.text
            except Exception:  # a streamed or unreadable body
                message = None
        message = " ".join(str(message or getattr(e.response, "reason_phrase", "") or "").split())
        message = self._scrub(message)
        return message[:300] + ("..." if len(message) > 300 else "")

    def _response(self, completion, estimate: int) -> Response:
        choice = completion.choices[0] if completion.choices else None
        usage = getattr(completion, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        self._add(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if self._tpm is not None and usage is not None:
            self._tpm.refund(estimate - (prompt_tokens + completion_tokens))
        if choice is None:
            self._add(failed=1)
            return Response(text="", finish_reason="error", error="the server returned no choices")
        text = (choice.message.content if choice.message is not None else None) or ""
        finish = "length" if choice.finish_reason == "length" else "stop"
        logprobs = None
        content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
        if content is not None:
            logprobs = [
                {
                    "token": t.token,
                    "logprob": float(t.logprob),
                    "top": [{"token": a.token, "logprob": float(a.logprob)} for a in (t.top_logprobs or [])],
                }
                for t in content
            ]
        return Response(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            logprobs=logprobs,
        )
