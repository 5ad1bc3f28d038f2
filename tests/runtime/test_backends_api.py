"""Choosing a backend from Python: the same resolution as the command line, user-written
backends, redaction of secrets, and what a run records when it is cut off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

import stairflow as sf
from stairflow._backends.select import plan_endpoints
from stairflow.testing import run_virtual


def mixed_graph() -> sf.FrozenGraph:
    g = sf.Graph("mixed")
    g.connect(g.input(), [
        g.llm("far", base_url="https://b.example/v1", model="big", api_key_env="B_KEY",
              continuation="chat-restate"),
        g.llm("near", model="small"),
        g.llm("plain"),
    ])
    g.connect(["far", "near", "plain"], g.llm("agg"))
    g.connect("agg", g.output())
    return g.build()


def test_a_node_that_names_its_endpoint_uses_it_and_the_others_use_the_default(monkeypatch):
    monkeypatch.setenv("B_KEY", "k")
    monkeypatch.setenv("A_KEY", "k")
    plan = {p.node: p for p in plan_endpoints(
        mixed_graph(), "auto",
        {"base_url": "http://a:8000/v1", "model": "dflt", "api_key_env": "A_KEY"})}
    far = plan["far"]
    assert (far.base_url, far.model, far.api_key_env, far.continuation) == (
        "https://b.example/v1", "big", "B_KEY", "chat-restate")
    assert (plan["near"].base_url, plan["near"].model) == ("http://a:8000/v1", "small")
    assert (plan["plain"].base_url, plan["plain"].model, plan["plain"].api_key_env) == (
        "http://a:8000/v1", "dflt", "A_KEY")
    assert plan["agg"].continuation == "chat-prefix"


def test_without_a_default_endpoint_the_others_go_to_the_local_model(monkeypatch):
    monkeypatch.setenv("B_KEY", "k")
    plan = {p.node: p for p in plan_endpoints(mixed_graph(), "auto", {})}
    assert plan["far"].base_url == "https://b.example/v1"
    local = plan["plain"]
    assert (local.base_url, local.model, local.continuation, local.prompt_format) == (
        "<local model>", "gemma-3-270m", "completions", "document")
    with pytest.raises(sf.ConfigError, match="node 'near' has no endpoint"):
        plan_endpoints(mixed_graph(), "openai", {})
    with pytest.raises(sf.ConfigError, match="node 'plain' has no model"):
        plan_endpoints(mixed_graph(), "openai", {"base_url": "http://a/v1"})


def test_sf_run_without_a_backend_does_not_simulate(monkeypatch, tmp_path):
    # the plain call resolves like the CLI: here the local model, which is "missing"
    monkeypatch.setenv("STAIRFLOW_LLAMA_SERVER", str(tmp_path / "nope"))
    g = sf.Graph("g")
    g.connect(g.input(), g.llm("p"))
    g.connect("p", g.output())
    with pytest.raises(sf.ConfigError, match=r"STAIRFLOW_LLAMA_SERVER=.* does not exist"):
        sf.run(g, "hi")
    with pytest.raises(sf.ConfigError, match="the virtual clock needs the simulated backend"):
        sf.run(g, "hi", backend="local", virtual_clock=True)
    assert sf.run(g, "hi", backend="sim", virtual_clock=True).simulated


def test_python_api_errors_are_config_errors():
    g = sf.Graph("g")
    g.connect(g.input(), g.llm("p"))
    g.connect("p", g.output())
    with pytest.raises(sf.ConfigError, match=r"the message must be a str .*got int"):
        sf.run(g, 42, virtual_clock=True)  # type: ignore[arg-type]
    with pytest.raises(sf.ConfigError, match="is not a backend: pass 'auto'"):
        sf.run(g, "hi", backend=object())  # type: ignore[arg-type]
    with pytest.raises(sf.ConfigError, match="unknown backend 'gpt'"):
        sf.run(g, "hi", backend="gpt")  # type: ignore[arg-type]
    with pytest.raises(sf.ConfigError, match="does not apply to the simulated backend"):
        sf.run(g, "hi", backend="sim", base_url="http://x/v1")

    async def in_virtual_time() -> None:
        async with sf.open_run(g, "hi"):
            pass

    with pytest.raises(sf.ConfigError, match="needs the simulated backend"):
        trio.run(in_virtual_time, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_what_if_backend_keeps_the_graphs_timing():
    moa = sf.resolve_graph("moa")
    normal = run_virtual(moa, None, mode="normal")
    same = sf.run(moa, mode="normal", virtual_clock=True,
                  backend=sf.SimBackend(nodes={"p2": {"seed": 2}}))
    assert same.ttft_s == normal.ttft_s
    slower = sf.run(moa, mode="normal", virtual_clock=True,
                    backend=sf.SimBackend(nodes={"p3": {"decode_tps": 30}}))
    assert slower.ttft_s == pytest.approx(normal.ttft_s + 599 / 30 - 599 / 60)


class Shouty:
    """A user's backend with only the one required method: no name, no simulated flag."""

    def __init__(self, secret: str = "") -> None:
        self.secret = secret

    @asynccontextmanager
    async def open_stream(self, request: sf.Request) -> AsyncIterator[Stream]:
        if self.secret:
            raise RuntimeError(f"refused, Authorization: Bearer {self.secret}")
        yield Stream(request.all_text().upper().split()[:3])

    def secret_values(self) -> tuple[str, ...]:
        return (self.secret,)


