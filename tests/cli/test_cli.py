"""The command line, in process (fast) and once as the installed ``stairflow`` command."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stairflow._cli import main


def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def test_run_json_report_has_the_promised_fields():
    code, out, err = cli("run", "moa", "--virtual-clock", "--json")
    assert code == 0, err
    data = json.loads(out)
    for key in ("output", "ttft_s", "total_s", "output_tokens", "tokens_per_s",
                "prompt_tokens", "llm_calls", "nodes"):
        assert key in data
    assert data["simulated"] is True and data["backend"] == "simulated"
    assert data["tokens_per_s"] == pytest.approx(data["output_tokens"] / data["total_s"])
    for node in ("p1", "agg"):
        assert set(data["nodes"][node]) >= {"ttft_s", "done_s", "tokens", "calls", "prompt_tokens"}
    code, out2, _ = cli("run", "moa", "--virtual-clock", "--json", "--mode", "normal")
    normal = json.loads(out2)
    assert 1 - data["ttft_s"] / normal["ttft_s"] >= 0.93


def test_run_streams_text_then_a_labelled_summary():
    code, out, err = cli("run", "chain", "Explain tides.", "--virtual-clock")
    assert code == 0
    assert out.strip() and "TTFT" not in out
    assert "[simulated backend" in err and "TTFT" in err and "first token (s)" in err


def test_run_reads_the_prompt_from_stdin(tmp_path):
    trace = tmp_path / "t.json"
    code, _out, _ = cli("run", "moa", "--virtual-clock", "--json", "--trace", str(trace),
                       stdin="What is rain?")
    assert code == 0
    events = json.loads(trace.read_text())["events"]
    assert events[0]["kind"] == "run_start" and events[-1]["kind"] == "run_end"
    assert any(e["kind"] == "chunk" for e in events)


def test_check_prints_layers():
    code, out, _ = cli("check", "moa-3layer")
    assert code == 0
    assert out.splitlines()[1:] == [
        "  layer 0: question", "  layer 1: a1, a2, a3", "  layer 2: b1, b2, b3",
        "  layer 3: agg", "  layer 4: answer"]


@pytest.mark.parametrize("fmt", ["svg", "png", "pdf", "dot"])
def test_render_with_real_graphviz(tmp_path, fmt):
    if fmt != "dot":
        assert shutil.which("dot"), "graphviz must be installed (apt-get install graphviz)"
    path = tmp_path / f"moa.{fmt}"
    code, _out, err = cli("render", "moa", "-o", str(path))
    assert code == 0, err
    data = path.read_bytes()
    magic = {"svg": b"<svg", "png": b"\x89PNG", "pdf": b"%PDF", "dot": b"digraph"}[fmt]
    assert magic in data[:400]
    if fmt in ("svg", "dot"):
        assert b"tokens(8,16,32,64" in data  # edges are labelled with their triggers


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "nope"), "stairflow: error: graph 'nope' not found"),
        (("run", "moa", "--mode", "fast"), "stairflow: error: argument --mode: invalid choice"),
        (("run",), "stairflow: error: the following arguments are required: graph"),
        (("render", "moa", "-o", "x.gif"), "stairflow: error: cannot render to 'gif'"),
        (("frobnicate",), "stairflow: error: argument command: invalid choice"),
        (("run", "moa", "-"), "stairflow: error: the message read from stdin is empty"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    code, _out, err = cli(*args)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1


def test_bad_graph_file_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[nodes.q]\nkind = "input"\n[nodes.a]\nkind = "llm"\nmax_tokens = -1\n')
    code, _, err = cli("check", str(bad))
    assert code == 2
    assert err.startswith(f"stairflow: error: {bad}: ") and err.count("\n") == 1


def failing_graph(tmp_path: Path) -> Path:
    """A graph file whose fn node 'f' raises RuntimeError('x') at its first step."""
    (tmp_path / "fns.py").write_text(
        "async def boom(inputs):\n    async for _ in inputs:\n        raise RuntimeError('x')\n"
        "        yield ''\n")
    g = tmp_path / "g.toml"
    g.write_text('name = "f"\ndefault_input = "hi"\n[nodes.q]\nkind = "input"\n'
                 '[nodes.f]\nkind = "fn"\nfn = "fns:boom"\n[nodes.o]\nkind = "output"\n'
                 '[[edges]]\nfrom = "q"\nto = "f"\n[[edges]]\nfrom = "f"\nto = "o"\n')
    return g


def test_a_failing_run_exits_1_with_the_node(tmp_path):
    code, _, err = cli("run", str(failing_graph(tmp_path)), "--virtual-clock")
    assert code == 1
    assert err.strip().endswith("stairflow: run failed: node 'f' failed: RuntimeError: x")


def test_the_installed_command_runs_outside_the_source_tree(tmp_path):
    exe = Path(sys.executable).with_name("stairflow")
    result = subprocess.run([str(exe), "run", "moa", "--virtual-clock", "--json"],
                            capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["graph"] == "moa"
    bad = subprocess.run([str(exe), "run", "nope"], capture_output=True, text=True, cwd=tmp_path,
                         check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_a_missing_local_model_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("STAIRFLOW_LLAMA_SERVER", str(tmp_path / "nope"))
    code, _, err = cli("run", "moa")
    assert code == 2
    assert err == f"stairflow: error: STAIRFLOW_LLAMA_SERVER={tmp_path / 'nope'} does not exist\n"


def test_backend_options_are_checked():
    code, _, err = cli("run", "moa", "--backend", "openai")
    assert (code, err) == (2, "stairflow: error: graph 'moa', node 'p1' has no endpoint: set "
                              "base_url for it in the graph, or give a default one (--base-url "
                              "/ base_url=)\n")
    code, _, err = cli("run", "moa", "--backend", "local", "--virtual-clock")
    assert code == 2 and "--virtual-clock and --sim need the simulated backend" in err


def test_traces_for_perfetto_from_a_run_and_from_a_trace_file(tmp_path):
    from tests.unit.test_chrome import check_chrome

    ours, chrome = tmp_path / "t.json", tmp_path / "c.json"
    code, _, err = cli("run", "moa", "--virtual-clock", "--json", "--trace", str(ours))
    assert code == 0, err
    code, out, err = cli("trace", "convert", str(ours), "-o", str(chrome))
    assert code == 0, err
    assert out.startswith(f"wrote {chrome}") and "ui.perfetto.dev" in out
    converted = json.loads(chrome.read_text())
    check_chrome(converted)
    direct = tmp_path / "d.json"
    code, _, err = cli("run", "moa", "--virtual-clock", "--json", "--trace", str(direct),
                       "--trace-format", "chrome")
    assert code == 0, err
    def same(trace: dict) -> list[str]:  # events of one instant may come in another order
        return sorted(json.dumps({k: v for k, v in e.items() if k != "id"}, sort_keys=True)
                      for e in trace["traceEvents"])

    assert same(json.loads(direct.read_text())) == same(converted)  # virtual time: the same
    # a failing run's trace converts too
    failed = tmp_path / "f.json"
    code, _, _ = cli("run", str(failing_graph(tmp_path)), "--virtual-clock", "--trace",
                     str(failed), "--trace-format", "chrome")
    assert code == 1
    check_chrome(json.loads(failed.read_text()))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it"),
        ("not json", "not JSON"),
        ('{"meta": {}}', "not a stairflow trace"),
        ('{"meta": {}, "events": [{"t": 0}]}', "not a stairflow trace"),
        ('{"traceEvents": []}', "already a Chrome trace"),
        ('{"meta": {"nodes": ["a"]}, "events": [{"t": 0, "kind": "chunk", "node": "a"}]}',
         "an event is not as 'stairflow run --trace' writes it"),
    ],
)
def test_converting_a_bad_trace_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    code, _, err = cli("trace", "convert", str(path), "-o", str(tmp_path / "out.json"))
    assert code == 2
    assert err.startswith(f"stairflow: error: {path}: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out.json").exists()


def test_the_summary_says_which_node_ended_before_its_inputs():
    code, _, err = cli("run", "moa", "--virtual-clock")
    assert code == 0
    assert ("ended before its inputs did (tokens read/sent): agg read p1 376/440, p2 376/440, "
            "p3 376/440") in err
    code, _, err = cli("run", "moa", "--virtual-clock", "--mode", "normal")
    assert "ended before" not in err
