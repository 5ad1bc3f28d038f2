"""The OpenAI-compatible backend: any server speaking the OpenAI API (vLLM, SGLang, llama.cpp,
Ollama, Together, OpenAI...), through the official ``openai`` package's `AsyncOpenAI`.

Continuing a node's partial answer at each staircase step, three ways (``continuation``):

- ``chat-prefix`` (default; vLLM, SGLang, llama.cpp): the partial answer is sent as a final
  assistant message with ``continue_final_message`` on and ``add_generation_prompt`` off; the
  stream carries only the new text.
- ``completions``: the raw ``/v1/completions`` endpoint on a prompt rendered here with
  ``prompt_format`` (``gemma``, ``chatml``, ``llama3``, or ``document`` - plain text for base
  models), ending with the partial answer.
- ``chat-restate`` (hosted APIs without assistant prefill): the partial answer goes into the
  user message with an instruction to continue it without repeating it. Works everywhere;
  the model may drift at the seam.

`stairflow probe URL` tells which work on an endpoint.

Prefix caching. On a llama.cpp server (its ``/props`` gives ``total_slots``) each node's
requests go to one slot (``id_slot``, with ``cache_prompt`` on) while a slot is free, so its
next step finds its prefix where it left it (`stairflow._backends.slots`); other servers
(vLLM, SGLang) cache shared prefixes on their own, and the ``append`` layout keeps a node's
prompt a byte-identical prefix of its next one.

Failures, theory of operation. Every request has a deadline, ``timeout_s`` after it is sent:
the model check, the retries and every token must come before it, so a server that trickles
keep-alive comments cannot hold a run forever. Each single wait on the server (connecting,
the response headers, the next piece of the stream) is bounded by ``read_timeout_s`` too,
so a server that sends nothing fails in ``min(read_timeout_s, timeout_s)``. Retries are ours,
not the ``openai`` client's (its ``max_retries`` is 0): only refused connections and
408/409/429/5xx answers before the first token are retried, with backoff, and never past the
deadline; a timeout is not retried (the client's retries multiplied the wait). Whatever
fails becomes a one-line `BackendError` naming the node, endpoint and model, with every
configured API key redacted (`redact`) from text the server sent back. A finish reason
other than a normal stop or the length limit (``content_filter``...) fails the node rather
than asking the model to continue an answer it was not allowed to finish.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import openai
import trio

from .._cachedir import cache_dir
from .._core.policy import Rates
from .._errors import BackendError, ConfigError
from .._graph import CONTINUATIONS, PROMPT_FORMATS, Continuation
from .._prompts import Message
from .._urls import display_url, url_problem, url_secrets
from .base import Request, Usage
from .meter import EndpointRates, Meter, RateCache, Sample
from .redact import one_line, redact
from .slots import Slots

__all__ = [
    "CONTINUATIONS",
    "DEFAULT_READ_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "PROMPT_FORMATS",
    "Endpoint",
    "OpenAIBackend",
    "render_prompt",
]

T = TypeVar("T")
ErrorListener = Callable[[str, str], None]  # (base URL, kind of failure)


def rates_file() -> Path:
    """Where measured rates are remembered across runs."""
    return cache_dir() / "rates.json"


DEFAULT_TIMEOUT_S = 300.0  # one request, sent to last token: a long answer on a slow server
DEFAULT_READ_TIMEOUT_S = 60.0  # one wait on the server: a long prompt's prefill
PROPS_TIMEOUT_S = 5.0  # asking a server for its slots (once per server)
LIMIT_PEEK_S = 1.0  # at a request's max_tokens: how long to wait for the server's finish

# finish reasons servers use for a normal end / for the token limit (OpenAI, vLLM, llama.cpp,
# TGI, Anthropic-style gateways); anything else ends the node with an error
STOP_REASONS = frozenset({"stop", "eos", "eos_token", "end_turn", "stop_sequence"})
LENGTH_REASONS = frozenset({"length", "max_tokens"})

RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx
BACKOFF_S = 0.5  # first wait before a retry; doubles, up to MAX_BACKOFF_S
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 60.0  # a server's Retry-After is honoured up to this (and the deadline)

BODY_CHARS = 200  # of an error text the server sent, shown in a message

RESTATE = (
    "Here is the beginning of your answer. Continue it exactly where it stops, without "
    "repeating any of it:\n\n{prefix}"
)


@dataclass(frozen=True)
class Endpoint:
    """Where and how an llm node reaches its model.

    ``timeout_s`` is the deadline of one request, from sending it to its last token (model
    check and retries included); ``read_timeout_s`` bounds each single wait on the server
    (connecting, the response headers, the next piece of the stream) and is capped by
    ``timeout_s``. ``max_retries`` counts retries of refused connections and 408/409/429/5xx
    answers before the first token.
    """

    base_url: str
    model: str
    api_key_env: str | None = None  # the *name* of the variable holding the key
    continuation: Continuation = "chat-prefix"
    prompt_format: str = "chatml"  # for "completions"
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = 2
    extra_body: Mapping[str, Any] | None = None
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S

    def describe(self) -> str:
        return f"{display_url(self.base_url)} (model {self.model!r})"

    def wait_s(self) -> float:
        """The bound on each single wait on the server."""
        return min(self.read_timeout_s, self.timeout_s)

    def check(self) -> Endpoint:
        if self.continuation not in CONTINUATIONS:
            raise ConfigError(f"continuation={self.continuation!r}; use one of "
                              f"{', '.join(CONTINUATIONS)}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format={self.prompt_format!r}; use one of "
                              f"{', '.join(PROMPT_FORMATS)}")
        problem = url_problem(self.base_url)
        if problem is not None:
            raise ConfigError(f"base_url={display_url(self.base_url)!r} is not usable: "
                              f"{problem}; use an "
                              "http(s) URL like http://127.0.0.1:8000/v1")
        for name in ("timeout_s", "read_timeout_s"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"{name}={value!r} for {self.describe()}; use a positive, "
                                  "finite number of seconds")
        if (isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int)
                or self.max_retries < 0):
            raise ConfigError(f"max_retries={self.max_retries!r} for {self.describe()}; use a "
                              "whole number >= 0")
        return self


def _system_and_turns(messages: Sequence[Message]) -> tuple[str, list[Message]]:
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    return system, [m for m in messages if m.role != "system"]


def render_prompt(fmt: str, messages: Sequence[Message], prefix: str) -> str:
    """A raw completion prompt for ``messages``, ending with the start of the answer."""
    system, turns = _system_and_turns(messages)
    if fmt == "document":  # plain text for base models: context, then "Question: ... Answer:"
        head = f"{system}\n\n" if system else ""
        body = ""
        for t in turns:  # an earlier answer stays where it was written, after its "Answer:"
            if t.role == "assistant":  # (so a prompt and its answer prefix the next prompt)
                body += "\nAnswer:" + ("" if t.content[:1].isspace() else " ") + t.content
            else:
                body += ("\n\n" if body else "") + t.content
        return f"{head}Question: {body}\nAnswer:{' ' if prefix else ''}{prefix}"
    if fmt == "gemma":  # no system role: the system text opens the first user turn
        parts = []
        for i, t in enumerate(turns):
            role = "model" if t.role == "assistant" else "user"
            text = f"{system}\n\n{t.content}" if i == 0 and system else t.content
            parts.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
        return "".join(parts) + f"<start_of_turn>model\n{prefix}"
    if fmt == "llama3":
        parts = ["<|begin_of_text|>"]
        for m in ([Message("system", system)] if system else []) + turns:
            parts.append(f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.content}<|eot_id|>")
        return "".join(parts) + f"<|start_header_id|>assistant<|end_header_id|>\n\n{prefix}"
    parts = [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n"
             for m in ([Message("system", system)] if system else []) + turns]
    return "".join(parts) + f"<|im_start|>assistant\n{prefix}"


Phase = Literal["while listing models", "before the answer began", "mid-answer"]


@dataclass
class _Call:
    """One request: who asked, where to, its deadline, and the secrets its messages hide."""

    node: str
    ep: Endpoint
    deadline: float  # trio time
    secrets: tuple[str, ...]
    retries: int = 0  # taken so far
    pinned: int | None = None  # the llama.cpp slot it is sent to (see slots.py)
    listeners: tuple[ErrorListener, ...] = ()  # told of each failure (`error_listeners`)

    def note(self, kind: str) -> None:
        """Tell the listeners of a failed attempt: the base URL and the kind of failure."""
        for listener in self.listeners:
            listener(self.ep.base_url, kind)

    def fail(self, message: str, *, transient: bool = False, kind: str = "other") -> BackendError:
        """The node's error: one line, naming endpoint and model, with no key in it."""
        self.note(kind)
        text = one_line(redact(f"{self.ep.describe()}: {message}", self.secrets))
        return BackendError(self.node, text, transient=transient, kind=kind)

    def late(self) -> BackendError:
        return self.fail(f"no complete answer within timeout_s = {self.ep.timeout_s:g} s; raise "
                         "timeout_s (in the graph file, or --timeout on the command line) or "
                         "check the server", transient=True, kind="deadline")

    def server_text(self, text: str) -> str:
        """Text the server sent, fit for a message: keys out first, then cut short."""
        return one_line(redact(text, self.secrets), BODY_CHARS)

    def error(self, exc: Exception, phase: Phase) -> BackendError:
        """What went wrong, from an exception raised while talking to the server."""
        tried = {0: "", 1: " (after 1 retry)"}.get(self.retries, f" (after {self.retries} retries)")
        if isinstance(exc, openai.APIStatusError):
            key = (f"; check the API key in {self.ep.api_key_env}" if self.ep.api_key_env
                   else "; the endpoint wants an API key: set api_key_env")
            hint = {401: key, 403: key, 404: "; check the model name and base URL",
                    429: "; rate limited"}.get(exc.status_code, "")
            detail = self.server_text(_status_detail(exc))
            return self.fail(f"HTTP {exc.status_code}{tried}{' ' + detail if detail else ''}"
                             f"{hint}", transient=exc.status_code in RETRY_STATUS
                             or exc.status_code >= 500, kind=error_kind(exc, phase))
        if isinstance(exc, openai.APITimeoutError):
            return self.fail(f"the server sent nothing for {self.ep.wait_s():g} s {phase} "
                             "(read_timeout_s); check the server", transient=True,
                             kind="read_timeout")
        if isinstance(exc, openai.APIConnectionError):
            if phase == "mid-answer":
                return self.fail("the connection broke mid-answer; did the server stop?",
                                 transient=True, kind="broken")
            return self.fail(f"cannot connect{tried}; is the server running?", transient=True,
                             kind="connect")
        if isinstance(exc, openai.APIError):  # an error event in the stream
            return self.fail(f"the server reported an error {phase}: "
                             f"{self.server_text(exc.message)}", transient=True,
                             kind="stream_error")
        if isinstance(exc, ValueError):  # json.JSONDecodeError and the like
            # the start of the bad data helps; keys out before it is cut short
            seen = (f" in {redact(exc.doc, self.secrets)[:60]!r}"
                    if isinstance(exc, json.JSONDecodeError) else "")
            what = str(exc) if isinstance(exc, _BadData) else f"{type(exc).__name__}: {exc}"
            return self.fail(f"malformed data from the server {phase} "
                             f"({self.server_text(f'{what}{seen}')}); "
                             "is this an OpenAI-compatible endpoint?", kind="malformed")
        return self.fail(f"failed {phase}: {self.server_text(f'{type(exc).__name__}: {exc}')}")


