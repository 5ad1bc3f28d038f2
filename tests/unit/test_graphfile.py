"""Graph files: the same graph as Python, and one-line errors naming the file."""

from __future__ import annotations

import sys
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


# -- whatever is wrong with a file is one line naming it, never a traceback ------------------


def load_error(path: Path) -> str:
    with pytest.raises(sf.GraphFileError) as info:
        sf.load_graph(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text, text
    return text[len(f"{path}: "):]


def test_undecodable_files(tmp_path):
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    assert load_error(latin1) == ("not UTF-8 text (byte 0xe9 at offset 11); a graph file is TOML, "
                                  "saved as UTF-8")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)))
    assert load_error(binary).startswith("not UTF-8 text (byte 0x80 at offset 128)")
    nul = tmp_path / "nul.toml"
    nul.write_bytes(b'name = "x"\n\x00\x01\x02')
    assert load_error(nul).startswith("not valid TOML: ")
    assert load_error(tmp_path) == "cannot read the file (Is a directory)"


@pytest.mark.parametrize("where", ["top", "defaults", "join", "trigger"])
def test_nesting_thousands_deep(tmp_path, where):
    deep = "[" * 5000 + "]" * 5000
    text = {
        "top": f'name = "x"\nv = {deep}\n',
        "defaults": GOOD.replace("max_tokens = 64", f"max_tokens = {deep}"),
        "join": GOOD.replace("join = { quorum = 1, max_wait_s = 0.5 }", f"join = {deep}"),
        "trigger": GOOD.replace('trigger = "sentence"', f"trigger = {deep}"),
    }[where]
    assert load_error(write(tmp_path, text)) == (
        "nested too deeply to read; a graph file needs only a few levels")


def test_nesting_a_few_hundred_deep_gets_the_value_s_message(tmp_path):
    deep = "[" * 300 + "]" * 300
    text = GOOD.replace("max_tokens = 64", f"max_tokens = {deep}")
    assert load_error(write(tmp_path, text)) == (
        "graph 'mini': defaults.max_tokens=[[[[...]]]]; use a whole number >= 1")


def with_fn(tmp_path: Path, module: str, ref: str = "myfns:f") -> Path:
    (tmp_path / "myfns.py").write_text(module)
    return write(tmp_path, GOOD.replace(
        '[nodes.out]', f'[nodes.f]\nkind = "fn"\nfn = "{ref}"\n\n[nodes.out]').replace(
        '[[edges]]\nfrom = "agg"\nto = "out"',
        '[[edges]]\nfrom = "agg"\nto = "f"\n\n[[edges]]\nfrom = "f"\nto = "out"'))


AT = "graph 'mini', node 'f'"


@pytest.mark.parametrize(
    ("module", "ref", "message"),
    [
        ("raise RuntimeError('no config\\nfound')\n", "myfns:f",
         f"{AT}: cannot import 'myfns:f' (RuntimeError: no config found)"),
        ("def f(:\n", "myfns:f",
         f"{AT}: cannot import 'myfns:f' (SyntaxError: invalid syntax (myfns.py, line 1))"),
        ("import sys\nsys.exit(3)\n", "myfns:f",
         f"{AT}: cannot import 'myfns:f': the module called sys.exit(3) while being imported; "
         "move that call under if __name__ == '__main__'"),
        ("raise SystemExit\n", "myfns:f",
         f"{AT}: cannot import 'myfns:f': the module called sys.exit(None) while being "
         "imported; move that call under if __name__ == '__main__'"),
        ("import no_such_module_here\n", "myfns:f",
         f"{AT}: cannot import 'myfns:f' (ModuleNotFoundError: No module named "
         "'no_such_module_here')"),
        ("", "myfns:f", f"{AT}: cannot import 'myfns:f' (AttributeError: module "
                        "'_stairflow_fn_myfns' has no attribute 'f')"),
        ("def f(inputs):\n    return 'x'\n", "myfns:f",
         f"{AT}: fn=f is a plain callable; make it an async generator function (async def "
         "f(inputs): ... yield text)"),
        ("async def f(inputs):\n    return 'x'\n", "myfns:f",
         f"{AT}: fn=f is an async function that returns, not yields; make it an async "
         "generator function (async def f(inputs): ... yield text)"),
        ("", "myfns", f"{AT}: fn='myfns'; write it as 'module:function'"),
        ("", ":", f"{AT}: fn=':'; write it as 'module:function'"),
    ],
)
def test_fn_modules_that_fail_are_one_line(tmp_path, module, ref, message):
    assert load_error(with_fn(tmp_path, module, ref)) == message