class Stream:
    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.usage = sf.Usage(prompt_tokens=7)
        self.finish_reason: str | None = None

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> str:
        if not self.words:
            self.finish_reason = "stop"
            raise StopAsyncIteration
        await trio.sleep(0.5)
        return self.words.pop(0) + " "


def test_a_backend_with_only_open_stream_runs_and_gets_default_attributes():
    g = sf.Graph("g")
    g.connect(g.input(), g.llm("p"))
    g.connect("p", g.output())
    report = sf.run(g, "why so quiet", backend=Shouty(), virtual_clock=False)
    assert report.backend == "Shouty" and report.simulated is False
    assert report.output == "WHY SO QUIET "
    assert report.nodes["answer"].tokens == report.output_tokens == 3  # not 0


def test_secrets_a_backend_names_never_reach_errors_or_the_trace():
    g = sf.Graph("g")
    g.connect(g.input(), [g.llm("p", on_error="drop"), g.llm("q")])
    g.connect(["p", "q"], g.llm("agg"))
    g.connect("agg", g.output())
    runs: list[sf.Run] = []

    async def main() -> None:
        async with sf.open_run(g, "hi", backend=Shouty(secret="sk-live-1234")) as run:
            runs.append(run)

    with pytest.raises(sf.NodeError) as caught:
        trio.run(main)
    assert "sk-live-1234" not in str(caught.value) and "[redacted]" in str(caught.value)
    errors = [e.data["error"] for e in runs[0].trace if e.kind in ("node_error", "run_error")]
    assert len(errors) >= 2 and all("[redacted]" in e and "sk-live" not in e for e in errors)


def test_cancelling_from_an_outer_scope_still_ends_the_trace():
    moa = sf.resolve_graph("moa")
    runs: list[sf.Run] = []

    async def main() -> None:
        with trio.move_on_after(1.0):
            async with sf.open_run(moa, backend="sim") as run:
                runs.append(run)
                await trio.sleep(10)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    kinds = [e.kind for e in runs[0].trace]
    assert "request_cancel" in kinds and kinds[-1] == "run_cancel"


def test_cut_short_nodes_report_the_prompt_they_were_given():
    report = run_virtual(sf.resolve_graph("moa"))
    cut = [e.node for e in report.trace.of("node_cancel")]
    assert cut, "moa's proposers are still writing when the aggregator ends"
    for node in cut:
        assert report.nodes[node].prompt_tokens > 0
    assert report.nodes["answer"].tokens == report.output_tokens > 0