def error_kind(exc: Exception, phase: Phase = "before the answer began") -> str:
    """The kind of a failed attempt, for the listeners (a bounded set of names: see
    `stairflow._serve.metrics.UPSTREAM_KINDS`)."""
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code in (401, 403, 404, 429):
            return f"http_{code}"
        return "http_5xx" if code >= 500 else "http_4xx"
    if isinstance(exc, openai.APITimeoutError):
        return "read_timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "broken" if phase == "mid-answer" else "connect"
    if isinstance(exc, openai.APIError):
        return "stream_error"
    return "malformed" if isinstance(exc, ValueError) else "other"


def _status_detail(exc: openai.APIStatusError) -> str:
    """The server's own words: the error message it sent, or its whole body."""
    message = exc.message
    prefix = f"Error code: {exc.status_code}"
    if message.startswith(prefix):  # the client's wording; the status is shown already
        message = message[len(prefix):].lstrip(" -")
    if not message and exc.body is not None:
        message = (exc.body if isinstance(exc.body, str)
                   else json.dumps(exc.body, ensure_ascii=False, default=str))
    return message


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        value = float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if 0 < value <= MAX_RETRY_AFTER_S else None


# Scripts written without spaces between words (Chinese, Japanese kana, Thai) and Korean's
# syllable blocks: a tokenizer gives about a token per character or two of them.
_DENSE = "\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# One estimated token of a streamed piece: a word with the whitespace before it (and, at the
# piece's end, the whitespace after it), two characters of a dense script, or a run of
# whitespace; each part bounded, so that no estimated token is long however the server groups
# its text.
_UNIT = re.compile(rf"\s{{0,64}}(?:[{_DENSE}]{{1,2}}|[^\s{_DENSE}]{{1,32}})(?:\s{{1,64}}\Z)?"
                   r"|\s{1,64}")