def test_fn_modules_with_dotted_names_and_attributes(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "fns.py").write_text(
        "class Ns:\n"
        "    @staticmethod\n"
        "    async def f(inputs):\n"
        "        async for step in inputs:\n"
        "            for t in step.new.values():\n"
        "                yield t\n")
    fg = sf.load_graph(with_fn(tmp_path, "", "pkg.fns:Ns.f"))
    assert fg.nodes["f"].ref == "pkg.fns:Ns.f"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[nodes.q]", "[nodes.f]\nkind = \"fn\"\n\n[nodes.q]"),
         "graph 'mini', node 'f': an fn node needs fn = 'module:function'"),
        (("[nodes.q]", "[nodes.f]\nkind = \"fn\"\nfn = 5\n\n[nodes.q]"),
         "graph 'mini', node 'f': fn=5; write it as 'module:function'"),
        (("[nodes.q]", "[nodes.f]\nkind = \"fn\"\nfn = \"m:f\"\nsystem = \"x\"\n\n[nodes.q]"),
         "graph 'mini', node 'f': field 'system' does not apply to an fn node; remove it"),
        (("[nodes.q]", "[nodes.f]\nkind = \"fn\"\nfn = \"m:f\"\ntimeout = 1\n\n[nodes.q]"),
         "graph 'mini', node 'f': unknown field 'timeout'; did you mean 'timeout_s'?"),
        (('kind = "llm"\nsim = { seed = 3 }', 'kind = "llm"\nfn = "m:f"'),
         "graph 'mini', node 'a': field 'fn' does not apply to an llm node; remove it"),
        (("[nodes.q]\nkind = \"input\"", "[nodes.q]"), "graph 'mini', node 'q': kind=None; use "
                                                      "'input', 'output', 'llm' or 'fn'"),
        (("[nodes.q]\nkind = \"input\"", "[nodes]\nq = 5"), "graph 'mini', node 'q': 5 is not a "
                                                        "table; write [nodes.q] with kind = 'llm' "
                                                        "(or 'input', 'output', 'fn')"),
        (('[[edges]]\nfrom = "agg"', '[[edges]]\nform = "agg"'),
         "graph 'mini', [[edges]] #3: unknown field 'form'; did you mean 'from'?"),
        (('[[edges]]\nfrom = "agg"\nto = "out"', '[[edges]]\nfrom = "agg"'),
         "graph 'mini', [[edges]] #3: 'to' is missing; name a node or a list of nodes"),
        (('[[edges]]\nfrom = "agg"\nto = "out"', '[[edges]]\nfrom = "agg"\nto = 5'),
         "graph 'mini': edge to=5; use a node name or a non-empty list of node names"),
        (('[[edges]]\nfrom = "agg"\nto = "out"', '[[edges]]\nfrom = []\nto = "out"'),
         "graph 'mini': edge from=[]; use a node name or a non-empty list of node names"),
        (('name = "mini"', 'name = "mini"\nnodez = 1'),
         "graph 'mini': unknown field 'nodez'; did you mean 'nodes'?"),
        (('name = "mini"', 'name = 5'), "graph 5: name=5; use a non-empty string"),
        (('[defaults]\nmax_tokens = 64', '[defaults]\nsim = 5'),
         "graph 'mini': defaults.sim=5; use a table of simulated timings: latency_s, prefill_tps, "
         "decode_tps, output_tokens, seed, cache"),
        (('decode_tps = 32', 'decode_tps = inf'),
         "graph 'mini': sim.decode_tps=inf; use a number of output tokens per second from 0.001 to 1e+09"),
        (('decode_tps = 32', 'latency_s = nan'),
         "graph 'mini': sim.latency_s=nan; use a number of seconds from 0 to 1e+06"),
        (('sim = { seed = 3 }', 'sim = { output_tokens = inf }'),
         "graph 'mini', node 'a': sim.output_tokens=inf; use a whole number from 0 to 1000000"),
        (('sim = { seed = 3 }', 'sim = { seed = nan }'),
         "graph 'mini', node 'a': sim.seed=nan; use a whole number"),
        (('max_wait_s = 0.5', 'max_wait_s = nan'),
         "graph 'mini', node 'b': max_wait_s=nan: must be a number of seconds > 0"),
    ],
)
def test_layout_errors_name_the_graph_node_or_edge(tmp_path, edit, message):
    old, new = edit
    assert old in GOOD
    assert load_error(write(tmp_path, GOOD.replace(old, new, 1))) == message


