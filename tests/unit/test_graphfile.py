"""Graph files: the same graph as Python, and one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

import stairflow as sf

GOOD = """
name = "mini"
description = "two proposers"
default_input = "hi"

[sim]
decode_tps = 32

[defaults]
max_tokens = 64

[nodes.q]
kind = "input"

[nodes.a]
kind = "llm"
sim = { seed = 3 }

[nodes.b]
kind = "llm"
join = { quorum = 1, max_wait_s = 0.5 }

[nodes.agg]
kind = "llm"
prompt = "moa-aggregate"
steps = 16

[nodes.out]
kind = "output"

[[edges]]
from = "q"
to = ["a", "b"]

[[edges]]
from = ["a", "b"]
to = "agg"
trigger = "sentence"

[[edges]]
from = "agg"
to = "out"
"""


def write(tmp_path: Path, text: str, name: str = "g.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_file_gives_the_same_graph_as_python(tmp_path):
    fg = sf.load_graph(write(tmp_path, GOOD))
    g = sf.Graph("mini", description="two proposers", defaults={"max_tokens": 64},
                 sim={"decode_tps": 32}, default_input="hi")
    g.input("q")
    g.llm("a", sim={"seed": 3})
    g.llm("b", join={"quorum": 1, "max_wait_s": 0.5})
    g.llm("agg", prompt="moa-aggregate", steps=16)
    g.output("out")
    g.connect("q", ["a", "b"])
    g.connect(["a", "b"], "agg", "sentence")
    g.connect("agg", "out")
    py = g.build()
    assert fg.nodes == py.nodes
    assert fg.edges == py.edges
    assert (fg.sim, fg.default_input, fg.description) == (py.sim, py.default_input, py.description)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("kind = \"llm\"\nsim = { seed = 3 }", "kind = \"llm\"\ntemperatur = 1"),
         "graph 'mini', node 'a': unknown field 'temperatur'; did you mean 'temperature'?"),
        (('kind = "output"', 'kind = "sink"'), "graph 'mini', node 'out': kind='sink'; use "
                                               "'input', 'output', 'llm' or 'fn'"),
        (('to = "agg"\ntrigger = "sentence"', 'to = "agg"\ntrigger = "sentances"'),
         "graph 'mini', edge a -> agg: unknown trigger 'sentances'"),
        (('from = "agg"', 'from = "ag"'), "graph 'mini', edge ag -> out: unknown node 'ag'; "
                                         "did you mean 'agg'?"),
        (('name = "mini"', ""), 'name is missing; start the file with name = "my-graph"'),
        (("[nodes.q]", "[nodes.q]\nsystem = 'x'"), "graph 'mini', node 'q': field 'system' does "
                                                   "not apply to an input node; remove it"),
        (("steps = 16", "steps = 16\n["), "not valid TOML"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, edit, message):
    old, new = edit
    assert old in GOOD
    p = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(sf.GraphFileError) as info:
        sf.load_graph(p)
    text = str(info.value)
    assert text.startswith(f"{p}: ") and "\n" not in text
    assert message in text, text


def test_missing_file(tmp_path):
    with pytest.raises(sf.GraphFileError, match="cannot read the file"):
        sf.load_graph(tmp_path / "nope.toml")


def test_fn_nodes_import_from_next_to_the_file(tmp_path):
    (tmp_path / "myfns.py").write_text(
        "async def shout(inputs):\n"
        "    async for step in inputs:\n"
        "        for text in step.new.values():\n"
        "            yield text.upper()\n"
    )
    p = write(tmp_path, GOOD.replace('[nodes.out]', '[nodes.loud]\nkind = "fn"\nfn = "myfns:shout"'
                                     '\n\n[nodes.out]').replace(
        '[[edges]]\nfrom = "agg"\nto = "out"',
        '[[edges]]\nfrom = "agg"\nto = "loud"\n\n[[edges]]\nfrom = "loud"\nto = "out"'))
    fg = sf.load_graph(p)
    from stairflow.testing import run_virtual
    report = run_virtual(fg, "hi")
    assert report.output and report.output == report.output.upper()


def test_fn_import_errors(tmp_path):
    p = write(tmp_path, GOOD.replace('[nodes.out]', '[nodes.f]\nkind = "fn"\nfn = "nosuch:f"\n\n'
                                     '[nodes.out]'))
    with pytest.raises(sf.GraphFileError, match=r"graph 'mini', node 'f': cannot import 'nosuch:f' \(ModuleNotFoundError: No module named 'nosuch'\)$"):
        sf.load_graph(p)


def test_resolve_graph_names_paths_and_modules(tmp_path, monkeypatch):
    assert set(sf.bundled_graphs()) >= {"moa", "moa-3layer", "debate", "chain"}
    assert sf.resolve_graph("moa").name == "moa"
    assert sf.resolve_graph(str(write(tmp_path, GOOD))).name == "mini"
    (tmp_path / "mygraph.py").write_text(
        "import stairflow as sf\n"
        "g = sf.Graph('py')\n"
        "g.input('q'); g.llm('a'); g.connect('q', 'a'); g.connect('a', g.output('o'))\n"
    )
    monkeypatch.chdir(tmp_path)
    assert sf.resolve_graph("mygraph:g").name == "py"
    with pytest.raises(sf.GraphError, match=r"graph 'moe' not found.*did you mean 'moa'"):
        sf.resolve_graph("moe")
    with pytest.raises(sf.GraphError, match="cannot import graph 'mygraph:nope'"):
        sf.resolve_graph("mygraph:nope")
