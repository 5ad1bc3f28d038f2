"""Two `stairflow serve` replicas behind a real nginx, on loopback, with deploy/nginx.conf.

nginx runs the shipped file itself; the test only replaces its three addresses (the listen
address and the two replicas') with free ports, and runs it from a prefix in the test's own
directory (its pid, logs and temp directories), in the foreground. The replicas serve a one-node
graph on the simulated backend in real time: an answer of 40 tokens, the first after 0.1 s, the
rest at 40 a second, so about 1.1 s in all.

- Streamed answers pass through unbuffered: their first token arrives at most 5 ms later than
  straight from a replica (medians), and their tokens arrive spread out as they do directly.
- One replica is stopped with SIGTERM under load, streamed and whole answers through nginx,
  clients retrying on 503 and on a ``server_shutdown`` error event as a user's client would.
  With a grace period longer than an answer, its answers in flight finish, it exits within the
  grace period, later requests go to the other replica, and no request fails (none even needs
  its client's retry: nginx moves the refused ones on). With a grace period shorter than an
  answer, the streams it cuts end with a ``server_shutdown`` event and their clients retry
  them; the whole answers it cuts get a 503 before their first byte, and nginx itself sends
  them on to the other replica; no request fails either.

Break it on purpose: ``proxy_buffering on; proxy_ignore_headers X-Accel-Buffering; gzip on;
gzip_types text/event-stream;`` in the file makes the first test fail (each answer arrives in
one piece at its end); without ``non_idempotent`` the last one fails whenever a whole answer
was cut (its 503 reaches the client).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
CONF = ROOT / "deploy" / "nginx.conf"
NGINX = "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else shutil.which("nginx")

# one llm node: the first token 0.1 s after the request, then 40 tokens a second, 40 in all
GRAPH = """
name = "one"

[sim]
latency_s = 0.1
prefill_tps = 100000
decode_tps = 40
output_tokens = 40

[nodes.q]
kind = "input"

[nodes.a]
kind = "llm"

[nodes.answer]
kind = "output"

[[edges]]
from = "q"
to = "a"

[[edges]]
from = "a"
to = "answer"
"""
TOKENS = 40
ASK = [{"role": "user", "content": "Why is the sky blue?"}]

needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (/usr/sbin/nginx: the README's test command "
                          "installs it with apt-get install nginx)")


def _kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, wait: float = 15) -> None:
    """Stop ``proc`` and everything in its process group (it was started in its own session)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left (nginx's workers)
    proc.wait(10)


@dataclass
class Replica:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.addr}/health", timeout=5) as r:
            data: dict[str, Any] = json.load(r)
            return data

    def refuses(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return True
        return False


@dataclass
class Cluster:
    replicas: list[Replica]
    url: str  # nginx's /v1
    prefix: Path
    nginx: subprocess.Popen[bytes]

    def served_by(self) -> dict[str, list[tuple[str, str]]]:
        """Each request id in nginx's access log: the replicas tried and what each answered
        (the last one's answer is the client's)."""
        seen = {}
        for line in (self.prefix / "logs" / "access.log").read_text().splitlines():
            match = re.search(r" id=(\S+) upstream=\[([^]]*)\] upstream_status=\[([^]]*)\]",
                              line)
            assert match, line
            addrs, statuses = (g.split(",") for g in match.group(2, 3))
            seen[match.group(1)] = [(a.strip(), st.strip())
                                    for a, st in zip(addrs, statuses, strict=True)]
        return seen


def _start_replicas(graph: Path, tmp_path: Path, grace: float, stack: ExitStack) -> list[Replica]:
    procs = []
    for name in ("a", "b"):  # both start at once; each prints its address once it listens
        log = tmp_path / f"replica-{name}.log"
        with log.open("w") as err:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "stairflow", "serve", str(graph), "--backend", "sim",
                 "--port", "0", "--shutdown-grace", str(grace)],
                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        stack.callback(_kill_group, proc)
        procs.append((proc, log))
    replicas = []
    for proc, log in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.stdout.close()  # nothing more is printed there
        match = re.search(r" at http://127\.0\.0\.1:(\d+)/v1", line)
        assert match, f"{line!r} {log.read_text()}"
        replicas.append(Replica(proc, int(match.group(1)), log))
    return replicas


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_nginx(replicas: list[Replica], tmp_path: Path, stack: ExitStack) -> Cluster:
    port = _free_port()
    text = CONF.read_text()
    for old, new in (("listen 127.0.0.1:8000 ", f"listen 127.0.0.1:{port} "),
                     ("server 127.0.0.1:8001 ", f"server {replicas[0].addr} "),
                     ("server 127.0.0.1:8002 ", f"server {replicas[1].addr} ")):
        assert text.count(old) == 1, f"deploy/nginx.conf has no '{old.strip()}' line"
        text = text.replace(old, new)
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(text)
    assert NGINX is not None
    with (tmp_path / "nginx.stderr").open("wb") as err:
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-g", "daemon off;"], stdout=err, stderr=err,
                                start_new_session=True)
    stack.callback(_kill_group, proc)
    cluster = Cluster(replicas, f"http://127.0.0.1:{port}/v1", prefix, proc)
    deadline = time.monotonic() + 30
    while True:  # another process: poll until it answers through to a replica
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited: {(tmp_path / 'nginx.stderr').read_text()}"
                                 f"{(prefix / 'logs' / 'error.log').read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return cluster
        except OSError:
            pass
        assert time.monotonic() < deadline, "nginx did not answer in 30 s"
        time.sleep(0.02)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[[float], Cluster]]:
    """``cluster(grace)``: two replicas with that --shutdown-grace and nginx before them; all
    stopped when the test ends, however it ends."""
    graph = tmp_path / "one.toml"
    graph.write_text(GRAPH)
    with ExitStack() as stack:

        def make(grace: float) -> Cluster:
            return _start_nginx(_start_replicas(graph, tmp_path, grace, stack), tmp_path, stack)

        yield make