def test_collect_twice_is_a_clear_error(tmp_path: Path):
    seen: list[str] = []

    async def twice(inputs: sf.Inputs) -> AsyncIterator[str]:
        await inputs.collect()
        try:
            await inputs.collect()
        except RuntimeError as exc:
            seen.append(str(exc))
        yield "done"

    g = sf.Graph("g")
    g.connect(g.input(), g.fn("f", twice))
    g.connect("f", g.output())
    run_virtual(g)
    assert seen == ["collect() was already called, or every step was already taken; keep the "
                    "Step it returned"]


def test_an_fn_node_that_never_finishes_fails_at_its_deadline_even_in_virtual_time():
    async def stuck(inputs: sf.Inputs) -> AsyncIterator[str]:
        yield "thinking..."
        await trio.sleep_forever()

    g = sf.Graph("g")
    g.connect(g.input(), g.fn("f", stuck, timeout_s=30))
    g.connect("f", g.output())
    with pytest.raises(sf.NodeError) as caught:
        run_virtual(g)
    assert str(caught.value) == ("node 'f' failed: did not finish within timeout_s = 30 s; raise "
                                 "timeout_s or make the function finish")


def test_the_request_deadline_comes_from_the_node_then_the_run(monkeypatch):
    g = sf.Graph("g")
    g.connect(g.input(), [g.llm("slow", timeout_s=600), g.llm("quick")])
    g.connect(["slow", "quick"], g.llm("agg"))
    g.connect("agg", g.output())
    plan = {p.node: p.timeout_s for p in plan_endpoints(
        g.build(), "openai", {"base_url": "http://a/v1", "model": "m", "timeout_s": 20})}
    assert plan == {"slow": 600, "quick": 20, "agg": 20}
    plan = {p.node: p.timeout_s for p in plan_endpoints(
        g.build(), "openai", {"base_url": "http://a/v1", "model": "m"})}
    assert plan == {"slow": 600, "quick": None, "agg": None}  # None: the backend's default


def test_a_graph_without_llm_nodes_needs_no_backend():
    async def echo(inputs: sf.Inputs) -> AsyncIterator[str]:
        step = await inputs.collect()
        yield step.query

    g = sf.Graph("g")
    g.connect(g.input(), g.fn("f", echo))
    g.connect("f", g.output())
    report = sf.run(g, "hello")  # no local model, no endpoint: none is asked for
    assert (report.output, report.backend) == ("hello", "none (no llm nodes)")
    assert run_virtual(g, "hi").output == "hi"


def test_a_secret_in_user_code_s_exception_does_not_ride_along_as_its_cause():
    g = sf.Graph("g")
    g.connect(g.input(), g.llm("p"))
    g.connect("p", g.output())

    class Leaky(Shouty):
        leak = True

        @asynccontextmanager
        async def open_stream(self, request: sf.Request) -> AsyncIterator[Stream]:
            raise RuntimeError(f"key={self.secret}" if self.leak else "no key here")
            yield Stream([])

    with pytest.raises(sf.NodeError) as caught:
        sf.run(g, "hi", backend=Leaky(secret="sk-live-98765"))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert str(caught.value) == "node 'p' failed: RuntimeError: key=[redacted]"
    Leaky.leak = False
    with pytest.raises(sf.NodeError) as caught:
        sf.run(g, "hi", backend=Leaky(secret="sk-live-98765"))
    assert isinstance(caught.value.__cause__, RuntimeError)  # kept for its traceback


