"""Batches through the public API (`sf.run_batch`, `sf.open_batch`) on the simulator, in
virtual time: every result written once, as a whole line; failures recorded, transient ones
retried; resumable after a cancel; the concurrency bound kept."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import stairflow as sf

FAST = {"latency_s": 0.5, "prefill_tps": 1024.0, "decode_tps": 8.0, "output_tokens": 12}
PROMPTS = ["Why is the sky blue?", {"id": "tides", "prompt": "Explain tides."},
           {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Name a tree."}]}]


def chain() -> sf.FrozenGraph:
    g = sf.Graph("chain2", sim=FAST)
    g.input("q")
    g.llm("a")
    g.llm("b")
    g.connect("q", "a")
    g.connect("a", "b", sf.tokens(4))
    g.connect("b", g.output("out"))
    return g.build()


def lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")  # whole lines only
    return [json.loads(line) for line in text.splitlines()]


class Failing:
    """The simulator, failing every request whose prompt holds ``word``: transiently for the
    first ``transient`` runs that reach it, then for good if ``always``."""

    simulated = True
    name = "failing simulated"

    def __init__(self, graph: sf.FrozenGraph, word: str, transient: int = 0,
                 always: bool = False) -> None:
        self.inner = sf.SimBackend.for_graph(graph)
        self.word, self.transient, self.always = word, transient, always
        self.runs_failed: set[int] = set()
        self.open: Counter[int] = Counter()  # requests streaming now, per run
        self.most_runs = 0  # the most runs with a request streaming at once

    @asynccontextmanager
    async def open_stream(self, request: sf.Request) -> AsyncIterator[Any]:
        if self.word in request.all_text():
            if len(self.runs_failed - {request.run_id}) < self.transient:
                self.runs_failed.add(request.run_id)
                raise sf.BackendError(request.node, "connection broke", transient=True)
            if self.always:
                raise sf.BackendError(request.node, "HTTP 400 bad request")
        self.open[request.run_id] += 1
        self.most_runs = max(self.most_runs, len(+self.open))
        try:
            async with self.inner.open_stream(request) as stream:
                yield stream
        finally:
            self.open[request.run_id] -= 1


def test_every_prompt_is_written_once_with_its_figures(tmp_path: Path):
    out = tmp_path / "r.jsonl"
    s = sf.run_batch(chain(), PROMPTS, out, virtual_clock=True)
    got = lines(out)
    assert sorted(json.dumps(r["id"]) for r in got) == ['"tides"', "1", "3"]  # ids: line numbers
    for r in got:
        assert r["mode"] == "staircase" and r["graph"] == "chain2" and r["error"] is None
        assert r["simulated"] is True and r["output"] and r["attempts"] == 1
        assert 0 < r["ttft_s"] < r["total_s"] and r["llm_calls"] >= 2
        assert r["output_tokens"] == 12 and r["prompt_tokens"] > 0
    assert (s.done, s.failed, s.skipped, s.remaining, s.total) == (3, 0, 0, 0, 3)
    assert s.virtual and s.ttft_p50_s == sorted(r["ttft_s"] for r in got)[1]


def test_a_conversation_reaches_the_graph_with_its_earlier_turns(tmp_path: Path):
    g = sf.Graph("echo")
    g.input("q")

    async def echo(inputs: sf.Inputs) -> AsyncIterator[str]:
        yield inputs.query

    g.fn("e", echo)
    g.connect("q", "e")
    g.connect("e", g.output("out"))
    sf.run_batch(g, PROMPTS[2:], tmp_path / "r.jsonl", virtual_clock=True)
    (r,) = lines(tmp_path / "r.jsonl")
    assert r["output"] == "system: Be brief.\n\nName a tree."


def test_a_rerun_skips_what_the_file_holds_and_runs_the_rest(tmp_path: Path):
    out = tmp_path / "r.jsonl"
    sf.run_batch(chain(), PROMPTS[:2], out, virtual_clock=True)
    before = out.read_text()
    s = sf.run_batch(chain(), PROMPTS, out, virtual_clock=True)
    assert out.read_text().startswith(before)  # appended, never rewritten
    assert (s.done, s.skipped, s.total) == (1, 2, 3)
    assert Counter(json.dumps(r["id"]) for r in lines(out)) == {"1": 1, '"tides"': 1, "3": 1}


def test_both_modes_give_two_lines_per_prompt_and_staircase_answers_first(tmp_path: Path):
    out = tmp_path / "r.jsonl"
    s = sf.run_batch(chain(), PROMPTS, out, mode="both", virtual_clock=True)
    got = lines(out)
    assert s.total == s.done == 6 and len(got) == 6
    by = {(json.dumps(r["id"]), r["mode"]): r for r in got}
    for i in ("1", '"tides"', "3"):
        assert by[(i, "staircase")]["ttft_s"] < by[(i, "normal")]["ttft_s"]


def test_a_failing_run_is_recorded_and_the_batch_goes_on(tmp_path: Path):
    g = chain()
    backend = Failing(g, "tides", always=True)
    out = tmp_path / "r.jsonl"
    s = sf.run_batch(g, PROMPTS, out, backend=backend, virtual_clock=True)
    got = {json.dumps(r["id"]): r for r in lines(out)}
    bad = got['"tides"']
    assert bad["error"] == "node 'a' failed: HTTP 400 bad request" and bad["output"] is None
    assert bad["attempts"] == 1  # not transient: not retried
    assert got["1"]["error"] is None and got["3"]["error"] is None
    assert (s.done, s.failed, s.retried) == (3, 1, 0)


def test_a_transient_error_is_retried_up_to_the_declared_count(tmp_path: Path):
    g = chain()
    out = tmp_path / "r.jsonl"
    s = sf.run_batch(g, PROMPTS, out, backend=Failing(g, "tides", transient=2), retries=2,
                     virtual_clock=True)
    (r,) = [r for r in lines(out) if r["id"] == "tides"]
    assert r["error"] is None and r["attempts"] == 3 and s.retried == 2
    out2 = tmp_path / "r2.jsonl"
    s = sf.run_batch(g, PROMPTS, out2, backend=Failing(g, "tides", transient=2), retries=1,
                     virtual_clock=True)
    (r,) = [r for r in lines(out2) if r["id"] == "tides"]
    assert r["error"] == "node 'a' failed: connection broke" and r["attempts"] == 2
    assert (s.failed, s.retried) == (1, 1)


def test_retry_failed_runs_the_recorded_failures_again_and_keeps_the_rest(tmp_path: Path):
    g = chain()
    out = tmp_path / "r.jsonl"
    sf.run_batch(g, PROMPTS, out, backend=Failing(g, "tides", always=True), virtual_clock=True)
    s = sf.run_batch(g, PROMPTS, out, virtual_clock=True)
    assert (s.done, s.skipped) == (0, 3)  # a failure is a result: a rerun skips it
    kept = [r for r in lines(out) if r["error"] is None]
    s = sf.run_batch(g, PROMPTS, out, retry_failed=True, virtual_clock=True)
    assert (s.done, s.failed, s.skipped) == (1, 0, 2)
    got = lines(out)
    assert got[:2] == kept and len(got) == 3 and all(r["error"] is None for r in got)


def test_runs_in_flight_never_exceed_the_concurrency_and_reach_it(tmp_path: Path):
    g = chain()
    prompts = [f"Question {i}?" for i in range(40)]
    for concurrency in (1, 7):
        backend = Failing(g, "never")
        sf.run_batch(g, prompts, tmp_path / f"r{concurrency}.jsonl", backend=backend,
                     concurrency=concurrency, virtual_clock=True)
        assert backend.most_runs == concurrency


def test_a_cancelled_batch_keeps_whole_lines_and_a_rerun_finishes_it(tmp_path: Path):
    g = chain()
    out = tmp_path / "r.jsonl"
    prompts = [f"Question {i}?" for i in range(30)]

    async def main() -> sf.BatchSummary:
        def each(_: Any) -> None:
            if batch.done == 5:
                batch.cancel()

        async with sf.open_batch(g, prompts, out, backend="sim", concurrency=4,
                                 on_result=each) as batch:
            pass
        return batch.summary()

    s = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # runs that ended at the same instant as the fifth are written too: none is lost
    kept = lines(out)
    assert s.interrupted and 5 <= s.done < 30 and s.remaining == 30 - s.done == 30 - len(kept)
    assert all(r["error"] is None and r["output_tokens"] == 12 for r in kept)
    s = sf.run_batch(g, prompts, out, virtual_clock=True)
    assert (s.done, s.skipped) == (30 - len(kept), len(kept))
    assert sorted(r["id"] for r in lines(out)) == list(range(1, 31))


def test_a_torn_last_line_is_cut_off_and_its_prompt_runs_again(tmp_path: Path):
    out = tmp_path / "r.jsonl"
    sf.run_batch(chain(), PROMPTS[:2], out, virtual_clock=True)
    whole = out.read_text()
    out.write_text(whole + '{"id": 3, "mode": "stairc')  # a kill in the middle of a write
    s = sf.run_batch(chain(), PROMPTS, out, virtual_clock=True)
    assert (s.done, s.skipped) == (1, 2)
    assert out.read_text().startswith(whole) and len(lines(out)) == 3


@pytest.mark.parametrize(("content", "message"), [
    ('"a"\n{"prompt": "b"\n', "p.jsonl:2: not JSON"),
    ('"a"\n{"id": 1, "prompt": "b"}\n', "p.jsonl:2: id 1 repeats line 1's"),
    ('{"prompt": "a", "text": 1}\n', "p.jsonl:1: unknown field 'text'"),
    ('{"prompt": "a", "messages": []}\n', 'p.jsonl:1: give either "prompt" or "messages"'),
    ('{"messages": [{"role": "assistant", "content": "x"}]}\n',
     "p.jsonl:1: 'messages.0': the last message must be the user's"),
    ('  \n', "p.jsonl: no prompts"),
    ('7\n', "p.jsonl:1: a prompt is a JSON string or an object"),
    ('{"id": ' + "1" * 5000 + ', "prompt": "x"}\n', "p.jsonl:1: not JSON"),
    ("[" * 100_000 + "]" * 100_000 + "\n", "p.jsonl:1: not JSON (nested too deep)"),
    ('{"id": "\\ud800", "prompt": "x"}\n', "p.jsonl:1: the id holds an unpaired surrogate"),
    ('"a"\n{"id": 1, "prompt": "b"}\n', "id 1 repeats line 1's (its default id, the line number)"),
])
def test_bad_prompts_are_refused_before_any_run_naming_the_line(tmp_path: Path, content: str,
                                                                message: str):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    out = tmp_path / "r.jsonl"
    with pytest.raises(sf.ConfigError) as e:
        sf.run_batch(chain(), p, out, virtual_clock=True)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()  # nothing is created before the prompts are checked


def test_a_results_file_of_another_graph_or_not_of_results_is_refused(tmp_path: Path):
    out = tmp_path / "r.jsonl"
    sf.run_batch(chain(), PROMPTS[:1], out, virtual_clock=True)
    with pytest.raises(sf.ConfigError, match=r"r.jsonl:1: a result of graph 'chain2', not "
                                             r"'moa'; write this batch to another file"):
        sf.run_batch(sf.resolve_graph("moa"), PROMPTS, out, virtual_clock=True)
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    with pytest.raises(sf.ConfigError, match=r"notes\.txt:1: not a stairflow batch result"):
        sf.run_batch(chain(), PROMPTS, other, virtual_clock=True)
    assert other.read_text() == "hello\n"


@pytest.mark.parametrize(("kw", "message"), [
    ({"mode": "fast"}, "mode='fast'; use one of staircase, normal, both"),
    ({"concurrency": 0}, "concurrency=0; use a whole number of runs >= 1"),
    ({"retries": -1}, "retries=-1; use a whole number >= 0"),
])
def test_bad_arguments_are_one_line_errors(tmp_path: Path, kw: dict[str, Any], message: str):
    with pytest.raises(sf.ConfigError, match=message):
        sf.run_batch(chain(), PROMPTS, tmp_path / "r.jsonl", virtual_clock=True, **kw)


def test_a_graph_name_instead_of_a_graph_says_how_to_load_it(tmp_path: Path):
    with pytest.raises(sf.ConfigError, match=r"sf.resolve_graph\('moa'\)"):
        sf.run_batch("moa", PROMPTS, tmp_path / "r.jsonl", virtual_clock=True)  # type: ignore[arg-type]


def test_a_file_that_is_not_results_is_refused_and_left_byte_for_byte(tmp_path: Path):
    for content in (b"my notes\nimportant last line", b'{"important": true}',
                    b'{"id": 1, "mode": "staircase", "graph": "chain2"}\n\xff\xfe\n'):
        other = tmp_path / "other.txt"
        other.write_bytes(content)
        with pytest.raises(sf.ConfigError, match="not a stairflow batch result"):
            sf.run_batch(chain(), PROMPTS, other, virtual_clock=True)
        assert other.read_bytes() == content


def test_a_results_file_may_have_blank_lines_and_crlf_and_a_prompts_file_a_bom(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'\xef\xbb\xbf"first"\r\n{"id": "a",\r"prompt": "x"}\n')
    out = tmp_path / "r.jsonl"
    sf.run_batch(chain(), p, out, virtual_clock=True)
    out.write_text(out.read_text().replace("\n", "\r\n") + "\n")
    s = sf.run_batch(chain(), p, out, virtual_clock=True)
    assert (s.done, s.skipped) == (0, 2)


def test_retry_failed_changes_nothing_until_the_prompts_pass_and_keeps_other_modes(
        tmp_path: Path):
    g = chain()
    out = tmp_path / "r.jsonl"
    sf.run_batch(g, PROMPTS, out, mode="both", backend=Failing(g, "tides", always=True),
                 virtual_clock=True)
    before = out.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"a"\n{"prompt": \n')
    with pytest.raises(sf.ConfigError, match=r"bad\.jsonl:2: not JSON"):
        sf.run_batch(g, bad, out, retry_failed=True, virtual_clock=True)
    with pytest.raises(sf.ConfigError, match="a result of graph 'chain2', not 'moa'"):
        sf.run_batch(sf.resolve_graph("moa"), PROMPTS, out, retry_failed=True,
                     virtual_clock=True)
    assert out.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
    out.chmod(0o600)
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    s = sf.run_batch(g, PROMPTS, link, mode="staircase", retry_failed=True,
                     virtual_clock=True)
    assert (s.done, s.failed) == (1, 0)  # tides, staircase: run again
    got = {(r["id"], r["mode"]): r["error"] for r in lines(out)}
    assert len(got) == 6 and got[("tides", "normal")] is not None  # not this run's: kept
    assert got[("tides", "staircase")] is None
    assert link.is_symlink() and (out.stat().st_mode & 0o777) == 0o600


def test_a_second_batch_on_the_same_results_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "r.jsonl"

    async def main() -> None:
        async with sf.open_batch(chain(), PROMPTS, out, backend="sim") as batch:
            with pytest.raises(sf.ConfigError, match="another batch is writing these results"):
                async with sf.open_batch(chain(), PROMPTS, out, backend="sim"):
                    pass
            assert batch.done == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(lines(out)) == 3


def test_no_more_runs_at_once_than_prompts_to_run(tmp_path: Path):
    s = sf.run_batch(chain(), PROMPTS, tmp_path / "r.jsonl", concurrency=10**9,
                     virtual_clock=True)
    assert s.concurrency == 3


@pytest.mark.parametrize(("prompts", "results", "message"), [
    ({"id": "x", "prompt": "Why?"}, "r.jsonl", "prompts=dict; give a JSON-lines file's path"),
    (None, "r.jsonl", "prompts=NoneType"),
    (b"Why?", "r.jsonl", "prompts=bytes"),
    ("Why is the sky blue?", "r.jsonl", "no such file; to run one prompt, give a list"),
    (["Why?"], None, "results=None; give the path"),
    (["Why?"], "/dev/null", "/dev/null: not a regular file"),
])
def test_wrong_kinds_of_arguments_are_one_line_errors(tmp_path: Path, monkeypatch,
                                                     prompts: Any, results: Any, message: str):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(sf.ConfigError, match=re.escape(message)):
        sf.run_batch(chain(), prompts, results, virtual_clock=True)


def test_run_batch_inside_trio_points_to_open_batch(tmp_path: Path):
    async def main() -> None:
        sf.run_batch(chain(), PROMPTS, tmp_path / "r.jsonl", virtual_clock=True)

    with pytest.raises(sf.ConfigError, match=r"use `async with sf.open_batch"):
        trio.run(main)