def _stream_times(client: openai.OpenAI, max_tokens: int) -> list[float]:
    """When each piece of a streamed answer's text arrived, from the request's start."""
    start = time.perf_counter()
    times = []
    with client.chat.completions.create(model="one", messages=ASK, stream=True,  # type: ignore[arg-type]
                                        max_tokens=max_tokens) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                times.append(time.perf_counter() - start)
    assert len(times) == max_tokens  # the simulated backend streams a token at a time
    return times


@needs_nginx
def test_streams_pass_through_nginx_unbuffered(cluster: Callable[[float], Cluster]) -> None:
    c = cluster(10)
    direct = openai.OpenAI(base_url=f"http://{c.replicas[0].addr}/v1", api_key="unused",
                           max_retries=0)
    balanced = openai.OpenAI(base_url=c.url, api_key="unused", max_retries=0)
    runs: dict[str, list[list[float]]] = {"direct": [], "nginx": []}
    try:
        for n in range(14):  # interleaved, so both see the same machine; 2 to warm up
            for name, client in (("direct", direct), ("nginx", balanced)):
                times = _stream_times(client, max_tokens=8)  # about 0.3 s
                if n >= 2:
                    runs[name].append(times)
    finally:
        direct.close()
        balanced.close()
    ttft = {name: statistics.median(t[0] for t in r) for name, r in runs.items()}
    # the time from the first token to the last: the answer arrives spread out as it is
    # written (0.175 s for 8 tokens), not all at once at the end
    spread = {name: statistics.median(t[-1] - t[0] for t in r) for name, r in runs.items()}
    print(f"TTFT direct {1000 * ttft['direct']:.1f} ms, through nginx "
          f"{1000 * ttft['nginx']:.1f} ms; first to last token {1000 * spread['direct']:.0f} / "
          f"{1000 * spread['nginx']:.0f} ms")
    assert spread["direct"] > 0.1
    assert spread["nginx"] > 0.75 * spread["direct"]
    assert ttft["nginx"] - ttft["direct"] <= 0.005
    # /metrics is for loopback clients, and through nginx every client is one: not passed on
    with urllib.request.urlopen(f"http://{c.replicas[0].addr}/metrics", timeout=5) as r:
        assert b"stairflow_requests_total" in r.read()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(c.url.removesuffix("/v1") + "/metrics", timeout=5)
    assert refused.value.code == 404 and b"scrape /metrics on each replica" in refused.value.read()


