"""A real HTTP server on loopback that speaks the OpenAI streaming protocol and misbehaves on
purpose: the backend's failure paths tested through real sockets, real HTTP/1.1 chunked
responses and real server-sent events, with no model and no mock of the ``openai`` client.

A test gives a *script* per route: a function that answers one `Exchange` (the request the
server got) by calling its methods - `sse` and `token` for a normal stream, and `stall`,
`cut`, `comment`, raw `event` data or an error status to misbehave. The server binds and
listens before its thread starts, so a client can connect at once (no sleeps); on exit it
releases every stalled handler and stops.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Exchange", "FakeOpenAI", "Script", "fake_openai", "serve_models", "stream"]


class Exchange:
    """One request the server got, and the ways to answer it."""

    def __init__(self, handler: _Handler, body: Any) -> None:
        self._h = handler
        self.path: str = handler.path
        self.headers: Message = handler.headers  # names are case-insensitive
        self.body: Any = body
        self.stop: threading.Event = handler.server.stop  # type: ignore[attr-defined]

    @property
    def chat(self) -> bool:
        return self.path.endswith("/chat/completions")

    @property
    def model(self) -> str:
        return str((self.body or {}).get("model", ""))

    def reply(self, status: int, text: str, content_type: str = "text/plain",
              headers: Mapping[str, str] | None = None) -> None:
        data = text.encode()
        self._h.send_response(status)
        self._h.send_header("Content-Type", content_type)
        self._h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self._h.send_header(k, v)
        self._h.end_headers()
        self._h.wfile.write(data)

    def json(self, status: int, obj: object, headers: Mapping[str, str] | None = None) -> None:
        self.reply(status, json.dumps(obj), "application/json", headers)

    def sse(self) -> None:
        """Start a 200 event stream (chunked, as real servers send it)."""
        self._h.send_response(200)
        self._h.send_header("Content-Type", "text/event-stream")
        self._h.send_header("Transfer-Encoding", "chunked")
        self._h.end_headers()

    def _chunk(self, data: bytes) -> None:
        self._h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self._h.wfile.flush()

    def event(self, data: object) -> None:
        """One ``data:`` event: a str as it is (malformed on purpose, if wanted), else JSON."""
        self._chunk(f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode())

    def comment(self, text: str = "keep-alive") -> None:
        self._chunk(f": {text}\n\n".encode())

    def token(self, text: str = "", finish: object = None) -> None:
        """One streamed delta, shaped for the route (chat or completions)."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.chat:
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        self.event({"id": "x", "object": kind, "created": 0, "model": self.model,
                    "choices": [choice]})

    def done(self) -> None:
        """``[DONE]`` and the end of the chunked body: a well-formed end."""
        self.event("[DONE]")
        self._chunk(b"")

    def stall(self) -> None:
        """Send nothing more until the server shuts down."""
        self.stop.wait(30)
        self._h.close_connection = True

    def cut(self, reset: bool = False) -> None:
        """Drop the connection mid-response: a FIN, or with ``reset`` an RST (a killed server)."""
        sock = self._h.connection
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        self._h.close_connection = True


Script = Callable[[Exchange], None]


def stream(*tokens: str, finish: object = "stop") -> Script:
    """A well-behaved answer: the tokens, then a finish reason (None: none), then [DONE]."""
    def script(ex: Exchange) -> None:
        ex.sse()
        for t in tokens:
            ex.token(t)
        if finish is not None:
            ex.token("", finish)
        ex.done()
    return script


def serve_models(*ids: str) -> Script:
    def script(ex: Exchange) -> None:
        ex.json(200, {"object": "list", "data": [{"id": i, "object": "model", "created": 0,
                                                  "owned_by": "fake"} for i in ids]})
    return script


def _no_props(ex: Exchange) -> None:
    ex.json(404, {"error": {"message": "Not Found", "type": "not_found_error"}})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, like real servers
    # each event leaves at once, as from real servers (with Nagle's algorithm a small write
    # waited for the client's delayed ACK: 40 ms more before the first token)
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # the name http.server dispatches to
        self._answer(None)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(json.loads(raw) if raw else None)

    def _answer(self, body: Any) -> None:
        fake: FakeOpenAI = self.server.fake  # type: ignore[attr-defined]
        ex = Exchange(self, body)
        fake.seen.append(ex)
        if self.path.endswith("/models"):
            fake.models(ex)
        elif self.path.endswith("/props"):
            fake.props(ex)
        else:
            fake.answer(ex)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read what the client saw


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hung up on a misbehaving handler: that is the test's point


@dataclass
class FakeOpenAI:
    answer: Script
    models: Script
    props: Script
    base_url: str = ""
    seen: list[Exchange] = field(default_factory=list)

    def posts(self) -> list[Exchange]:
        return [ex for ex in self.seen if ex.body is not None]


@contextmanager
def fake_openai(answer: Script, models: Script | None = None,
                props: Script | None = None) -> Iterator[FakeOpenAI]:
    """A misbehaving OpenAI-compatible server on a free loopback port, for the ``with`` body.

    ``answer`` serves the completion routes; ``models`` serves ``/v1/models`` (by default,
    the one model ``m``); ``props`` serves llama.cpp's ``/props`` (by default a 404, as
    servers other than llama.cpp answer it).
    """
    fake = FakeOpenAI(answer, models or serve_models("m"), props or _no_props)
    server = _Server(("127.0.0.1", 0), _Handler)  # bound and listening from here on
    server.fake = fake  # type: ignore[attr-defined]
    server.stop = threading.Event()  # type: ignore[attr-defined]
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.stop.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()
        thread.join(5)