def test_more_python_api_errors_are_config_errors():
    g = sf.Graph("g")
    g.connect(g.input(), g.llm("p"))
    g.connect("p", g.output())
    with pytest.raises(sf.ConfigError, match=r"^the message is not valid UTF-8 text"):
        sf.run(g, "why \udcff?", virtual_clock=True)
    with pytest.raises(sf.ConfigError, match=r"^backend=SimBackend is a class; pass an instance"):
        sf.run(g, "hi", backend=sf.SimBackend)  # type: ignore[arg-type]

    async def main() -> None:
        async with sf.open_run(g, "hi", backend="sim", virtual_clock=True):  # type: ignore[call-arg]
            pass

    with pytest.raises(sf.ConfigError, match=r"^unknown option 'virtual_clock'.*MockClock"):
        trio.run(main)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": {"p": {"decode_tps": 0}}}, "SimBackend(nodes={'p': ...}): decode_tps=0; use"),
        ({"sim": {"decode_tsp": 3}}, "SimBackend(sim=...): unknown field 'decode_tsp'; did you "
                                     "mean 'decode_tps'?"),
        ({"nodes": {"p": 5}}, "SimBackend(nodes={'p': ...}): 5 is not a table"),
        ({"sim": {"latency_s": float("inf")}}, "SimBackend(sim=...): latency_s=inf; use"),
    ],
)
def test_what_if_settings_are_checked_like_the_graphs(kwargs, message):
    with pytest.raises(sf.ConfigError) as caught:
        sf.SimBackend(**kwargs)
    assert str(caught.value).startswith(message)


def test_sys_exit_in_an_fn_node_fails_the_node_not_the_program():
    async def quitter(inputs: sf.Inputs) -> AsyncIterator[str]:
        raise SystemExit(4)
        yield ""

    g = sf.Graph("g")
    g.connect(g.input(), g.fn("f", quitter))
    g.connect("f", g.output())
    with pytest.raises(sf.NodeError) as caught:
        run_virtual(g)
    assert str(caught.value) == ("node 'f' failed: called sys.exit(4); raise an exception or "
                                 "return instead")


def test_a_custom_backend_must_end_with_stop_or_length():
    class Odd(Stream):
        async def __anext__(self) -> str:
            try:
                return await super().__anext__()
            except StopAsyncIteration:
                self.finish_reason = "content_filter"
                raise

    class OddBackend:
        @asynccontextmanager
        async def open_stream(self, request: sf.Request) -> AsyncIterator[Stream]:
            yield Odd(["half"])

    g = sf.Graph("g")
    g.connect(g.input(), g.llm("p"))
    g.connect("p", g.output())
    with pytest.raises(sf.NodeError) as caught:
        sf.run(g, "hi", backend=OddBackend())
    assert str(caught.value) == ("node 'p' failed: the backend ended the answer with "
                                 "finish_reason 'content_filter'; a backend sets 'stop' (the "
                                 "answer is complete) or 'length' (the step's budget ran out)")


def test_redacting_a_report_keeps_it_valid_json():
    import json

    from stairflow._backends.redact import redact_data

    data = {"ttft_s": 0.125, "text": "said sk-live-abcdef12 twice", "model": "e", "n": [1, "1"]}
    out = redact_data(data, ["1", "e", "sk-live-abcdef12"])  # short ones would match anything
    assert out == {"ttft_s": 0.125, "text": "said [redacted] twice", "model": "e", "n": [1, "1"]}
    assert json.loads(json.dumps(out)) == out


def test_a_backend_that_gives_no_rates_takes_every_early_step():
    # the step policy needs the node's rates; the simulator's say that b's early steps cannot
    # pay for reading its answer back (32 prompt tokens/s against 4 output tokens/s)
    from tests.property.test_invariants import append_slow_prefill

    g = append_slow_prefill()

    class NoRates(sf.SimBackend):
        def rates(self, node: str) -> None:  # type: ignore[override]
            return None

    frozen = g.build()
    with_rates = sf.run(frozen, "q", virtual_clock=True, backend=sf.SimBackend.for_graph(frozen))
    without = sf.run(frozen, "q", virtual_clock=True, backend=NoRates.for_graph(frozen))
    assert len(with_rates.trace.of("step_start", "b")) == 1
    assert len(without.trace.of("step_start", "b")) == 3
    assert isinstance(sf.SimBackend.for_graph(frozen).rates("b"), sf.Rates)