@dataclass
class Attempt:
    id: str
    start: float
    end: float = 0.0
    outcome: str = ""  # "ok", "retry: why" or "failed: why"


@dataclass
class Request:
    stream: bool
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].outcome == "ok"


class Clients:
    """Client threads sending requests through nginx until stopped, each retrying a request
    on 503 or a ``server_shutdown`` error (a replica going away), as a user's client would;
    any other error fails the request."""

    def __init__(self, url: str, streams: int, wholes: int) -> None:
        self.client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0,
                                    timeout=30)
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(f"c{i}", i < streams))
                        for i in range(streams + wholes)]

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(60)
        self.client.close()

    def attempts(self) -> list[Attempt]:
        with self.lock:
            return [a for r in self.requests for a in r.attempts]

    def _loop(self, name: str, stream: bool) -> None:
        n = 0
        while not self.stopping.is_set():
            request = Request(stream)
            with self.lock:
                self.requests.append(request)
            for k in range(5):
                attempt = Attempt(f"{name}-{n}-{k}", time.monotonic())
                request.attempts.append(attempt)
                try:
                    attempt.outcome = self._ask(attempt.id, stream)
                except Exception as exc:  # recorded: the test reports it
                    attempt.outcome = f"failed: {exc!r}"
                attempt.end = time.monotonic()
                if not attempt.outcome.startswith("retry"):
                    break
                time.sleep(0.05)  # the client's back-off before it retries
            n += 1

    def _ask(self, rid: str, stream: bool) -> str:
        headers = {"X-Request-Id": rid}
        try:
            if stream:
                text, finish, tokens = "", None, None
                with self.client.chat.completions.create(
                        model="one", messages=ASK, stream=True,  # type: ignore[arg-type]
                        stream_options={"include_usage": True}, extra_headers=headers) as s:
                    for chunk in s:
                        if chunk.choices:
                            text += chunk.choices[0].delta.content or ""
                            finish = chunk.choices[0].finish_reason or finish
                        if chunk.usage is not None:
                            tokens = chunk.usage.completion_tokens
            else:
                whole = self.client.chat.completions.create(
                    model="one", messages=ASK, extra_headers=headers)  # type: ignore[arg-type]
                text = whole.choices[0].message.content or ""
                finish = whole.choices[0].finish_reason
                tokens = whole.usage.completion_tokens if whole.usage else None
        except openai.APIStatusError as exc:
            if exc.status_code == 503:
                return f"retry: 503 {exc.code}"
            raise
        except openai.APIError as exc:  # an error event in a stream
            if exc.code == "server_shutdown":
                return "retry: server_shutdown"
            raise
        if finish != "stop" or tokens != TOKENS or not text:
            return f"failed: a short answer ({finish}, {tokens} tokens)"
        return "ok"