def test_timeouts_in_a_file(tmp_path):
    text = GOOD.replace("max_tokens = 64", "max_tokens = 64\ntimeout_s = 30").replace(
        "steps = 16", "steps = 16\ntimeout_s = 2.5")
    fg = sf.load_graph(write(tmp_path, text))
    assert [fg.nodes[n].timeout_s for n in ("a", "b", "agg")] == [30, 30, 2.5]
    path = with_fn(tmp_path, "async def f(inputs):\n    yield ''\n")
    path.write_text(path.read_text().replace('fn = "myfns:f"', 'fn = "myfns:f"\ntimeout_s = 4'))
    assert sf.load_graph(path).nodes["f"].timeout_s == 4


# -- resolve_graph: module:attribute -----------------------------------------------------------


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [m for m in sys.modules if m.split(".")[0] in ("mygraph", "graphpkg", "bad")]:
        del sys.modules[name]


GRAPH_PY = ("import stairflow as sf\n"
            "g = sf.Graph('py')\n"
            "g.input('q'); g.llm('a'); g.connect('q', 'a'); g.connect('a', g.output('o'))\n"
            "frozen = g.build()\n"
            "def make():\n    return g\n")


def test_resolve_dotted_modules_and_attributes(here):
    (here / "graphpkg").mkdir()
    (here / "graphpkg" / "__init__.py").write_text("")
    (here / "graphpkg" / "graphs.py").write_text(GRAPH_PY + "class Ns:\n    graph = g\n")
    assert sf.resolve_graph("graphpkg.graphs:g").name == "py"
    assert sf.resolve_graph("graphpkg.graphs:frozen").name == "py"
    assert sf.resolve_graph("graphpkg.graphs:Ns.graph").name == "py"
    assert str(here) not in sys.path


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        (GRAPH_PY, "mygraph:make",
         "graph 'mygraph:make' is a function, not a stairflow Graph; name a Graph or FrozenGraph "
         "object, e.g. graph = build_graph() at the module's top level"),
        (GRAPH_PY + "n = 5\n", "mygraph:n",
         "graph 'mygraph:n' is a int, not a stairflow Graph; name a Graph or FrozenGraph object, "
         "e.g. graph = build_graph() at the module's top level"),
        ("", "json:dumps", "graph 'json:dumps' is a function, not a stairflow Graph; name a Graph "
                           "or FrozenGraph object, e.g. graph = build_graph() at the module's "
                           "top level"),
        ("", ":", "graph ':': write a graph declared in Python as module:attribute, e.g. "
                  "mygraphs:graph"),
        ("", "mygraph:", "graph 'mygraph:': write a graph declared in Python as "
                         "module:attribute, e.g. mygraphs:graph"),
        ("raise ValueError('bad\\nconfig')\n", "mygraph:g",
         "cannot import graph 'mygraph:g' (ValueError: bad config)"),
        ("g = (\n", "mygraph:g",
         "cannot import graph 'mygraph:g' (SyntaxError: '(' was never closed (mygraph.py, line 1))"),
        ("import sys\nsys.exit('bye')\n", "mygraph:g",
         "cannot import graph 'mygraph:g': the module called sys.exit('bye') while being "
         "imported; move that call under if __name__ == '__main__'"),
        ("", "mygraph:g", "cannot import graph 'mygraph:g' (AttributeError: module 'mygraph' "
                          "has no attribute 'g')"),
    ],
)
def test_resolve_graph_errors_are_one_line_naming_the_spec(here, source, spec, message):
    (here / "mygraph.py").write_text(source)
    with pytest.raises(sf.GraphError) as info:
        sf.resolve_graph(spec)
    assert str(info.value) == message
    assert str(here) not in sys.path


def test_json_dumps_is_never_called(here, monkeypatch):
    import json
    calls = []
    monkeypatch.setattr(json, "dumps", lambda *a, **k: calls.append(a))
    with pytest.raises(sf.GraphError, match="is a function, not a stairflow Graph"):
        sf.resolve_graph("json:dumps")
    assert calls == []


def test_the_cli_exits_2_with_one_line_for_each_bad_file(tmp_path, here):
    import io

    from stairflow._cli import main
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    deep = write(tmp_path, 'name = "x"\nv = ' + "[" * 5000 + "]" * 5000 + "\n", "deep.toml")
    exits = with_fn(tmp_path, "import sys\nsys.exit(0)\n")
    (here / "mygraph.py").write_text("raise SystemExit(0)\n")
    for spec in (latin1, deep, exits, "mygraph:g", "json:dumps", ":"):
        out, err = io.StringIO(), io.StringIO()
        code = main(["check", str(spec)], out=out, err=err)
        assert code == 2, err.getvalue()
        assert err.getvalue().startswith("stairflow: error: ")
        assert err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue()
