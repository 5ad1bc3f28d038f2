"""The OpenAI-compatible backend against a real server that misbehaves on purpose.

Every test talks HTTP over a loopback socket to `fake_openai` (real chunked responses, real
server-sent events): keys echoed back, streams that trickle, stall, break or lie. Deadlines
and delays are fractions of a second, so each test takes well under two seconds; the timing
bounds below are loose on purpose (they tell "one wait" from "several", not milliseconds).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import stairflow as sf
from stairflow._backends.openai import Endpoint, OpenAIBackend
from stairflow._backends.redact import redact
from stairflow._prompts import Message

from .fake_openai import Exchange, FakeOpenAI, Script, fake_openai, serve_models, stream

pytestmark = pytest.mark.integration

KEY = "sk-fake/Zq8+key-4f2a9c"  # "/" and "+": JSON and URLs may spell it differently
KEY_ENV = "STAIRFLOW_FAKE_KEY"
Q = (Message("user", "Why is the sky blue?"),)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def backend(url: str, **fields: Any) -> OpenAIBackend:
    fields.setdefault("api_key_env", KEY_ENV)
    fields.setdefault("max_retries", 0)
    return OpenAIBackend(Endpoint(url, "m", **fields))


class Outcome:
    """What the client saw: the tokens, then the finish reason or the error; and how long."""

    tokens: list[str]
    finish: str | None = None
    error: str | None = None
    elapsed: float = 0.0


def ask(b: OpenAIBackend, node: str = "p2", got: threading.Event | None = None) -> Outcome:
    """One request; ``got`` is set once the client has a token (for the server to wait on)."""
    out = Outcome()
    out.tokens = []

    async def main() -> None:
        with trio.fail_after(5):  # a regression fails here instead of hanging the suite
            await one()

    async def one() -> None:
        async with b, b.open_stream(sf.Request(node, Q, "", 16, 0.0)) as s:
            async for t in s:
                out.tokens.append(t)
                if got:
                    got.set()
        out.finish = s.finish_reason

    start = time.monotonic()
    try:
        trio.run(main)
    except sf.BackendError as exc:
        out.error = str(exc)
        assert exc.node == node
    out.elapsed = time.monotonic() - start
    return out


def where(fake: FakeOpenAI) -> str:
    return f"node 'p2' failed: {fake.base_url} (model 'm'): "


def auth(ex: Exchange) -> str:
    return ex.headers.get("Authorization", "")


# -- keys never in messages -------------------------------------------------------------------

@pytest.mark.parametrize("as_json", [False, True], ids=["text-body", "json-body"])
def test_a_401_that_echoes_the_authorization_header_never_shows_the_key(as_json: bool):
    def answer(ex: Exchange) -> None:
        if as_json:
            ex.json(401, {"error": {"message": f"unauthorized: got {auth(ex)}"}})
        else:
            ex.reply(401, f"unauthorized: got {auth(ex)}")

    with fake_openai(answer) as fake:
        out = ask(backend(fake.base_url))
    assert auth(fake.posts()[0]) == f"Bearer {KEY}"  # the key was sent, and echoed
    assert out.error == (where(fake) + "HTTP 401 unauthorized: got Bearer [redacted]; "
                         f"check the API key in {KEY_ENV}")


def test_an_sse_error_event_that_echoes_the_key_mid_stream_never_shows_it():
    def answer(ex: Exchange) -> None:
        ex.sse()
        ex.token("Hello")
        ex.event({"error": {"message": f"key {auth(ex)} revoked", "type": "auth"}})
        ex.done()

    with fake_openai(answer) as fake:
        out = ask(backend(fake.base_url))
    assert out.tokens == ["Hello"]
    assert out.error == (where(fake) + "the server reported an error mid-answer: "
                         "key Bearer [redacted] revoked")


def _malformed(ex: Exchange) -> None:
    ex.sse()
    ex.event(f"{{not json {auth(ex)}")
    ex.done()


def _reason(ex: Exchange) -> None:
    stream(finish=KEY)(ex)


def _json_escaped(ex: Exchange) -> None:
    ex.reply(403, json.dumps({"detail": KEY}).replace("/", "\\/"))


def _url_escaped(ex: Exchange) -> None:
    ex.reply(500, f"bad request to /v1?key={KEY.replace('/', '%2F').replace('+', '%2B')}")


def _long_body(ex: Exchange) -> None:
    # a cut at 200 characters must not leave the start of the key behind
    ex.reply(500, "x" * 190 + KEY)


LEAKS: dict[str, tuple[Script, Script | None]] = {
    "malformed-data": (_malformed, None),
    "finish-reason": (_reason, None),
    "model-ids": (stream("x"), serve_models("a", KEY)),
    "json-escaped": (_json_escaped, None),
    "url-escaped": (_url_escaped, None),
    "long-body": (_long_body, None),
}


@pytest.mark.parametrize("leak", LEAKS)
def test_keys_are_redacted_wherever_the_server_puts_them(leak: str):
    answer, models = LEAKS[leak]
    with fake_openai(answer, models) as fake:
        out = ask(backend(fake.base_url))
    assert out.error is not None and out.error.startswith(where(fake))
    assert KEY[:6] not in out.error
    if leak != "long-body":
        assert "[redacted]" in out.error


def test_secret_values_are_every_configured_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STAIRFLOW_OTHER_KEY", "other-secret")
    monkeypatch.delenv("STAIRFLOW_UNSET_KEY", raising=False)
    b = OpenAIBackend(Endpoint("http://127.0.0.1:9/v1", "m", KEY_ENV),
                      {"a": Endpoint("http://127.0.0.1:9/v1", "m", "STAIRFLOW_OTHER_KEY"),
                       "b": Endpoint("http://127.0.0.1:9/v1", "m"),
                       "c": Endpoint("http://127.0.0.1:9/v1", "m", "STAIRFLOW_UNSET_KEY")})
    assert b.secret_values() == ("other-secret", KEY)


@pytest.mark.parametrize(("field", "value", "fix"), [
    ("timeout_s", float("inf"), "use a positive, finite number of seconds"),
    ("read_timeout_s", 0, "use a positive, finite number of seconds"),
    ("timeout_s", float("nan"), "use a positive, finite number of seconds"),
    ("max_retries", -1, "use a whole number >= 0"),
])
def test_endpoint_limits_are_checked(field: str, value: object, fix: str):
    with pytest.raises(sf.ConfigError) as info:
        OpenAIBackend(Endpoint("http://h/v1", "m", **{field: value}))  # type: ignore[arg-type]
    assert str(info.value) == f"{field}={value!r} for http://h/v1 (model 'm'); {fix}"


def test_redact():
    assert redact(f"Bearer {KEY}.", [KEY, ""]) == "Bearer [redacted]."
    assert redact("abcdefgh abcdefghi", ["abcdefgh", "abcdefghi"]) == "[redacted] [redacted]"
    assert redact("a short key 1234567 stays", ["1234567", "a"]) == "a short key 1234567 stays"
    assert redact("k%2fy k%2Fy k/y", ["sk-k/y-long"]) == "k%2fy k%2Fy k/y"
    url = "sk-K/y+z=42abcdef"
    for spelt in (url.replace("/", "%2f"), url.replace("/", "%2F").replace("+", "%2B"),
                  url.replace("+", "%2B"), url.replace("/", "%2F").replace("+", "%2b")):
        assert redact(f"url:{spelt}!", [url]) == "url:[redacted]!", spelt
    assert redact(json.dumps(KEY).replace("/", "\\/"), [KEY]) == '"[redacted]"'
    assert redact("nothing here", []) == "nothing here"


def test_a_dropped_node_leaves_no_key_in_the_trace():
    def answer(ex: Exchange) -> None:
        if ex.model == "leaky":
            ex.reply(401, f"who is {auth(ex)}?")
        else:
            stream("fine", " answer")(ex)

    g = sf.Graph("leak", defaults={"max_tokens": 8})
    g.input("q")
    g.llm("ok")
    g.llm("leaky", on_error="drop")
    g.llm("agg", prompt="moa-aggregate")
    g.connect("q", ["ok", "leaky"])
    g.connect(["ok", "leaky"], "agg")
    g.connect("agg", g.output("out"))
    fg = g.build()

    with fake_openai(answer, serve_models("m", "leaky")) as fake:
        default = Endpoint(fake.base_url, "m", KEY_ENV, max_retries=0)
        b = OpenAIBackend(default, {"leaky": Endpoint(fake.base_url, "leaky", KEY_ENV,
                                                      max_retries=0)})

        async def main() -> sf.Report:
            async with b, sf.open_run(fg, "Why?", backend=b) as run:
                async for _ in run:
                    pass
            return run.report()

        report = trio.run(main)
    error = report.trace.of("node_error", "leaky")[0].data["error"]
    assert "who is Bearer [redacted]?" in error
    assert KEY not in json.dumps(report.trace.to_json())


# -- bounded time to a clear error ------------------------------------------------------------

def test_a_server_that_trickles_keep_alive_comments_is_stopped_by_the_deadline():
    def answer(ex: Exchange) -> None:
        ex.sse()
        ex.token("Hello")
        while not ex.stop.wait(0.02):  # an SSE comment every 20 ms, forever
            ex.comment()

    with fake_openai(answer) as fake:
        out = ask(backend(fake.base_url, timeout_s=0.5, read_timeout_s=0.2))
    assert out.tokens == ["Hello"]
    assert out.error == (where(fake) + "no complete answer within timeout_s = 0.5 s; raise "
                         "timeout_s (in the graph file, or --timeout on the command line) or "
                         "check the server")
    assert 0.5 <= out.elapsed < 1.5


def test_headers_never_sent_fail_after_one_read_timeout_without_retries():
    with fake_openai(Exchange.stall) as fake:
        out = ask(backend(fake.base_url, timeout_s=5, read_timeout_s=0.2, max_retries=2))
    assert out.error == (where(fake) + "the server sent nothing for 0.2 s before the answer "
                         "began (read_timeout_s); check the server")
    assert len(fake.posts()) == 1 and out.elapsed < 1.5  # a timeout is not retried


def test_a_stalled_model_list_fails_after_one_read_timeout():
    with fake_openai(stream("x"), Exchange.stall) as fake:
        out = ask(backend(fake.base_url, timeout_s=5, read_timeout_s=0.2, max_retries=2))
    assert out.error == (where(fake) + "the server sent nothing for 0.2 s while listing "
                         "models (read_timeout_s); check the server")
    assert len(fake.seen) == 1 and out.elapsed < 1.5


def test_the_deadline_covers_the_model_check():
    with fake_openai(stream("x"), Exchange.stall) as fake:
        out = ask(backend(fake.base_url, timeout_s=0.3, read_timeout_s=5))
    assert out.error is not None and "no complete answer within timeout_s = 0.3 s" in out.error
    assert out.elapsed < 1.0


def _unavailable(ex: Exchange) -> None:
    ex.json(503, {"error": {"message": "overloaded"}})


def test_an_answer_of_5xx_is_retried_max_retries_times():
    with fake_openai(_unavailable) as fake:
        out = ask(backend(fake.base_url, max_retries=1))
    assert out.error == where(fake) + "HTTP 503 (after 1 retry) overloaded"
    assert len(fake.posts()) == 2


def test_no_retry_is_started_that_would_end_past_the_deadline():
    with fake_openai(_unavailable) as fake:
        out = ask(backend(fake.base_url, max_retries=5, timeout_s=0.3))
    assert out.error == where(fake) + "HTTP 503 overloaded"  # the first backoff is >= 0.375 s
    assert len(fake.posts()) == 1 and out.elapsed < 1.0


def test_a_429_is_retried_after_the_servers_retry_after():
    def answer(ex: Exchange) -> None:
        if len(fake.posts()) == 1:
            ex.json(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.05"})
        else:
            stream("Hello", " world")(ex)

    # a backoff (>= 0.375 s) would end past the deadline; the server's 0.05 s does not
    with fake_openai(answer) as fake:
        out = ask(backend(fake.base_url, max_retries=1, timeout_s=0.3))
    assert out.error is None and out.tokens == ["Hello", " world"] and out.finish == "stop"
    assert len(fake.posts()) == 2


@pytest.fixture
def refused_url() -> Iterator[str]:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_a_refused_connection_is_retried_then_a_clear_error(refused_url: str):
    out = ask(backend(refused_url, max_retries=1))
    assert out.error == (f"node 'p2' failed: {refused_url} (model 'm'): cannot connect "
                         "(after 1 retry); is the server running?")


# -- streams that break or lie ----------------------------------------------------------------

def test_malformed_sse_data_names_the_endpoint_and_model():
    def answer(ex: Exchange) -> None:
        ex.sse()
        ex.token("Hello")
        ex.event("{this is not json")
        ex.done()

    with fake_openai(answer) as fake:
        out = ask(backend(fake.base_url))
    assert out.tokens == ["Hello"]
    assert out.error == (where(fake) + "malformed data from the server mid-answer "
                         "(JSONDecodeError: Expecting property name enclosed in double quotes: "
                         "line 1 column 2 (char 1) in '{this is not json'); is this an "
                         "OpenAI-compatible endpoint?")


def test_a_usage_that_is_no_number_is_named_once():
    def answer(ex: Exchange) -> None:
        ex.sse()
        ex.event({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": "lots"}})
        ex.done()

    with fake_openai(answer) as fake:
        out = ask(backend(fake.base_url))
    assert out.error == (where(fake) + "malformed data from the server mid-answer "
                         "(ValueError: invalid literal for int() with base 10: 'lots'); is this "
                         "an OpenAI-compatible endpoint?")


@pytest.mark.parametrize(("sent", "seen"), [("stop", "stop"), ("length", "length"),
                                            ("eos", "stop"), ("max_tokens", "length")])
def test_normal_finish_reasons(sent: str, seen: str):
    with fake_openai(stream("Hello", " world", finish=sent)) as fake:
        out = ask(backend(fake.base_url))
    assert out.error is None and out.tokens == ["Hello", " world"] and out.finish == seen


def test_a_content_filter_finish_fails_the_node_instead_of_continuing():
    with fake_openai(stream("Hello", finish="content_filter")) as fake:
        out = ask(backend(fake.base_url))
    assert out.tokens == ["Hello"]
    assert out.error == (where(fake) + "the endpoint ended the answer with finish_reason "
                         "'content_filter'; stairflow continues only answers cut by the length "
                         "limit (on_error = \"drop\" lets the run go on without this node)")


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "killed"])
def test_a_server_gone_mid_stream_is_a_clear_error_not_a_hang(reset: bool):
    got = threading.Event()

    def answer(ex: Exchange) -> None:
        ex.sse()
        ex.token("Hel")
        got.wait(5)  # an RST may discard what the client has not read yet
        ex.cut(reset)

    with fake_openai(answer) as fake:
        out = ask(backend(fake.base_url, read_timeout_s=5), got=got)
    assert out.tokens == ["Hel"]
    assert out.error == where(fake) + "the connection broke mid-answer; did the server stop?"
    assert out.elapsed < 2.0


def test_a_stream_that_ends_without_a_finish_reason_is_an_error():
    with fake_openai(stream("Hello", finish=None)) as fake:
        out = ask(backend(fake.base_url))
    assert out.tokens == ["Hello"]
    assert out.error == (where(fake) + "the stream ended without a finish reason "
                         "(connection cut mid-answer?)")


def test_a_model_the_server_lacks_is_named_before_any_request():
    with fake_openai(stream("x"), serve_models("b-model", "a-model")) as fake:
        out = ask(backend(fake.base_url))
    assert out.error == where(fake) + "the server has no such model; it serves a-model, b-model"
    assert fake.posts() == []


def test_a_401_without_a_configured_key_says_to_set_one():
    with fake_openai(lambda ex: ex.json(401, {"error": {"message": "no key"}})) as fake:
        out = ask(backend(fake.base_url, api_key_env=None))
    assert auth(fake.posts()[0]) == "Bearer not-needed"
    assert out.error == where(fake) + "HTTP 401 no key; the endpoint wants an API key: set api_key_env"


def test_server_text_in_a_message_is_one_printable_line():
    with fake_openai(lambda ex: ex.reply(500, "bad\n\nthing\x1b[31m happened\r\n")) as fake:
        out = ask(backend(fake.base_url))
    assert out.error == where(fake) + "HTTP 500 bad thing [31m happened"


# -- before a run: clients made and models listed once -----------------------------------------

def moa_on() -> sf.Graph:
    g = sf.Graph("three")
    g.input("q")
    for p in ("p1", "p2", "p3"):
        g.llm(p, max_tokens=4)
    g.connect("q", ["p1", "p2", "p3"])
    g.llm("agg", max_tokens=4)
    g.connect(["p1", "p2", "p3"], "agg", sf.tokens(1))
    g.connect("agg", g.output("out"))
    return g


def test_warm_up_lists_the_models_once_before_any_request():
    with fake_openai(stream(" a", " b")) as fake:
        b = backend(fake.base_url)

        async def main() -> None:
            async with b:
                await b.warm_up([("p1", None), ("p2", None), ("p3", None)])
                # the listing, and llama.cpp's slot count beside it; nothing else
                assert [ex.path for ex in fake.seen] == ["/v1/models", "/props"]
                await b.warm_up([("p1", None)])  # done already: nothing more is sent
                assert len(fake.seen) == 2

        trio.run(main)


def props(obj: object, status: int = 200) -> Script:
    def script(ex: Exchange) -> None:
        ex.json(status, obj)
    return script


def test_a_llama_cpp_server_gets_each_node_pinned_to_a_slot():
    with fake_openai(stream(" a"), props=props({"total_slots": 2})) as fake:
        out = ask(backend(fake.base_url))
    assert out.error is None and out.tokens == [" a"]
    (post,) = fake.posts()
    assert post.body["id_slot"] == 0 and post.body["cache_prompt"] is True


@pytest.mark.parametrize("answer", [Exchange.stall, props({"total_slots": True}),
                                    props({"total_slots": 0}), props("<html>"),
                                    props({"error": "no"}, 500)],
                         ids=["stalled", "bool", "zero", "not-json-object", "status-500"])
def test_a_props_route_that_stalls_or_lies_leaves_requests_unpinned(answer: Script):
    with fake_openai(stream(" a"), props=answer) as fake:
        out = ask(backend(fake.base_url, read_timeout_s=0.2))
    assert out.error is None and out.tokens == [" a"] and out.elapsed < 1.5
    (post,) = fake.posts()
    assert "id_slot" not in post.body and "cache_prompt" not in post.body


def test_a_run_lists_the_models_once_however_many_nodes_start_at_once():
    # without warm_up and with three proposers sending at once, each used to list them
    with fake_openai(stream(" a", " b")) as fake:
        b = backend(fake.base_url)
        try:
            report = sf.run(moa_on(), "hi", backend=b)
        finally:
            trio.run(b.aclose)  # the caller's backend: the caller closes it
    assert [ex.path for ex in fake.seen].count("/v1/models") == 1
    assert report.llm_calls >= 4 and report.output == " a b"


def test_warm_up_failing_does_not_stop_the_run_from_naming_the_node():
    # the model is not served: warm_up keeps quiet, the first request fails naming its node
    with fake_openai(stream(" a"), serve_models("other")) as fake:
        b = backend(fake.base_url)
        with pytest.raises(sf.NodeError) as info:
            sf.run(moa_on(), "hi", backend=b)
        trio.run(b.aclose)
    assert info.value.node in ("p1", "p2", "p3")
    assert "no such model; it serves other" in str(info.value)


def test_a_batch_retries_a_run_the_server_cut_off_and_records_a_refusal(tmp_path):
    # the first answer to "flaky" breaks mid-stream (transient: tried again); "refused" gets
    # a 400 (not transient: recorded at once); the rest are answered
    calls: list[str] = []

    def answer(ex: Exchange) -> None:
        text = json.dumps(ex.body)
        calls.append(text)
        if "refused" in text:
            ex.json(400, {"error": {"message": "bad request"}})
            return
        ex.sse()
        ex.token(" a")
        if "flaky" in text and sum("flaky" in c for c in calls) == 1:
            ex.cut()
            return
        ex.token("", "stop")
        ex.done()

    g = sf.Graph("one")
    g.input("q")
    g.llm("p", max_tokens=4)
    g.connect("q", "p")
    g.connect("p", g.output("out"))
    out = tmp_path / "r.jsonl"
    with fake_openai(answer) as fake:
        summary = sf.run_batch(g, ["fine", "flaky", "refused"], out, base_url=fake.base_url,
                               model="m", retries=2)
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert (rows[1]["output"], rows[1]["attempts"]) == (" a", 1)
    assert (rows[2]["output"], rows[2]["attempts"], rows[2]["error"]) == (" a", 2, None)
    assert rows[3]["attempts"] == 1 and rows[3]["output"] is None
    assert rows[3]["error"].startswith(f"node 'p' failed: {fake.base_url} (model 'm'): HTTP 400")
    assert (summary.done, summary.failed, summary.retried) == (3, 1, 1)


# -- failures told to listeners (the metrics of `stairflow serve`) ------------------------------

def test_each_failed_attempt_is_told_to_the_error_listeners_by_kind(refused_url: str):
    def listened(url: str, **fields: Any) -> list[tuple[str, str]]:
        b = backend(url, **fields)
        seen: list[tuple[str, str]] = []
        b.error_listeners.append(lambda base_url, kind: seen.append((base_url, kind)))
        assert ask(b).error is not None
        return seen

    with fake_openai(_unavailable) as fake:  # retried once, then the error
        assert listened(fake.base_url, max_retries=1) == [(fake.base_url, "http_5xx")] * 2
    with fake_openai(lambda ex: ex.json(429, {"error": {"message": "slow"}})) as fake:
        assert listened(fake.base_url) == [(fake.base_url, "http_429")]
    with fake_openai(stream("Hello", finish=None)) as fake:
        assert listened(fake.base_url) == [(fake.base_url, "no_finish_reason")]
    with fake_openai(Exchange.stall) as fake:
        assert listened(fake.base_url, read_timeout_s=0.2) == [(fake.base_url, "read_timeout")]
    assert listened(refused_url, max_retries=1) == [(refused_url, "connect")] * 2


def test_requests_waiting_for_a_failed_model_listing_share_its_error(refused_url: str):
    # an unreachable server is tried (with its retry) once for every request waiting on it,
    # not once per request in turn: ten requests fail together, after one listing
    b = backend(refused_url, max_retries=1)
    seen: list[str] = []
    b.error_listeners.append(lambda base_url, kind: seen.append(kind))
    errors: list[str] = []

    async def one(i: int) -> None:
        try:
            async with b.open_stream(sf.Request(f"n{i}", Q, "", 16, 0.0)):
                pass
        except sf.BackendError as exc:
            assert (exc.transient, exc.kind) == (True, "connect")
            errors.append(str(exc))

    async def main() -> None:
        with trio.fail_after(5):
            async with b, trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)

    trio.run(main)
    assert seen == ["connect"] * 2  # one listing and its retry
    assert sorted(errors) == sorted(
        f"node 'n{i}' failed: {refused_url} (model 'm'): cannot connect (after 1 retry); is "
        "the server running?" for i in range(10))


# -- limits count tokens, not pieces --------------------------------------------------------------

def _words_per_piece(words: int, pieces: int) -> Script:
    def script(ex: Exchange) -> None:
        ex.sse()
        for i in range(pieces):
            ex.token("".join(f" w{i}.{k}" for k in range(words)))
        ex.token("", "stop")
        ex.done()
    return script


def _one_node(max_tokens: int) -> sf.Graph:
    g = sf.Graph("one")
    g.input("q")
    g.llm("a", max_tokens=max_tokens)
    g.connect("q", "a")
    g.connect("a", g.output("out"))
    return g


def test_five_words_a_piece_count_five_tokens():
    with fake_openai(_words_per_piece(5, 20)) as fake:
        out = ask(backend(fake.base_url))  # max_tokens 16
    assert len(out.tokens) == 16 and "".join(out.tokens).split() == [
        f"w{i}.{k}" for i in range(4) for k in range(5)][:16]
    assert out.finish == "length"


def test_an_upstream_that_ignores_max_tokens_is_cut_at_the_nodes_limit():
    # 10 MB: 2,000 pieces of 1,000 words, whatever max_tokens said; the connection is closed
    # at the node's 200th token, and the rest is never read
    with fake_openai(_words_per_piece(1000, 2000)) as fake:
        b = backend(fake.base_url)
        start = time.monotonic()
        try:
            report = sf.run(_one_node(200), "why?", backend=b)
        finally:
            trio.run(b.aclose)
    assert report.nodes["a"].tokens == 200 and len(report.output.split()) == 200
    assert len(report.output) < 2000 and time.monotonic() - start < 5
    (end,) = report.trace.of("request_end", "a")
    assert end.data["finish_reason"] == "length"


def test_a_server_that_keeps_to_max_tokens_ends_with_its_own_finish_reason():
    with fake_openai(stream(*[f" w{i}" for i in range(16)])) as fake:  # then "stop"
        out = ask(backend(fake.base_url))
    assert len(out.tokens) == 16 and out.finish == "stop"


def test_the_servers_running_token_count_is_the_truth():
    # vLLM's continuous usage stats: every piece carries the completion tokens so far
    def answer(ex: Exchange) -> None:
        ex.sse()
        for i in range(1, 10):
            ex.event({"id": "x", "object": "chat.completion.chunk", "created": 0,
                      "model": "m", "choices": [{"index": 0, "delta": {"content": "abcdefgh"},
                                                 "finish_reason": None}],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 4 * i,
                                "total_tokens": 3 + 4 * i}})
        ex.token("", "stop")
        ex.done()

    with fake_openai(answer) as fake:
        out = ask(backend(fake.base_url))  # max_tokens 16: four pieces of four tokens
    assert "".join(out.tokens) == "abcdefgh" * 4 and len(out.tokens) == 16
    assert out.finish == "length"


def test_a_served_answer_of_max_tokens_10_has_10_words_from_pieces_of_5():
    from stairflow._serve.app import App, Served
    from tests.serve.test_app import call

    ask_ = {"model": "one", "messages": [{"role": "user", "content": "Why?"}], "max_tokens": 10}
    with fake_openai(_words_per_piece(5, 20)) as fake:
        b = backend(fake.base_url)
        app = App({"one": Served(_one_node(512).build(), b)})

        async def main() -> tuple[Any, Any]:
            async with b:
                with trio.fail_after(5):
                    return (await call(app, "POST", "/v1/chat/completions", ask_),
                            await call(app, "POST", "/v1/chat/completions",
                                       {**ask_, "stream": True}))

        whole, streamed = trio.run(main)
    answer = whole.json()
    assert len(answer["choices"][0]["message"]["content"].split()) == 10
    assert answer["usage"]["completion_tokens"] == 10
    assert answer["choices"][0]["finish_reason"] == "length"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in streamed.events()[:-1]
                   if e["choices"])
    assert len(text.split()) == 10


def test_a_request_that_reaches_its_max_tokens_still_reads_the_usage_after_it():
    def answer(ex: Exchange) -> None:  # keeps to max_tokens 4: its finish, then its usage
        ex.sse()
        for i in range(4):
            ex.token(f" w{i}")
        ex.token("", "length")
        ex.event({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                  "choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 4,
                                           "total_tokens": 25}})
        ex.done()

    with fake_openai(answer) as fake:
        b = backend(fake.base_url)
        try:
            report = sf.run(_one_node(4), "why?", backend=b)
        finally:
            trio.run(b.aclose)
    assert report.output == " w0 w1 w2 w3" and report.prompt_tokens == 21
    (end,) = report.trace.of("request_end", "a")
    assert end.data["finish_reason"] == "length"
