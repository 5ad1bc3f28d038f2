"""``stairflow batch``: in process on the simulator (fast), and as a real process killed with
SIGKILL and interrupted with Ctrl-C at moments it does not choose, then resumed."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stairflow._cli import main


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err, stdin=io.StringIO(""))
    return code, out.getvalue(), err.getvalue()


def prompts(path: Path, n: int, bad: int | None = None) -> Path:
    with path.open("w") as f:
        for i in range(n):
            text = "boom" if i == bad else f"Question {i}: why?"
            f.write(json.dumps({"id": f"q{i}", "prompt": text}) + "\n")
    return path


def results(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "a torn line"
    return [json.loads(line) for line in text.splitlines()]


def test_batch_writes_a_labelled_result_per_prompt_and_a_summary(tmp_path: Path):
    p, out = prompts(tmp_path / "p.jsonl", 20), tmp_path / "r.jsonl"
    code, stdout, err = cli("batch", "moa", str(p), "-o", str(out), "--virtual-clock",
                            "--max-tokens", "16")
    assert code == 0, err
    assert stdout == ""
    assert "[simulated backend: placeholder text" in err
    assert "moa (staircase): 20 done, 0 failed, 0 skipped" in err and f"results: {out}" in err
    got = results(out)
    assert sorted(r["id"] for r in got) == sorted(f"q{i}" for i in range(20))
    assert all(r["simulated"] and r["output_tokens"] == 16 and r["error"] is None for r in got)
    code, stdout, err = cli("batch", "moa", str(p), "-o", str(out), "--virtual-clock",
                            "--max-tokens", "16", "--json")
    summary = json.loads(stdout)
    assert (code, summary["done"], summary["skipped"], summary["total"]) == (0, 0, 20, 20)


def test_batch_in_both_modes_then_a_failed_prompt_gives_exit_1(tmp_path: Path):
    p, out = prompts(tmp_path / "p.jsonl", 4), tmp_path / "r.jsonl"
    code, _, err = cli("batch", "chain", str(p), "-o", str(out), "--virtual-clock",
                       "--mode", "both", "--max-tokens", "8")
    assert code == 0, err
    assert Counter(r["mode"] for r in results(out)) == {"staircase": 4, "normal": 4}
    p2, out2 = prompts(tmp_path / "p2.jsonl", 4, bad=2), tmp_path / "r2.jsonl"
    code, _, err = cli("batch", "tests.cli.batch_graphs:boom", str(p2), "-o", str(out2),
                       "--virtual-clock")
    assert code == 1
    assert "3 done, 1 failed" not in err and "4 done, 1 failed" in err
    assert "--retry-failed runs them again" in err
    (bad,) = [r for r in results(out2) if r["error"]]
    assert bad["id"] == "q2" and bad["error"] == "node 'f' failed: ValueError: boom"


@pytest.mark.parametrize(("args", "message"), [
    (["--concurrency", "0"], "concurrency=0; use a whole number of runs >= 1"),
    (["--workers", "2"], "--workers applies to --ray"),
    (["--mode", "fast"], "invalid choice: 'fast'"),
])
def test_bad_options_are_one_line_errors_with_exit_2(tmp_path: Path, args: list[str],
                                                     message: str):
    p = prompts(tmp_path / "p.jsonl", 2)
    code, _, err = cli("batch", "moa", str(p), "-o", str(tmp_path / "r.jsonl"),
                       "--virtual-clock", *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_bad_prompts_file_names_the_file_and_line(tmp_path: Path):
    p = tmp_path / "p.jsonl"
    p.write_text('"fine"\n{"prompt": \n')
    code, _, err = cli("batch", "moa", str(p), "-o", str(tmp_path / "r.jsonl"),
                       "--virtual-clock")
    assert code == 2 and f"{p}:2: not JSON" in err and err.count("\n") == 1
    code, _, err = cli("batch", "moa", str(tmp_path / "none.jsonl"), "-o",
                       str(tmp_path / "r.jsonl"), "--virtual-clock")
    assert code == 2 and "none.jsonl: cannot read the prompts (No such file" in err


# -- a real process, killed -----------------------------------------------------------------

N = 60


def start(p: Path, out: Path) -> subprocess.Popen[str]:
    """The batch in real time (about 0.2 s a prompt, 4 at once: some 3 s in all)."""
    return subprocess.Popen(
        [sys.executable, "-m", "stairflow", "batch", "chain", str(p), "-o", str(out),
         "--sim", "latency_s=0.02", "--sim", "decode_tps=200", "--max-tokens", "12",
         "--concurrency", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lines(out: Path, n: int, proc: subprocess.Popen[str]) -> None:
    """Until the results file has ``n`` lines (the other process writes them)."""
    deadline = time.monotonic() + 60
    while (out.read_bytes().count(b"\n") if out.exists() else 0) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the batch wrote nothing for 60 s"
        time.sleep(0.005)  # polling another process's file: nothing to await here


def test_sigkill_at_any_moment_loses_nothing_written_and_a_rerun_completes(tmp_path: Path):
    p, out = prompts(tmp_path / "p.jsonl", N), tmp_path / "r.jsonl"
    counts = []
    for at in (3, 17, 31):  # kill three times, each at a later point
        proc = start(p, out)
        wait_for_lines(out, at, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        got = results(out)  # whole lines only, straight after the kill
        ids = [r["id"] for r in got]
        assert len(ids) == len(set(ids)) >= at  # no duplicate
        assert all(r["error"] is None and r["output_tokens"] == 12 for r in got)
        counts.append(len(got))
    assert counts == sorted(counts) and counts[-1] < N  # each run kept what it had
    proc = start(p, out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"{counts[-1]} skipped" in err
    got = results(out)
    assert sorted(r["id"] for r in got) == sorted(f"q{i}" for i in range(N))


def test_ctrl_c_stops_with_exit_130_and_a_rerun_resumes(tmp_path: Path):
    p, out = prompts(tmp_path / "p.jsonl", N), tmp_path / "r.jsonl"
    proc = start(p, out)
    wait_for_lines(out, 5, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "(interrupted: run the same command again to resume)" in err
    kept = results(out)
    proc = start(p, out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and f"{len(kept)} skipped" in err
    assert sorted(r["id"] for r in results(out)) == sorted(f"q{i}" for i in range(N))


