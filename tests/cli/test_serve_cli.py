"""`stairflow serve` and `stairflow local`: options and their errors (no server started)."""

from __future__ import annotations

import pytest

from tests.cli.test_cli import cli


@pytest.mark.parametrize(("args", "port"), [((), 8088), (("--port", "9001"), 9001)])
def test_serve_without_a_graph_is_the_old_spelling_of_local_start(monkeypatch, args, port):
    started: list[int] = []
    monkeypatch.setattr("stairflow._cli.serve.serve_local",
                        lambda p, out: started.append(p) or 0)
    code, _, err = cli("serve", *args)
    assert code == 0 and started == [port]
    assert "'stairflow serve' without a graph is deprecated" in err
    assert "use 'stairflow local start'" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("moa", "--virtual-clock"), "--virtual-clock does not apply to serve"),
        (("moa", "--server-key-env", "STAIRFLOW_TEST_NO_SUCH_VAR"),
         "--server-key-env STAIRFLOW_TEST_NO_SUCH_VAR: the environment variable"),
        (("moa", "moa"), "moa: a graph named 'moa' is served already"),
        (("moa", "--max-concurrent", "0"), "--max-concurrent 0: use a whole number >= 1"),
        (("no-such-graph",), "no-such-graph"),
    ],
)
def test_serve_bad_options_are_one_line_errors(args, message):
    code, _, err = cli("serve", *args)
    assert code == 2
    assert err.startswith("stairflow: error: ") and message in err and err.count("\n") == 1


def test_local_status_and_stop_when_nothing_runs():
    code, out, _ = cli("local", "status")
    assert code == 1 and out.startswith("not running")
    code, out, _ = cli("local", "stop")
    assert code == 0 and out.startswith("no local model server is running")


def test_local_stop_removes_a_stale_note(tmp_path, monkeypatch):
    from stairflow._backends.probe import state_file

    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text('{"base_url": "http://127.0.0.1:9/v1", "port": 9, '
                            '"model": "m", "pid": 999999999}')
    code, out, _ = cli("local", "stop")
    assert code == 0 and "stale" in out and not state_file().exists()
