"""A latency-injecting HTTP proxy: an OpenAI-compatible server with more latency per request.

    python benchmarks/latency_proxy.py --upstream http://127.0.0.1:8080 --delay 0.2 [--port N]

It listens on loopback and prints ``listening on http://127.0.0.1:PORT`` once ready; every
POST (a completion request) waits ``--delay`` seconds before it is forwarded, as a remote
endpoint's network and queueing would; GETs (``/v1/models``, ``/health``) pass at once. The
answer streams back byte for byte as it arrives (no buffering), so tokens keep the server's
own pace. One request per connection (``Connection: close`` both ways): simple, and the
connect time on loopback is negligible beside the delays it models.

Used by benchmarks/latency_rates.py and the integration tests, in front of the local
llama-server, to show the step policy on servers with 0, 0.2 and 1.0 s of latency.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import suppress
from urllib.parse import urlsplit

import trio

MAX_HEAD = 64 * 1024


async def _read_request(stream: trio.SocketStream) -> bytes | None:
    """One whole request (head and body by Content-Length), or None if the client left."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = await stream.receive_some(65536)
        if not piece or len(data) > MAX_HEAD:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        piece = await stream.receive_some(65536)
        if not piece:
            return None
        body += piece
    return _closing(head) + body


async def _handle(client: trio.SocketStream, host: str, port: int, delay_s: float) -> None:
    async with client:
        request = await _read_request(client)
        if request is None:
            return
        if request.startswith(b"POST") and delay_s > 0:
            await trio.sleep(delay_s)  # the latency this proxy exists to add
        try:
            upstream = await trio.open_tcp_stream(host, port)
        except OSError:
            await client.send_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                  b"Connection: close\r\n\r\n")
            return
        async with upstream:
            await upstream.send_all(request)
            head = b""
            while b"\r\n\r\n" not in head:  # the response's head, to say it is the last
                piece = await upstream.receive_some(65536)
                if not piece:
                    return
                head += piece
            head, _, rest = head.partition(b"\r\n\r\n")
            await client.send_all(_closing(head) + rest)
            while piece := await upstream.receive_some(65536):
                await client.send_all(piece)


def _closing(head: bytes) -> bytes:
    """A message head that says ``Connection: close``: the client must not send another
    request on a connection this proxy is about to close (it would find it broken)."""
    lines = [line for line in head.split(b"\r\n")
             if line.partition(b":")[0].strip().lower() != b"connection"]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


async def serve(upstream: str, delay_s: float, port: int = 0,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Proxy to ``upstream`` (``http://host:port``) on a loopback port (0: a free one);
    ``task_status.started`` gets the port."""
    parts = urlsplit(upstream)
    host, up_port = parts.hostname or "127.0.0.1", parts.port or 80
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")

    async def handler(client: trio.SocketStream) -> None:
        # either side may hang up: a cancelled request
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await _handle(client, host, up_port, delay_s)

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound[0].socket.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8080")
    ap.add_argument("--delay", type=float, required=True, help="seconds added per request")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, args.upstream, args.delay, args.port)
            print(f"listening on http://127.0.0.1:{port}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
