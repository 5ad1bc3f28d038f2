"""`stairflow probe`: which ways of continuing a partial answer work on an endpoint; and the
note `stairflow local start` leaves so that later runs reuse its server."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._cachedir import cache_dir
from .._errors import ConfigError, StairflowError
from .._prompts import Message
from .base import Request
from .local import LOCAL_MODEL, LocalServer, _http_status
from .meter import EndpointRates
from .openai import CONTINUATIONS, Endpoint, OpenAIBackend

__all__ = ["forget_server", "probe", "probe_rates", "probe_slots", "remember_server",
           "running_server", "running_server_url", "state_file"]

QUESTION = "Count from one to ten in words, separated by spaces."
PREFIX = "one two three"


async def probe(base_url: str, model: str, api_key_env: str | None = None
                ) -> dict[str, tuple[bool, str]]:
    """For each continuation mode: does it continue ``PREFIX`` without repeating it?"""
    results: dict[str, tuple[bool, str]] = {}
    for mode in CONTINUATIONS:
        fmt = "document" if mode == "completions" else "chatml"
        backend = OpenAIBackend(Endpoint(base_url, model, api_key_env, mode, fmt, 30.0, 0))
        request = Request("probe", (Message("user", QUESTION),), PREFIX, 8, 0.0, model)
        try:
            async with backend, backend.open_stream(request) as stream:
                text = "".join([t async for t in stream])
        except StairflowError as exc:
            results[mode] = (False, str(exc).split(": ", 1)[-1][:100])
            continue
        # the answer so far is "one two three": continuing it means going on with "four"
        words = text.lower().replace(",", " ").split()
        ok = bool(words) and words[0] == "four"
        note = "" if ok else "empty" if not words else "does not go on where it stopped"
        results[mode] = (ok, f"{note} -> {text[:40]!r}".strip())
    return results


FILLER = "The quick brown fox jumps over the lazy dog. "
PROBE_SIZES = (2, 30, 60, 120)  # sentences: prompts of about 30 to 1,300 tokens


async def probe_rates(base_url: str, model: str, api_key_env: str | None = None
                      ) -> EndpointRates | None:
    """The endpoint's latency, prefill and decode rates, measured on four requests whose
    prompts differ in size (what a run would measure; they are remembered for the next run,
    see `stairflow._backends.meter`). None if a request fails."""
    backend = OpenAIBackend(Endpoint(base_url, model, api_key_env, "chat-prefix", "chatml",
                                     60.0, 0))
    async with backend:
        for n in PROBE_SIZES:
            text = f"Say 'done' after reading this: {FILLER * n}"
            request = Request("probe", (Message("user", text),), "", 16, 0.0, model)
            try:
                async with backend.open_stream(request) as stream:
                    async for _ in stream:
                        pass
            except StairflowError:
                return None
        measured = backend.measured_rates()
    return measured[0] if measured else None


async def probe_slots(base_url: str, model: str, api_key_env: str | None = None) -> int | None:
    """How many slots a llama.cpp server has (its ``/props``), which stairflow pins nodes to
    (see `stairflow._backends.slots`); None for another kind of server."""
    backend = OpenAIBackend(Endpoint(base_url, model, api_key_env, "chat-prefix", "chatml",
                                     60.0, 0), remember_rates=False)
    async with backend:
        await backend.warm_up([("probe", model)])
        slots = backend.slots.get(base_url)
    return None if slots is None else slots.n


def state_file() -> Path:
    """The note of `stairflow local start`, in stairflow's cache directory (`cache_dir`)."""
    return cache_dir() / "server.json"


def state_dir() -> Path:
    """The note's directory, made if need be; a one-line error naming it if it cannot be."""
    where = state_file().parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        if not os.access(where, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise ConfigError(f"cannot keep the local server's note in {where} "
                          f"({exc.strerror or exc}); set XDG_CACHE_HOME to a writable "
                          "directory") from None
    return where


def remember_server(server: LocalServer) -> None:
    path = state_dir() / state_file().name
    path.write_text(json.dumps({"base_url": server.base_url, "port": server.port,
                                "model": server.model, "pid": os.getpid()}))


def forget_server() -> None:
    state_file().unlink(missing_ok=True)


async def running_server_url() -> str | None:
    """The URL of a healthy server left by `stairflow local start`, if any."""
    note = await running_server()
    return None if note is None else str(note["base_url"])


async def running_server() -> dict[str, Any] | None:
    """The note `stairflow local start` left (``base_url``, ``port``, ``model``, ``pid``), if
    it is well formed and the server it names answers."""
    try:
        data = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("model") != LOCAL_MODEL:
        return None
    port = data.get("port")
    if type(port) is not int or not 0 < port < 65536 or not isinstance(data.get("base_url"), str):
        return None
    try:
        healthy = await _http_status(port, "/health") == 200
    except OSError:
        return None
    return data if healthy else None