def _poll(what: str, check: Callable[[], bool], within: float) -> float:
    """Wait until ``check()`` (another process's state); the time it first held."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within:g} s: {what}"
        time.sleep(0.01)
    return time.monotonic()


def _sigterm_under_load(c: Cluster, clients: Clients, trigger: Callable[[], bool],
                        grace: float) -> tuple[float, float, float]:
    """SIGTERM the first replica once ``trigger()`` holds, under the clients' load; wait until
    it refuses connections and exits, then until the clients have done a round of requests
    after that. The times of the signal, of the refusal and of the exit."""
    stopped = c.replicas[0]
    _poll("the clients' requests keep both replicas busy",
          lambda: all(r.health()["runs_in_flight"] >= 1 for r in c.replicas), 30)
    _poll("the trigger", trigger, 30)
    signalled = time.monotonic()
    stopped.proc.send_signal(signal.SIGTERM)
    closed = _poll("the stopped replica refuses connections", stopped.refuses, 10)
    stopped.proc.wait(grace + 30)
    exited = time.monotonic()
    assert stopped.proc.returncode == 0, stopped.log.read_text()[-2000:]
    later = len(clients.threads) * 2
    _poll(f"{later} requests begun after the replica closed have ended",
          lambda: sum(a.start > closed + 0.5 and a.end > 0
                      for a in clients.attempts()) >= later, 30)
    return signalled, closed, exited


def _no_request_failed(clients: Clients) -> None:
    failed = [r for r in clients.requests if r.attempts and r.attempts[-1].end and not r.ok]
    assert not failed, failed
    assert sum(r.ok for r in clients.requests) >= 2 * len(clients.threads)


@needs_nginx
def test_a_replica_stopped_under_load_finishes_its_answers_and_no_request_fails(
        cluster: Callable[[float], Cluster]) -> None:
    grace = 10.0  # longer than an answer (1.1 s)
    c = cluster(grace)
    stopped, other = c.replicas
    # 4 streaming clients and 2 asking for whole answers: once 3 runs are in flight on the
    # replica to stop, at least one of them is a stream
    with Clients(c.url, streams=4, wholes=2) as clients:
        signalled, closed, exited = _sigterm_under_load(
            c, clients, lambda: stopped.health()["runs_in_flight"] >= 3, grace)
    served = c.served_by()
    attempts = [a for r in clients.requests for a in r.attempts if a.end]
    kind = {a.id: r.stream for r in clients.requests for a in r.attempts}
    print(f"exit {exited - signalled:.2f} s after SIGTERM, refusing after "
          f"{1000 * (closed - signalled):.0f} ms; {len(attempts)} requests, "
          f"{sum(len(served[a.id]) > 1 for a in attempts)} moved on by nginx to the other "
          "replica")
    _no_request_failed(clients)
    # the answers the replica had in flight when it was told to stop: all finished, whole
    in_flight = [a for a in attempts if served[a.id][-1][0] == stopped.addr
                 and a.start < signalled < a.end]
    assert len(in_flight) >= 3
    assert any(kind[a.id] for a in in_flight)  # streams among them
    assert all(a.outcome == "ok" for a in in_flight), in_flight
    assert not [a for a in attempts if a.outcome.startswith("retry")]  # none had to be retried
    # it stopped once they had (Hypercorn's graceful_timeout is --shutdown-grace)
    assert exited - signalled < grace
    # the requests that came after it stopped taking connections went to the other replica
    later = [a for a in attempts if a.start > closed + 0.5]
    assert len(later) >= 2 * len(clients.threads)
    assert all(served[a.id][-1][0] == other.addr for a in later)


@needs_nginx
def test_answers_cut_at_the_end_of_the_grace_period_are_retried_and_no_request_fails(
        cluster: Callable[[float], Cluster]) -> None:
    grace = 0.2  # shorter than an answer (1.1 s): what is left then is cut
    c = cluster(grace)
    stopped, other = c.replicas
    last: list[int] = []

    def a_run_just_began() -> bool:
        """A run has begun on the replica since the last look: it has about a second to go,
        more than the grace period."""
        now = int(stopped.health()["runs_in_flight"])
        began = bool(last) and now > last[-1]
        last.append(now)
        return began

    with Clients(c.url, streams=4, wholes=2) as clients:
        signalled, _, exited = _sigterm_under_load(c, clients, a_run_just_began, grace)
    served = c.served_by()
    attempts = [a for r in clients.requests for a in r.attempts if a.end]
    # a stream cut after its answer began ends with a server_shutdown error event: its client
    # retries it, and the retry goes to the other replica
    streams_cut = [a for a in attempts if a.outcome == "retry: server_shutdown"]
    assert all(served[a.id][-1] == (stopped.addr, "200") for a in streams_cut), \
        [(a, served[a.id]) for a in streams_cut]
    # a whole answer cut is a 503 server_shutdown before any byte of it: nginx sends the
    # request to the other replica itself (http_503 in proxy_next_upstream)
    wholes_cut = [a for a in attempts if served[a.id][0] == (stopped.addr, "503")]
    assert all(served[a.id][-1] == (other.addr, "200") and a.outcome == "ok"
               for a in wholes_cut), [(a, served[a.id]) for a in wholes_cut]
    print(f"exit {exited - signalled:.2f} s after SIGTERM; {len(streams_cut)} streams cut and "
          f"retried by their clients, {len(wholes_cut)} whole answers cut and retried by nginx")
    assert streams_cut or wholes_cut  # the run that had just begun was cut
    _no_request_failed(clients)
    retried = [r for r in clients.requests if len(r.attempts) > 1]
    assert all(served[r.attempts[-1].id][-1][0] == other.addr for r in retried)
    assert exited - signalled < grace + 3  # the grace period, then the process's own teardown
