"""Issue 16, "two secrets", through the command line: a key in a ``base_url``'s userinfo
(``http://user:KEY@host/v1``) never reaches a banner, a JSON report, a trace or the server's
log, in clear or as the ``Authorization: Basic`` header an upstream echoes back; and a server
key read with whitespace around it is stripped, with a warning, instead of locking out every
client.

No sockets: the ``openai`` client gets an in-memory transport (`httpx2.MockTransport`) that
answers as an upstream would, and ``stairflow serve`` gets a stand-in for Hypercorn that sends
its requests to the app in process.
"""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import openai
import pytest

from tests.cli.test_cli import cli
from tests.serve.test_app import Response, call

KEY = "sk-url/Zq8+key-77c1e0"  # "/" and "+": percent-encoded in the URL, decoded in the header
URL = f"http://alice:{quote(KEY, safe='')}@models.example:8000/v1"
SHOWN = "http://[redacted]@models.example:8000/v1"
BASIC = base64.b64encode(f"alice:{KEY}".encode()).decode()  # what the client sends


def leaks(text: str) -> list[str]:
    """The forms of the URL's credentials found in ``text``."""
    forms = [KEY, quote(KEY, safe=""), "alice:", BASIC, BASIC[4:-4], KEY[7:15]]
    return [f for f in forms if f in text]


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """An OpenAI-compatible upstream in memory: it lists the model ``m`` (and ``leaky``),
    streams a short answer for ``m``, and answers ``leaky`` with a 401 that echoes the
    request's ``Authorization`` header. Returns the headers it gets."""
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        auth = request.headers.get("authorization", "")
        seen.append(auth)
        if request.url.path.endswith("/models"):
            return httpx2.Response(200, json={"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "x"}
                for m in ("m", "leaky")]})
        if json.loads(request.content)["model"] == "leaky":
            return httpx2.Response(401, text=f"unauthorized: got {auth}")
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "fine"}, "finish_reason": None}]}
        end = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in (chunk, end)) + "data: [DONE]\n\n"
        return httpx2.Response(200, text=body, headers={"content-type": "text/event-stream"})

    real = openai.AsyncOpenAI

    def client(**kw: Any) -> openai.AsyncOpenAI:
        return real(**kw, http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))

    monkeypatch.setattr(openai, "AsyncOpenAI", client)
    return seen


def leak_graph(tmp_path: Path, on_error: str = "drop") -> Path:
    """Two proposers on the default endpoint, one of them (model ``leaky``) refused."""
    path = tmp_path / "leak.toml"
    path.write_text(textwrap.dedent(f"""
        name = "leak"
        default_input = "Why?"
        [defaults]
        max_tokens = 8
        [nodes.q]
        kind = "input"
        [nodes.ok]
        kind = "llm"
        [nodes.leaky]
        kind = "llm"
        model = "leaky"
        on_error = "{on_error}"
        [nodes.agg]
        kind = "llm"
        prompt = "moa-aggregate"
        [nodes.out]
        kind = "output"
        [[edges]]
        from = "q"
        to = ["ok", "leaky"]
        [[edges]]
        from = ["ok", "leaky"]
        to = "agg"
        [[edges]]
        from = "agg"
        to = "out"
    """))
    return path


def test_run_shows_no_url_credentials_in_its_banner_report_or_trace(tmp_path, upstream):
    graph, trace = leak_graph(tmp_path), tmp_path / "t.json"
    code, out, err = cli("run", str(graph), "--base-url", URL, "--model", "m")
    assert code == 0, err
    assert f"[openai {SHOWN}]" in err  # the start banner, on stderr
    assert "dropped after an error: leaky" in err and not leaks(out + err)
    code, out, err = cli("run", str(graph), "--base-url", URL, "--model", "m", "--json",
                         "--trace", str(trace))
    assert code == 0, err
    report = json.loads(out)
    assert report["backend"] == f"openai {SHOWN}"
    # the upstream got the key as HTTP Basic auth and echoed it back, base64-encoded
    assert f"Basic {BASIC}" in upstream
    assert report["nodes"]["leaky"]["error"] == (
        f"node 'leaky' failed: {SHOWN} (model 'leaky'): HTTP 401 unauthorized: got Basic "
        "[redacted]; the endpoint wants an API key: set api_key_env")
    assert json.loads(trace.read_text())["meta"]["backend"] == f"openai {SHOWN}"
    assert not leaks(out + err + trace.read_text())


