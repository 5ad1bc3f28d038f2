"""One schema: Python and graph files accept and reject the same settings, with one message.

Each bad value below goes through `Graph(...)`/`Graph.llm`/`Graph.fn` and through a TOML file;
both must fail with the same pinned one-line message (the file's adds its path in front).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

import stairflow as sf
from stairflow._settings import (
    MAX_SIM_OUTPUT_TOKENS,
    FnSettings,
    LLMSettings,
    SimSettings,
    fields_of,
    parse_sim,
)

INF, NAN = math.inf, math.nan
WHERE = "graph 'mini'"
NODE = "graph 'mini', node 'a'"
SIM_FIX = "use a number of output tokens per second from 0.001 to 1e+09"
WHOLE_TOKENS = f"use a whole number from 0 to {MAX_SIM_OUTPUT_TOKENS}"
STEPS_FIX = ("use a whole number >= 1, a non-empty list of them like [32, 64], or 'auto' (sized "
             "from the backend's rates)")
SCALE_FIX = ("use a number of seconds above 0 and at most 1e6 (default 16): with steps = 'auto', "
             "larger makes fewer, longer steps")
LLM_TIMEOUT = ("use the most seconds one model request may take (> 0), or leave it out for the "
               "backend's default")
FN_TIMEOUT = ("use the most seconds the whole fn node may take (> 0), or leave it out for no "
              "deadline")
JOIN_HINT = ('use "all", "any", { quorum = 2 }, { policy = "all", max_wait_s = 1.0 } or '
             '{ policy = "all", straggler = 2.0 }')


def toml(value: Any) -> str:
    """``value`` as a TOML literal (the test's own writer: nothing from the code under test)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"


async def echo(inputs):
    async for step in inputs:
        for text in step.new.values():
            yield text


FNS = "async def echo(inputs):\n    async for step in inputs:\n        for t in step.new.values():\n            yield t\n"


def python_graph(graph: dict[str, Any], node: dict[str, Any], kind: str) -> sf.Graph:
    g = sf.Graph("mini", **graph)
    g.input("q")
    if kind == "llm":
        g.llm("a", **node)
    else:
        g.fn("a", echo, **node)
    g.connect("q", "a")
    g.connect("a", g.output("out"))
    return g


def toml_graph(tmp_path: Path, graph: dict[str, Any], node: dict[str, Any], kind: str) -> Path:
    (tmp_path / "fns.py").write_text(FNS)
    top = [f"{k} = {toml(v)}" for k, v in graph.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "\n".join(f"{kk} = {toml(vv)}" for kk, vv in v.items())
              for k, v in graph.items() if isinstance(v, dict)]
    extra = "\nfn = \"fns:echo\"" if kind == "fn" else ""
    body = "\n".join(f"{k} = {toml(v)}" for k, v in node.items())
    text = "\n".join(['name = "mini"', *top, *tables,
                      '[nodes.q]\nkind = "input"',
                      f'[nodes.a]\nkind = "{kind}"{extra}\n{body}',
                      '[nodes.out]\nkind = "output"',
                      '[[edges]]\nfrom = "q"\nto = "a"',
                      '[[edges]]\nfrom = "a"\nto = "out"', ""])
    path = tmp_path / "g.toml"
    path.write_text(text)
    return path


# (graph settings, node settings, node kind, the one message both paths give)
CASES = [
    # values TOML used to accept and Python rejected
    ({}, {"max_tokens": True}, "llm", f"{NODE}: max_tokens=True; use a whole number >= 1"),
    ({}, {"temperature": "0.5"}, "llm", f"{NODE}: temperature='0.5'; use a number from 0 to 2"),
    ({}, {"steps": [True, 2]}, "llm", f"{NODE}: steps=[True, 2]; {STEPS_FIX}"),
    # non-finite numbers, everywhere a number is read
    ({}, {"temperature": NAN}, "llm", f"{NODE}: temperature=nan; use a number from 0 to 2"),
    ({}, {"sim": {"latency_s": INF}}, "llm",
     f"{NODE}: sim.latency_s=inf; use a number of seconds from 0 to 1e+06"),
    ({}, {"sim": {"latency_s": NAN}}, "llm",
     f"{NODE}: sim.latency_s=nan; use a number of seconds from 0 to 1e+06"),
    ({}, {"sim": {"decode_tps": NAN}}, "llm", f"{NODE}: sim.decode_tps=nan; {SIM_FIX}"),
    ({}, {"sim": {"decode_tps": INF}}, "llm", f"{NODE}: sim.decode_tps=inf; {SIM_FIX}"),
    ({}, {"sim": {"prefill_tps": NAN}}, "llm",
     f"{NODE}: sim.prefill_tps=nan; use a number of prompt tokens per second from 0.001 to 1e+09"),
    ({}, {"sim": {"output_tokens": INF}}, "llm", f"{NODE}: sim.output_tokens=inf; {WHOLE_TOKENS}"),
    ({}, {"sim": {"output_tokens": 1.5}}, "llm", f"{NODE}: sim.output_tokens=1.5; {WHOLE_TOKENS}"),
    ({}, {"sim": {"output_tokens": 10**9}}, "llm",
     f"{NODE}: sim.output_tokens=1000000000; {WHOLE_TOKENS}"),
    ({}, {"sim": {"seed": NAN}}, "llm", f"{NODE}: sim.seed=nan; use a whole number"),
    ({}, {"sim": {"seed": 1.5}}, "llm", f"{NODE}: sim.seed=1.5; use a whole number"),
    ({}, {"sim": {"speed": 1}}, "llm", f"{NODE}: unknown field 'sim.speed'; did you mean 'sim.seed'?"),
    ({}, {"join": {"quorum": 1, "max_wait_s": NAN}}, "llm",
     f"{NODE}: max_wait_s=nan: must be a number of seconds > 0"),
    ({}, {"join": {"policy": "any", "max_wait_s": INF}}, "llm",
     f"{NODE}: max_wait_s=inf: must be a number of seconds > 0"),
    ({}, {"timeout_s": NAN}, "llm", f"{NODE}: timeout_s=nan; {LLM_TIMEOUT}"),
    ({}, {"timeout_s": INF}, "llm", f"{NODE}: timeout_s=inf; {LLM_TIMEOUT}"),
    ({}, {"timeout_s": 0}, "llm", f"{NODE}: timeout_s=0; {LLM_TIMEOUT}"),
    ({}, {"timeout_s": "30"}, "llm", f"{NODE}: timeout_s='30'; {LLM_TIMEOUT}"),
    # the rest of the llm settings
    ({}, {"max_tokens": 2.0}, "llm", f"{NODE}: max_tokens=2.0; use a whole number >= 1"),
    ({}, {"steps": []}, "llm", f"{NODE}: steps=[]; {STEPS_FIX}"),
    ({}, {"steps": "32"}, "llm", f"{NODE}: steps='32'; {STEPS_FIX}"),
    ({}, {"steps": "Auto"}, "llm", f"{NODE}: steps='Auto'; {STEPS_FIX}"),
    ({}, {"steps": "auto", "step_scale_s": 0}, "llm", f"{NODE}: step_scale_s=0; {SCALE_FIX}"),
    ({}, {"step_scale_s": "16"}, "llm", f"{NODE}: step_scale_s='16'; {SCALE_FIX}"),
    ({}, {"step_scale_s": 1e308}, "llm", f"{NODE}: step_scale_s=1e+308; {SCALE_FIX}"),
    ({}, {"join": "most"}, "llm", f"{NODE}: unknown join 'most'; {JOIN_HINT}"),
    ({}, {"join": {"quorum": True}}, "llm", f"{NODE}: quorum(True): k must be a whole number >= 1"),
    ({}, {"on_error": "ignore"}, "llm", f"{NODE}: on_error='ignore'; use 'fail' or 'drop'"),
    ({}, {"context": "grow"}, "llm", f"{NODE}: context='grow'; use 'rebuild' or 'append'"),
    ({}, {"model": 5}, "llm", f"{NODE}: model=5; use a string, the model's name at its endpoint"),
    ({}, {"system": False}, "llm", f"{NODE}: system=False; use a string, the system prompt"),
    ({}, {"base_url": "ftp://x"}, "llm",
     f"{NODE}: base_url='ftp://x'; use an http(s):// URL with a host, e.g. http://127.0.0.1:8080/v1"),
    ({}, {"api_key_env": "MY KEY"}, "llm",
     f"{NODE}: api_key_env='MY KEY'; use the name of an environment variable, e.g. OPENAI_API_KEY"),
    ({}, {"continuation": "guess"}, "llm",
     f"{NODE}: continuation='guess'; use one of chat-prefix, completions, chat-restate"),
    ({}, {"prompt_format": "xml"}, "llm",
     f"{NODE}: prompt_format='xml'; use one of gemma, chatml, llama3, document"),
    ({}, {"sim": 5}, "llm", f"{NODE}: sim=5; use a table of simulated timings: latency_s, "
                            "prefill_tps, decode_tps, output_tokens, seed, cache"),
    ({}, {"temperatur": 1}, "llm", f"{NODE}: unknown field 'temperatur'; did you mean 'temperature'?"),
    # fn nodes
    ({}, {"timeout_s": NAN}, "fn", f"{NODE}: timeout_s=nan; {FN_TIMEOUT}"),
    ({}, {"timeout_s": -1}, "fn", f"{NODE}: timeout_s=-1; {FN_TIMEOUT}"),
    ({}, {"timeout_s": True}, "fn", f"{NODE}: timeout_s=True; {FN_TIMEOUT}"),
    ({}, {"join": "most"}, "fn", f"{NODE}: unknown join 'most'; {JOIN_HINT}"),
    ({}, {"on_error": "skip"}, "fn", f"{NODE}: on_error='skip'; use 'fail' or 'drop'"),
    # the graph's own settings, [defaults] and [sim]
    ({"defaults": {"sim": 5}}, {}, "llm", f"{WHERE}: defaults.sim=5; use a table of simulated "
                                          "timings: latency_s, prefill_tps, decode_tps, "
                                          "output_tokens, seed, cache"),
    ({"defaults": {"temperature": NAN}}, {}, "llm",
     f"{WHERE}: defaults.temperature=nan; use a number from 0 to 2"),
    ({"defaults": {"timeout_s": -2}}, {}, "llm", f"{WHERE}: defaults.timeout_s=-2; {LLM_TIMEOUT}"),
    ({"defaults": {"join": "most"}}, {}, "llm", f"{WHERE}: defaults: unknown join 'most'; {JOIN_HINT}"),
    ({"defaults": {"colour": 1}}, {}, "llm",
     f"{WHERE}: unknown field 'defaults.colour'; use one of model, system, prompt, temperature, "
     "max_tokens, steps, step_scale_s, join, on_error, context, sim, base_url, api_key_env, continuation, "
     "prompt_format, timeout_s"),
    ({"defaults": {"temprature": 1}}, {}, "llm",
     f"{WHERE}: unknown field 'defaults.temprature'; did you mean 'defaults.temperature'?"),
    ({"sim": {"latency_s": INF}}, {}, "llm",
     f"{WHERE}: sim.latency_s=inf; use a number of seconds from 0 to 1e+06"),
    ({"sim": {"max_tokens": 5}}, {}, "llm",
     f"{WHERE}: unknown field 'sim.max_tokens'; did you mean 'sim.output_tokens'?"),
    ({"edge_buffer": True}, {}, "llm", f"{WHERE}: edge_buffer=True; use a whole number >= 1"),
    ({"edge_buffer": 0}, {}, "llm", f"{WHERE}: edge_buffer=0; use a whole number >= 1"),
    ({"description": 5}, {}, "llm", f"{WHERE}: description=5; use a string"),
    ({"default_input": ["hi"]}, {}, "llm", f"{WHERE}: default_input=['hi']; use a string"),
]


@pytest.mark.parametrize(("graph", "node", "kind", "message"), CASES,
                         ids=[c[3].split(": ", 1)[1][:40] for c in CASES])
def test_python_and_toml_reject_the_same_values_with_the_same_message(
    tmp_path, graph, node, kind, message
):
    with pytest.raises(sf.GraphError) as py:
        python_graph(graph, node, kind).build()
    assert str(py.value) == message
    path = toml_graph(tmp_path, graph, node, kind)
    with pytest.raises(sf.GraphFileError) as fromfile:
        sf.load_graph(path)
    assert str(fromfile.value) == f"{path}: {message}"


GOOD = [
    ({"defaults": {"timeout_s": 30, "max_tokens": 64}, "sim": {"latency_s": 0, "seed": 2}},
     {"temperature": 0, "steps": [8, 16], "timeout_s": 2.5,
      "sim": {"output_tokens": MAX_SIM_OUTPUT_TOKENS, "decode_tps": 10},
      "join": {"policy": "any", "max_wait_s": 0.5}, "base_url": "https://x.example/v1", "model": "m",
      "api_key_env": "X_KEY", "continuation": "completions", "prompt_format": "gemma"}, "llm"),
    ({}, {"timeout_s": 1, "join": "any", "on_error": "drop"}, "fn"),
    ({}, {"steps": "auto", "step_scale_s": 4.5}, "llm"),
]


@pytest.mark.parametrize(("graph", "node", "kind"), GOOD)
def test_python_and_toml_accept_the_same_values_into_the_same_graph(tmp_path, graph, node, kind):
    py = python_graph(graph, node, kind).build()
    fromfile = sf.load_graph(toml_graph(tmp_path, graph, node, kind))
    a, b = py.nodes["a"], fromfile.nodes["a"]
    if kind == "fn":  # the file's function is imported from fns.py: compare everything else
        assert dataclasses.replace(a, fn=echo, ref="") == dataclasses.replace(b, fn=echo, ref="")
        assert (b.ref, a.timeout_s) == ("fns:echo", 1.0)
    elif a.steps == "auto":
        assert a == b
        assert (b.steps, b.step_scale_s) == ("auto", 4.5)
    else:
        assert a == b
        assert (a.timeout_s, a.max_tokens, a.steps, a.sim["output_tokens"]) == (
            2.5, 64, (8, 16), MAX_SIM_OUTPUT_TOKENS)
    assert py.sim == fromfile.sim


def test_the_llm_settings_are_the_fields_of_llm_node():
    node_fields = [f.name for f in dataclasses.fields(sf.LLMNode)]
    assert node_fields == ["name", *fields_of(LLMSettings), "kind"]
    fn_fields = {f.name for f in dataclasses.fields(sf.FnNode)}
    assert set(fields_of(FnSettings)) <= fn_fields
    assert sf.LLMNode("x").timeout_s is None
    assert fields_of(SimSettings) == ("latency_s", "prefill_tps", "decode_tps", "output_tokens",
                                      "seed", "cache")


def test_parse_sim_checks_a_command_line_what_if():
    assert parse_sim({"decode_tps": "10", "output_tokens": "40", "latency_s": 0.5}, "--sim p3") == {
        "decode_tps": 10.0, "output_tokens": 40, "latency_s": 0.5}
    for values, message in [
        ({"decode_tps": "nan"}, f"--sim p3: decode_tps=nan; {SIM_FIX}"),
        ({"decode_tps": "fast"}, f"--sim p3: decode_tps='fast'; {SIM_FIX}"),
        ({"output_tokens": "1.5"}, f"--sim p3: output_tokens=1.5; {WHOLE_TOKENS}"),
        ({"latency_s": "inf"}, "--sim p3: latency_s=inf; use a number of seconds from 0 to 1e+06"),
        ({"decode": 1}, "--sim p3: unknown field 'decode'; did you mean 'decode_tps'?"),
    ]:
        with pytest.raises(sf.GraphError) as info:
            parse_sim(values, "--sim p3")
        assert str(info.value) == message


def test_capped_uses_the_same_rule_for_max_tokens():
    fg = python_graph({}, {}, "llm").build()
    assert fg.capped(5).nodes["a"].max_tokens == 5
    for bad in (0, True, 2.5):
        with pytest.raises(sf.GraphError) as info:
            fg.capped(bad)
        assert str(info.value) == f"{WHERE}: max_tokens={bad!r}; use a whole number >= 1"


def test_wrong_types_in_the_python_api_are_graph_errors():
    g = sf.Graph("t")
    for src, shown in [(None, "None"), ([], "[]"), (["q", 3], "['q', 3]")]:
        with pytest.raises(sf.GraphError) as info:
            g.connect(src, "a")
        assert str(info.value) == (f"graph 't': edge from={shown}; use a node name or a "
                                   "non-empty list of node names")
    with pytest.raises(sf.GraphError) as info:
        g.connect("q", 5)
    assert str(info.value) == ("graph 't': edge to=5; use a node name or a non-empty list of "
                               "node names")
    with pytest.raises(sf.GraphError) as info:
        sf.Graph("t", defaults=5).build()  # type: ignore[arg-type]
    assert str(info.value) == "graph 't': defaults=5; use a table of llm node settings"
    with pytest.raises(sf.GraphError) as info:
        sf.Graph(5).build()  # type: ignore[arg-type]
    assert str(info.value) == "graph 5: name=5; use a non-empty string"
    g = sf.Graph("t")
    g.input("q")
    g.fn("f", None)  # type: ignore[arg-type]
    g.connect("q", "f")
    g.connect("f", g.output("o"))
    with pytest.raises(sf.GraphError) as info:
        g.build()
    assert str(info.value) == ("graph 't', node 'f': fn=None is of type NoneType, not a function; "
                               "make it an async generator function (async def f(inputs): ... "
                               "yield text)")


def test_messages_show_huge_or_deep_values_in_one_short_line():
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    for value in (deep, "x" * 10_000):
        with pytest.raises(sf.GraphError) as info:
            python_graph({}, {"temperature": value}, "llm").build()
        text = str(info.value)
        assert "\n" not in text and len(text) < 200, text


def test_mypy_checks_graph_llm_keyword_arguments(tmp_path, monkeypatch):
    api = pytest.importorskip("mypy.api")
    (tmp_path / "user.py").write_text(
        "import stairflow as sf\n"
        "g = sf.Graph('t', defaults={'temperature': 0.2})\n"
        "g.llm('a', temperature='hot')\n"
        "g.llm('b', max_tokns=5)\n"
        "g.llm('c', timeout_s=2.5, steps=[32, 64], sim={'decode_tps': 10}, join='any')\n"
        "g.fn('d', print, timeout_s='x')\n"
        "sf.Graph('u', defaults={'temprature': 1})\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MYPYPATH", str(Path(sf.__file__).parent.parent))
    out, err, _status = api.run(["--strict", "--follow-imports=silent", "--no-incremental",
                                 "--cache-dir=/dev/null", "--no-error-summary", "user.py"])
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert [e.split(":")[1] for e in errors] == ["3", "4", "6", "6", "7"], out + err
    assert 'Argument "temperature" to "llm" of "Graph" has incompatible type "str"' in errors[0]
    assert 'Unexpected keyword argument "max_tokns"' in errors[1]
    assert 'Argument "timeout_s" to "fn" of "Graph" has incompatible type "str"' in errors[3]
    assert 'Argument "defaults" to "Graph" has incompatible type' in errors[4]


def test_any_mapping_works_where_python_takes_a_table():
    from types import MappingProxyType
    g = python_graph({"sim": MappingProxyType({"seed": 2}),
                      "defaults": MappingProxyType({"max_tokens": 9})},
                     {"sim": MappingProxyType({"seed": 1})}, "llm")
    fg = g.build()
    assert (dict(fg.sim), dict(fg.nodes["a"].sim), fg.nodes["a"].max_tokens) == (
        {"seed": 2}, {"seed": 1}, 9)
