"""A FastAPI service that streams a graph's answer: stairflow inside an asyncio application.

    pip install 'stairflow[serve]' fastapi
    python examples/fastapi_app.py serve     # on http://127.0.0.1:8000 until Ctrl-C
    curl -N http://127.0.0.1:8000/ask -H 'content-type: application/json' \\
         -d '{"question": "Why is the sky blue?"}'
    python examples/fastapi_app.py           # serves, asks once, prints the stream, stops

`stairflow.aio` runs the graph on FastAPI's own event loop (Trio as a guest of asyncio): the
endpoint streams the aggregator's answer as it is written, other requests go on meanwhile,
and a client that hangs up cancels the run and its model requests.

The graph runs on the simulated backend, in real time at five times the paper's speed, so
the text is a placeholder; use ``backend="auto"`` (each node's endpoint, else the local
model) or an `sf.OpenAIBackend` for real answers.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import sys
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from hypercorn.asyncio import serve
from hypercorn.config import Config
from pydantic import BaseModel

import stairflow as sf
import stairflow.aio as sfa

GRAPH = sf.resolve_graph("moa")
BACKEND = sf.SimBackend(sim={"decode_tps": 300.0, "output_tokens": 150})

app = FastAPI()


class Question(BaseModel):
    question: str


@app.post("/ask")
async def ask(q: Question) -> StreamingResponse:
    async def answer() -> AsyncIterator[str]:
        async with sfa.open_run(GRAPH, q.question, backend=BACKEND) as run:
            async for event in run:
                if event.kind == "output":  # a piece of the answer, as it is written
                    yield event.data["text"]
        label = "[simulated] " if run.simulated else ""
        yield f"\n{label}first token after {run.report().ttft_s:.2f} s\n"

    return StreamingResponse(answer(), media_type="text/plain")


def ask_once(port: int) -> int:
    """A plain HTTP client (any would do): print the answer as it arrives; the pieces."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(200):  # until the server listens
        try:
            conn.connect()
            break
        except ConnectionRefusedError:
            time.sleep(0.05)
    conn.request("POST", "/ask", json.dumps({"question": "Why is the sky blue?"}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.status
    pieces = 0
    while piece := response.read1(65536):
        print(piece.decode(), end="", flush=True)
        pieces += 1
    conn.close()
    return pieces


async def demo() -> None:
    """Serve on a free port, ask once from another thread, stop."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    pieces = await asyncio.to_thread(ask_once, port)
    print(f"[simulated] {pieces} pieces streamed to the client")
    stop.set()
    await server


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        config = Config()
        config.bind = ["127.0.0.1:8000"]
        asyncio.run(serve(app, config))  # type: ignore[arg-type]
    else:
        asyncio.run(demo())
