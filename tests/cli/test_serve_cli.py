"""`stairflow serve` and `stairflow local`: options and their errors (no server started)."""

from __future__ import annotations

import json
import subprocess

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
        (("moa", "--port", "70000"), "--port 70000: use a port from 0"),
        (("moa", "--port", "-1"), "--port -1: use a port from 0"),
        (("moa", "--shutdown-grace", "-1"), "--shutdown-grace -1: give seconds"),
        (("moa", "--body-timeout", "0"), "--body-timeout 0: give seconds from 0.1 to 3600"),
        (("moa", "--send-timeout", "0"), "--send-timeout 0: give seconds from 0.1 to 3600"),
        (("moa", "--send-timeout", "1e-300"), "--send-timeout 1e-300: give seconds from 0.1"),
        (("moa", "--send-timeout", "nan"), "--send-timeout nan: give seconds from 0.1"),
        (("moa", "--max-unsent-bytes", "0"), "--max-unsent-bytes 0: use a whole number >= 1"),
        (("moa", "--metrics-key-env", "STAIRFLOW_TEST_NO_SUCH_VAR"),
         "--metrics-key-env STAIRFLOW_TEST_NO_SUCH_VAR: the environment variable"),
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


@pytest.mark.integration  # the note's server is asked for its health, on loopback
@pytest.mark.parametrize("pid", ["VICTIM", -1, 0, 1, True, 1.5, "12", None])
def test_local_stop_signals_no_process_a_stale_note_names(pid):
    # a crashed server's note: nothing answers on its port, and its pid may be anyone's now
    from stairflow._backends.probe import state_file

    victim = subprocess.Popen(["sleep", "60"])
    try:
        state_file().parent.mkdir(parents=True, exist_ok=True)
        state_file().write_text(json.dumps({
            "base_url": "http://127.0.0.1:9/v1", "port": 9, "model": "gemma-3-270m",
            "pid": victim.pid if pid == "VICTIM" else pid}))
        code, out, _ = cli("local", "stop")
        assert code == 0 and out == "no local model server is running (removed a stale note)\n"
        assert not state_file().exists() and victim.poll() is None  # the sleep lives on
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("note", ["[1, 2]", '"text"', '{"model": "gemma-3-270m", "port": null}',
                                  "{not json"])
def test_local_status_on_an_odd_note_says_not_running(note):
    from stairflow._backends.probe import state_file

    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text(note)
    code, out, _ = cli("local", "status")
    assert code == 1 and out.startswith("not running")
