"""A batch whose endpoint refuses every connection stops, unrecorded, instead of recording
each prompt's failure after its retries; one refusal among answers is recorded as any
failure. The simulator in virtual time, with a backend that refuses some prompts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

import stairflow as sf

FAST = {"latency_s": 0.5, "prefill_tps": 1024.0, "decode_tps": 8.0, "output_tokens": 6}


def one() -> sf.FrozenGraph:
    g = sf.Graph("one", sim=FAST)
    g.input("q")
    g.llm("p")
    g.connect("q", "p")
    g.connect("p", g.output("out"))
    return g.build()


class Refusing:
    """The simulator, unable to connect for prompts holding ``word`` (every prompt: '')."""

    simulated = True
    name = "refusing simulated"

    def __init__(self, word: str, kind: str = "connect", after_s: float = 0.0) -> None:
        self.inner = sf.SimBackend.for_graph(one())
        self.word, self.kind, self.after_s = word, kind, after_s
        self.asked = 0

    @asynccontextmanager
    async def open_stream(self, request: sf.Request) -> AsyncIterator[Any]:
        self.asked += 1
        if self.word in request.all_text():
            await trio.sleep(self.after_s)
            raise sf.BackendError(request.node, "http://127.0.0.1:9/v1 (model 'm'): cannot "
                                  "connect (after 2 retries); is the server running?",
                                  transient=True, kind=self.kind)
        async with self.inner.open_stream(request) as stream:
            yield stream


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_endpoint_refusing_every_connection_stops_the_batch_unrecorded(tmp_path: Path):
    out = tmp_path / "r.jsonl"
    prompts = [f"question {i}" for i in range(40)]
    down = Refusing("")
    s = sf.run_batch(one(), prompts, out, backend=down, concurrency=4, retries=1,
                     virtual_clock=True)
    assert s.stopped == ("4 prompts in a row could not reach their endpoint (each run tried 2 "
                         "times; the last: node 'p' failed: http://127.0.0.1:9/v1 (model 'm'): "
                         "cannot connect (after 2 retries); is the server running?); they are "
                         "not recorded: once the server is up, run the same command again to "
                         "resume")
    assert (s.done, s.failed, s.remaining) == (0, 0, 40)
    assert out.read_text() == ""  # nothing recorded: the rerun does them all
    assert down.asked < 4 * 2 + 4 * 2  # the first wave and not much more, not 40 x 2
    assert "stopped: 4 prompts in a row could not reach" in s.describe()
    assert "interrupted" not in s.describe()
    # the server is up: the same call does every prompt
    s = sf.run_batch(one(), prompts, out, backend="sim", concurrency=4, virtual_clock=True)
    assert (s.done, s.failed, s.stopped) == (40, 0, None)
    assert sorted(r["id"] for r in lines(out)) == list(range(1, 41))


def test_refusals_among_answers_are_recorded_as_failures_with_their_kind(tmp_path: Path):
    out = tmp_path / "r.jsonl"
    # one at a time (a limit of 3 in a row): every third prompt cannot connect, and the last
    # two, which are still held back when the batch ends
    prompts = [f"{'down' if i % 3 == 0 or i >= 38 else 'up'} {i}" for i in range(40)]
    s = sf.run_batch(one(), prompts, out, backend=Refusing("down"), concurrency=1,
                     retries=1, virtual_clock=True)
    rows = {r["id"]: r for r in lines(out)}
    assert s.stopped is None and s.done == 40 and len(rows) == 40
    failed = {i for i, r in rows.items() if r["error"] is not None}
    assert failed == {i + 1 for i in range(40) if i % 3 == 0 or i >= 38}
    assert {rows[i]["error_kind"] for i in failed} == {"connect"}
    assert {r["error_kind"] for i, r in rows.items() if i not in failed} == {None}
    assert s.failed == len(failed)


def test_a_node_error_is_recorded_with_its_kind(tmp_path: Path):
    g = sf.Graph("fn")
    g.input("q")

    async def broken(inputs: sf.Inputs) -> AsyncIterator[str]:
        raise ValueError("no good")
        yield ""  # pragma: no cover

    g.fn("f", broken)
    g.connect("q", "f")
    g.connect("f", g.output("out"))
    sf.run_batch(g, ["a"], tmp_path / "r.jsonl", virtual_clock=True)
    (row,) = lines(tmp_path / "r.jsonl")
    assert (row["error"], row["error_kind"]) == ("node 'f' failed: ValueError: no good", "node")


def test_prompts_refused_while_others_are_answered_are_recorded_not_a_stop(tmp_path: Path):
    # every fifth prompt is refused, for good; its retries make it end after the answers
    # that came meanwhile, 8 refusals together: still failures among answers, not a dead
    # endpoint (the batch used to stop there, again at every rerun)
    out = tmp_path / "r.jsonl"
    prompts = [f"{'down' if i % 5 == 0 else 'up'} {i}" for i in range(40)]
    s = sf.run_batch(one(), prompts, out, backend=Refusing("down"), concurrency=64,
                     retries=2, virtual_clock=True)
    rows = lines(out)
    assert s.stopped is None and (s.done, s.failed) == (40, 8) and len(rows) == 40
    assert sorted(r["id"] for r in rows if r["error_kind"] == "connect") == list(range(1, 41, 5))


def test_an_endpoint_gone_mid_answer_stops_the_batch_too(tmp_path: Path):
    # "broken": the connection broke mid-answer, as a server dying does to the runs in flight
    out = tmp_path / "r.jsonl"
    s = sf.run_batch(one(), [f"q {i}" for i in range(20)], out, backend=Refusing("", "broken"),
                     concurrency=4, retries=0, virtual_clock=True)
    assert s.stopped is not None and s.stopped.startswith("4 prompts in a row could not reach")
    assert out.read_text() == ""


def test_a_cancelled_batch_leaves_the_held_refusals_unwritten(tmp_path: Path):
    out = tmp_path / "r.jsonl"

    async def main() -> None:
        async with sf.open_batch(one(), [f"q {i}" for i in range(10)], out,
                                 backend=Refusing("", after_s=1.0), concurrency=1,
                                 retries=0) as batch:
            await trio.sleep(2.5)  # two refusals held (a third would stop it)
            batch.cancel()
        assert batch.interrupted and batch.stopped is None

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert out.read_text() == ""  # a rerun does them