def split_tokens(text: str, limit: int, reported: int | None = None) -> tuple[list[str], bool]:
    """``text`` (one streamed piece) as tokens, at most ``limit`` of them; and whether text
    was left over past the limit. A server that sends a token per piece (vLLM, llama.cpp,
    OpenAI) gives one each; a piece of several words counts a token per word (and per 32
    characters of a long one, and per two characters of Chinese, Japanese, Korean or Thai).
    ``reported``: the tokens the server says the piece holds (its running
    ``usage.completion_tokens``, where it sends one with each piece): the piece then counts
    as many, if that is more (never fewer: a server cannot pass more text by claiming fewer
    tokens)."""
    if len(text) <= 32 and (reported or 1) <= 1 and _UNIT.fullmatch(text):
        return [text], False  # the usual case: one token
    units = [m.group() for m in itertools.islice(_UNIT.finditer(text), limit)]
    left = sum(map(len, units)) < len(text)
    if not left and reported is not None and len(units) < min(reported, limit):
        n = min(reported, limit, len(text))  # cut in as many pieces of about equal length
        units = [text[len(text) * i // n:len(text) * (i + 1) // n] for i in range(n)]
    return units, left


class _BadData(ValueError):
    """A chunk that does not fit the protocol; the message names what was wrong with it."""


@dataclass
class _Listing:
    """An endpoint's model listing in flight: done, and its error if it failed."""

    done: trio.Event = field(default_factory=trio.Event)
    error: BackendError | None = None


class _Stream:
    """Adapts an openai stream to the backend protocol: one estimated token at a time (see
    `split_tokens`), never more than ``limit`` of them (a server that ignores ``max_tokens``
    is cut there, with ``finish_reason`` "length"); fixes the whitespace seam."""

    def __init__(self, chunks: Any, seam_ws: str, chat: bool, call: _Call,
                 limit: int | None = None) -> None:
        self._chunks = chunks.__aiter__()
        self._seam_ws = seam_ws  # whitespace stripped off the prefix before sending
        self._chat = chat
        self._call = call
        self._limit = limit if limit is not None else 1 << 62
        self._ready: collections.deque[str] = collections.deque()  # split, not yet given
        self._reported: int | None = None  # the server's running completion_tokens
        self.usage = Usage()
        self.finish_reason: str | None = None
        self.first: float | None = None  # when its first and last text came (for the Meter)
        self.last: float | None = None
        self.tokens = 0
        self.chars = 0

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self._ready:
            return self._give(self._ready.popleft())
        if self.tokens >= self._limit:
            await self._at_limit()
            raise StopAsyncIteration
        while True:
            with trio.move_on_at(self._call.deadline) as waited:
                try:
                    chunk = await self._chunks.__anext__()
                except StopAsyncIteration:
                    if self.finish_reason is None:
                        raise self._call.fail("the stream ended without a finish reason "
                                              "(connection cut mid-answer?)",
                                              kind="no_finish_reason") from None
                    raise
                except Exception as exc:  # whatever breaks mid-stream, name the endpoint
                    raise self._call.error(exc, "mid-answer") from None
            if waited.cancelled_caught:
                raise self._call.late()
            text = self._take(chunk)
            if text:
                self.last = trio.current_time()
                if self.first is None:
                    self.first = self.last
                reported = (None if self._reported is None
                            else self._reported - self.tokens - len(self._ready))
                units, left = split_tokens(text, self._limit - self.tokens, reported)
                if left:  # past the limit: what the server sends next is not read
                    self.finish_reason = "length"
                self._ready.extend(units[1:])
                return self._give(units[0])

    def _give(self, token: str) -> str:
        self.tokens += 1
        self.chars += len(token)
        return token

    async def _at_limit(self) -> None:
        """The limit is reached: the answer ends here. A server that keeps to its limit ends
        its stream now (its finish reason, its usage, no more text): the rest is read, for
        at most `LIMIT_PEEK_S`, for the usage it reports. One that sends more text is cut
        there, and the finish reason is "length"."""
        more = False
        with trio.move_on_after(min(LIMIT_PEEK_S, self._call.ep.wait_s())):
            while not more:
                try:
                    more = bool(self._take(await self._chunks.__anext__()))
                except (StopAsyncIteration, Exception):
                    break
        if more or self.finish_reason is None:
            self.finish_reason = "length"

    def _take(self, chunk: Any) -> str:
        """The text of one chunk; notes its usage and finish reason."""
        try:
            self._reported = None
            if getattr(chunk, "usage", None):
                u = chunk.usage
                details = getattr(u, "prompt_tokens_details", None)
                self.usage = Usage(int(u.prompt_tokens or 0),
                                   int(getattr(details, "cached_tokens", 0) or 0),
                                   int(u.completion_tokens or 0))
                self._reported = self.usage.completion_tokens or None
            if not chunk.choices:
                return ""
            choice = chunk.choices[0]
            reason = choice.finish_reason
            text = (choice.delta.content if self._chat else choice.text) or ""
        except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
            raise self._call.error(_BadData(f"{type(exc).__name__}: {exc}"),
                                   "mid-answer") from None
        if not isinstance(text, str):
            raise self._call.error(_BadData(f"text is {type(text).__name__}"), "mid-answer")
        if reason:
            self.finish_reason = self._finish(reason)
        if self._seam_ws and text:
            # the prefix lost its trailing whitespace; don't let the seam double it
            text = text.lstrip() if text[:1].isspace() else text
            self._seam_ws = ""
        return text

    def _finish(self, reason: object) -> str:
        if reason in LENGTH_REASONS:
            return "length"
        if reason in STOP_REASONS:
            return "stop"
        # continuing a filtered or aborted answer would ask the model for what it refused
        shown = self._call.server_text(repr(reason))
        raise self._call.fail(f"the endpoint ended the answer with finish_reason {shown}; "
                              "stairflow continues only answers cut by the length limit "
                              "(on_error = \"drop\" lets the run go on without this node)",
                              kind="finish_reason")

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _client_key(ep: Endpoint) -> tuple[str, str | None, float]:
    return (ep.base_url, ep.api_key_env, ep.wait_s())


class OpenAIBackend:
    """Streams from OpenAI-compatible endpoints; nodes may use different endpoints."""

    simulated = False

    def __init__(self, default: Endpoint, nodes: Mapping[str, Endpoint] | None = None, *,
                 remember_rates: bool = True, pin_slots: bool = True) -> None:
        """``remember_rates``: keep the rates measured of each endpoint in a cache file
        (``~/.cache/stairflow/rates.json``, for a day), so the next run starts with them.
        ``pin_slots``: on a llama.cpp server (one whose ``/props`` gives ``total_slots``),
        send each node's requests to one slot while one is free, so that its later steps
        reuse the prefix the slot holds (`stairflow._backends.slots`)."""
        self.default = default.check()
        self.nodes = {k: v.check() for k, v in (nodes or {}).items()}
        self.meter = Meter()
        # base URL -> the name its samples have in the cache file, for a server whose URL
        # changes from run to run (the local model's free port); see stairflow._backends.meter
        self.cache_names: dict[str, str] = {}
        self._rate_cache = RateCache(rates_file()) if remember_rates else None
        self._cache_loaded = False
        self.name = f"openai {display_url(default.base_url)}"
        self._clients: dict[tuple[str, str | None, float], openai.AsyncOpenAI] = {}
        self._keys: set[str] = set()  # every key a client was made with
        self._models: dict[str, set[str] | None] = {}  # per base URL; None: cannot list
        self._listing: dict[str, _Listing] = {}  # base URLs whose listing is in flight
        # per base URL: a llama.cpp server's slots, to pin each node to one (None: not
        # llama.cpp, or pinning is off); see stairflow._backends.slots
        self.slots: dict[str, Slots | None] = {}
        self._pin = pin_slots
        self.active = 0
        # called with (base URL, kind) at each failed attempt on an endpoint, retried or not
        # (`stairflow serve` counts them for its metrics); kinds as `error_kind` names them
        self.error_listeners: list[ErrorListener] = []

    def secret_values(self) -> tuple[str, ...]:
        """The API keys in use (read from each endpoint's ``api_key_env``) and the
        credentials in the base URLs (``user:KEY@``), for redacting them from anything shown
        or recorded."""
        eps = (self.default, *self.nodes.values())
        names = {ep.api_key_env for ep in eps if ep.api_key_env}
        values = {os.environ.get(name, "") for name in names} | self._keys
        values.update(*(url_secrets(ep.base_url) for ep in eps))
        return tuple(sorted(v for v in values if v))

    def _endpoints(self) -> list[Endpoint]:
        return [self.default, *self.nodes.values()]

    def _key(self, ep: Endpoint) -> tuple[str, str]:
        return display_url(ep.base_url), ep.model

    def _load_rates(self) -> None:
        """The cached samples of this backend's endpoints (once, before the first use)."""
        if self._cache_loaded or self._rate_cache is None:
            return
        self._cache_loaded = True
        cached = Meter()
        self._rate_cache.load_into(cached)
        for ep in {self._key(ep): ep for ep in self._endpoints()}.values():
            url, model = self._key(ep)
            self.meter.adopt(cached, (self.cache_names.get(ep.base_url, url), model), (url, model))

    def rates(self, node: str) -> Rates | None:
        """The rates measured of ``node``'s endpoint and model so far (this run's requests and
        the cached ones), for the step policy; None until they are measured (see
        `stairflow._backends.meter`)."""
        self._load_rates()
        return self.meter.rates(*self._key(self.endpoint_for(node, None)))

    def measured_rates(self) -> list[EndpointRates]:
        """What has been measured of each endpoint this backend uses, for reports."""
        self._load_rates()
        keys = sorted({self._key(ep) for ep in self._endpoints()} & set(self.meter.endpoints()))
        return [self.meter.measured(url, model) for url, model in keys]

    def _save_rates(self) -> None:
        if self._rate_cache is None or not self.meter.endpoints():
            return
        cached = Meter()
        self._rate_cache.load_into(cached)  # other endpoints' samples stay
        for ep in {self._key(ep): ep for ep in self._endpoints()}.values():
            url, model = self._key(ep)
            cached.replace(self.meter, (url, model), (self.cache_names.get(ep.base_url, url),
                                                      model))
        self._rate_cache.save(cached)

    async def aclose(self) -> None:
        """Close the HTTP connection pools (also done by ``async with backend:``), and
        remember the measured rates."""
        self._save_rates()
        clients, self._clients = list(self._clients.values()), {}
        with trio.CancelScope(shield=True):
            for client in clients:
                await client.close()

    async def __aenter__(self) -> OpenAIBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def endpoint_for(self, node: str, model: str | None) -> Endpoint:
        ep = self.nodes.get(node, self.default)
        return replace(ep, model=model) if model and node not in self.nodes else ep

    async def warm_up(self, nodes: Iterable[tuple[str, str | None]]) -> None:
        """Before a run: make the HTTP clients its nodes (``(name, model)`` pairs) will use,
        off the event loop (making one takes tens of milliseconds: an SSL context), and list
        each endpoint's models, so that the run's first requests all leave at once. The
        listing is the one those requests would wait for anyway, under the same deadlines;
        whatever fails here fails again, with the node's name, on its first request."""
        eps = {_client_key(ep): ep for ep in (self.endpoint_for(n, m) for n, m in nodes)}
        for key, ep in eps.items():
            if key not in self._clients:
                try:
                    client = await trio.to_thread.run_sync(self._new_client, ep)
                except ConfigError:
                    continue
                self._clients.setdefault(key, client)
        usable = [ep for key, ep in eps.items() if key in self._clients]
        async with trio.open_nursery() as nursery:
            for ep in {ep.base_url: ep for ep in usable}.values():
                nursery.start_soon(self._warm_models, ep)

    async def _warm_models(self, ep: Endpoint) -> None:
        call = _Call("", ep, trio.current_time() + ep.timeout_s, self.secret_values(),
                     listeners=tuple(self.error_listeners))
        with suppress(openai.OpenAIError, BackendError, ConfigError):
            await self._list_models(self._client(ep), call)

    def _new_client(self, ep: Endpoint) -> openai.AsyncOpenAI:
        api_key = os.environ.get(ep.api_key_env, "") if ep.api_key_env else ""
        if ep.api_key_env and not api_key:
            raise ConfigError(f"environment variable {ep.api_key_env} (the API key for "
                              f"{display_url(ep.base_url)}) is not set")
        # one float bounds connect, write, pool and each read; retries are ours (_send)
        return openai.AsyncOpenAI(base_url=ep.base_url, api_key=api_key or "not-needed",
                                  timeout=ep.wait_s(), max_retries=0)

    def _client(self, ep: Endpoint) -> openai.AsyncOpenAI:
        key = _client_key(ep)
        if key not in self._clients:
            self._clients[key] = self._new_client(ep)
        client = self._clients[key]
        if client.api_key != "not-needed":
            self._keys.add(client.api_key)
        return client

    @asynccontextmanager
    async def open_stream(self, request: Request) -> AsyncIterator[_Stream]:
        ep = self.endpoint_for(request.node, request.model)
        sent = trio.current_time()
        call = _Call(request.node, ep, sent + ep.timeout_s, self.secret_values(),
                     listeners=tuple(self.error_listeners))
        try:
            client = self._client(ep)
        except ConfigError as exc:
            raise BackendError(request.node, str(exc)) from None
        prefix = request.prefix.rstrip()
        seam = request.prefix[len(prefix):]
        stream: Any = None
        slots: Slots | None = None
        slot: int | None = None
        try:
            with trio.move_on_at(call.deadline) as opening:
                await self._check_model(client, call)
                slots = self.slots.get(ep.base_url)
                if slots is not None:
                    slot = slots.take((request.run_id, request.node))
                    call.pinned = slot
                stream = await self._create(client, call, request, prefix)
            if opening.cancelled_caught:
                raise call.late()
            chat = ep.continuation != "completions"
            self.active += 1
            adapted = _Stream(stream, seam if prefix else "", chat, call, request.max_tokens)
            try:
                yield adapted
            finally:
                self.active -= 1
                self._measure(ep, request, sent, adapted)
                # closing the response frees the server's slot; do it even when cancelled
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await adapted.aclose()
                    await stream.close()
        finally:
            if slots is not None:
                slots.give(slot)

    def _measure(self, ep: Endpoint, request: Request, sent: float, stream: _Stream) -> None:
        """One request's timings into the `Meter` (only if it wrote: a request cut before
        its first token says nothing of the server's speed)."""
        if stream.first is None:
            return
        self._load_rates()
        chars = sum(len(m.content) for m in request.messages) + len(request.prefix)
        usage = stream.usage
        self.meter.add(*self._key(ep), Sample(sent, stream.first, stream.last, stream.tokens,
                                              chars, stream.chars, usage.prompt_tokens,
                                              usage.cached_tokens))

    async def _create(self, client: openai.AsyncOpenAI, call: _Call, request: Request,
                      prefix: str) -> Any:
        """Send the request; the stream once the server has answered 200."""
        ep = call.ep
        common: dict[str, Any] = {
            "model": ep.model, "max_tokens": request.max_tokens,
            "temperature": request.temperature, "stream": True,
            "stream_options": {"include_usage": True},
        }
        extra = dict(ep.extra_body or {})
        if call.pinned is not None:  # llama.cpp: this node's slot, and its prompt cache on
            extra = {"id_slot": call.pinned, "cache_prompt": True} | extra
        try:
            if ep.continuation == "completions":
                prompt = render_prompt(ep.prompt_format, request.messages, prefix)
                return await self._send(call, lambda: client.completions.create(
                    prompt=prompt, extra_body=extra or None, **common))
            messages: list[Any] = [{"role": m.role, "content": m.content}
                                   for m in request.messages]
            if prefix and ep.continuation == "chat-prefix":
                messages.append({"role": "assistant", "content": prefix})
                extra |= {"continue_final_message": True, "add_generation_prompt": False}
            elif prefix:
                messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n"
                                + RESTATE.format(prefix=prefix)}
            return await self._send(call, lambda: client.chat.completions.create(
                messages=messages, extra_body=extra or None, **common))
        except openai.OpenAIError as exc:
            raise call.error(exc, "before the answer began") from None

    async def _send(self, call: _Call, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, retried on refused connections and 408/409/429/5xx with backoff,
        ``max_retries`` times at most and never past the deadline; else its last error."""
        while True:
            try:
                return await attempt()
            except openai.APIStatusError as exc:
                retry = exc.status_code in RETRY_STATUS or exc.status_code >= 500
                delay = self._retry_delay(call, retry, _retry_after(exc))
                if delay is None:
                    raise
                call.note(error_kind(exc))  # retried: the last attempt's error notes its own
            except openai.APITimeoutError:
                raise  # a server that does not answer in time will not answer a retry sooner
            except openai.APIConnectionError as exc:
                delay = self._retry_delay(call, True, None)
                if delay is None:
                    raise
                call.note(error_kind(exc))
            await trio.sleep(delay)
            call.retries += 1

    @staticmethod
    def _retry_delay(call: _Call, retry: bool, asked: float | None) -> float | None:
        if not retry or call.retries >= call.ep.max_retries:
            return None
        backoff = min(BACKOFF_S * 2 ** call.retries, MAX_BACKOFF_S) * random.uniform(0.75, 1)
        delay = asked if asked is not None else backoff
        return delay if trio.current_time() + delay < call.deadline else None

    async def _list_models(self, client: openai.AsyncOpenAI, call: _Call) -> None:
        """The endpoint's models, once per base URL (requests that need them meanwhile wait
        for the one listing in flight, and fail with its error if it fails: an unreachable
        server is tried, with its retries, once for all of them, not once each in turn)."""
        url = call.ep.base_url
        while url not in self._models:
            listing = self._listing.get(url)
            if listing is not None:
                await listing.done.wait()
                if listing.error is not None:
                    raise BackendError(call.node, listing.error.reason,
                                       transient=listing.error.transient,
                                       kind=listing.error.kind)
                continue
            listing = self._listing[url] = _Listing()
            try:
                try:
                    listed = await self._send(call, lambda: client.models.list())
                    self._models[url] = {str(m.id) for m in listed.data} or None
                except (openai.APIStatusError, AttributeError, TypeError, ValueError):
                    self._models[url] = None  # the server cannot list models: skip
                except openai.OpenAIError as exc:
                    listing.error = call.error(exc, "while listing models")
                    raise listing.error from None
                if self._pin:  # before any request goes: pinned and unpinned ones never mix
                    self.slots[url] = await self._slots_of(client, call)
            finally:
                self._listing.pop(url).done.set()

    @staticmethod
    async def _slots_of(client: openai.AsyncOpenAI, call: _Call) -> Slots | None:
        """A llama.cpp server's slots, from its ``/props`` (None: another kind of server)."""
        root = call.ep.base_url.rstrip("/").removesuffix("/v1")
        props: object = None
        with trio.move_on_after(min(PROPS_TIMEOUT_S, call.ep.wait_s())):
            with suppress(openai.OpenAIError, ValueError, TypeError):
                props = await client.get(f"{root}/props", cast_to=object)
        total = props.get("total_slots") if isinstance(props, dict) else None
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            return None
        return Slots(total)

    async def _check_model(self, client: openai.AsyncOpenAI, call: _Call) -> None:
        """Fail early, and clearly, on a model the endpoint does not serve."""
        ep = call.ep
        await self._list_models(client, call)
        known = self._models[ep.base_url]
        if known is not None and ep.model not in known:
            shown = ", ".join(sorted(known)[:5]) + (" ..." if len(known) > 5 else "")
            raise call.fail(f"the server has no such model; it serves "
                            f"{call.server_text(shown)}", kind="no_such_model")