def test_a_failed_run_s_error_shows_no_url_credentials(tmp_path, upstream):
    code, out, err = cli("run", str(leak_graph(tmp_path, "fail")), "--base-url", URL,
                         "--model", "m")
    assert code != 0 and "HTTP 401 unauthorized: got Basic [redacted]" in err
    assert SHOWN in err and not leaks(out + err)


class FakeHypercorn:
    """Stands in for `hypercorn.trio.serve`: says it is bound, sends ``requests`` to the app
    in process, and returns (the server stops)."""

    def __init__(self, *requests: tuple[str, str, Any, bytes | None]) -> None:
        self.requests = requests
        self.responses: list[Response] = []

    async def __call__(self, app: Any, config: Any, *, shutdown_trigger: Any,
                       task_status: Any) -> None:
        task_status.started(["http://127.0.0.1:8000"])
        for method, path, body, key in self.requests:
            headers = () if key is None else ((b"authorization", b"Bearer " + key),)
            self.responses.append(await call(app, method, path, body, headers=headers))


def test_serve_shows_no_url_credentials_in_its_banner_or_log(tmp_path, upstream, monkeypatch):
    ask = {"model": "leak", "messages": [{"role": "user", "content": "Why?"}]}
    hypercorn = FakeHypercorn(("POST", "/v1/chat/completions", ask, None))
    monkeypatch.setattr("hypercorn.trio.serve", hypercorn)
    code, out, err = cli("serve", str(leak_graph(tmp_path, "fail")), "--base-url", URL,
                         "--model", "m")
    assert code == 0, err
    assert f"serving leak (staircase; openai {SHOWN})" in out  # the start banner, on stdout
    (answer,) = hypercorn.responses
    assert answer.status == 502 and not leaks(answer.body.decode())
    # the log says why, with the upstream's echo of the key redacted
    assert "leak failed: node 'leaky' failed" in err and "got Basic [redacted]" in err
    assert SHOWN in err and not leaks(out + err)


@pytest.mark.parametrize("given", ["k3y-from-a-file\n", "  k3y-from-a-file\r\n", "\tk3y-from-a-file"])
def test_a_server_key_with_whitespace_around_it_is_stripped_with_a_warning(monkeypatch, given):
    monkeypatch.setenv("SERVE_KEY", given)
    hypercorn = FakeHypercorn(("GET", "/v1/models", None, b"k3y-from-a-file"),
                              ("GET", "/v1/models", None, b"wrong"))
    monkeypatch.setattr("hypercorn.trio.serve", hypercorn)
    code, _, err = cli("serve", "moa", "--backend", "sim", "--server-key-env", "SERVE_KEY")
    assert code == 0, err
    right, wrong = hypercorn.responses
    assert right.status == 200 and wrong.status == 401  # the key, without its whitespace
    warnings = [line for line in err.splitlines() if line.startswith("stairflow: warning:")]
    assert warnings == ["stairflow: warning: the key in SERVE_KEY had whitespace around it (a "
                        "trailing newline from a file?); stripped it: clients send the key "
                        "without it"]
    assert "k3y" not in err


@pytest.mark.parametrize(("given", "says"), [
    (" \n", "the environment variable SERVE_KEY holds only whitespace"),
    ("k3y\nother", "holds characters that cannot go in an HTTP header"),
])
def test_a_server_key_that_no_client_could_send_is_a_one_line_error(monkeypatch, given, says):
    monkeypatch.setenv("SERVE_KEY", given)
    code, _, err = cli("serve", "moa", "--backend", "sim", "--server-key-env", "SERVE_KEY")
    assert code == 2 and err.startswith("stairflow: error: --server-key-env SERVE_KEY: ")
    assert says in err and err.count("\n") == 1 and "k3y" not in err
