"""``stairflow batch --ray`` on a real Ray cluster the test starts on this machine: a head node
plus a second node (two raylets, one CPU each), on loopback, with token authentication. A
worker killed midway: its prompts run again elsewhere, and no id is lost or written twice."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

pytest.importorskip("ray")

pytestmark = pytest.mark.integration

N = 120
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self) -> None:
        self.env = {**os.environ, "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
        self.groups: list[int] = []
        self.tmp = tempfile.mkdtemp(prefix="sfray")  # short: Ray's socket paths must fit
        self.address = f"127.0.0.1:{free_port()}"

    def start(self, *args: str) -> None:
        proc = subprocess.Popen([RAY, "start", *args, "--num-cpus=1", "--disable-usage-stats"],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # its daemons: its group
        self.groups.append(proc.pid)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]

    def stop(self) -> None:
        for pgid in self.groups:  # every process the nodes started, workers too
            with suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    port = c.address.rpartition(":")[2]
    try:
        c.start("--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                "--include-dashboard=false", f"--temp-dir={c.tmp}")
        c.start(f"--address={c.address}", "--node-ip-address=127.0.0.1")
        yield c
    finally:
        c.stop()


def prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?"}) + "\n"
                            for i in range(N)))
    return path


def batch(p: Path, out: Path, address: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """About 1 s a prompt, 8 at once per worker: some 10 s on two workers."""
    return subprocess.Popen(
        [sys.executable, "-m", "stairflow", "batch", "chain", str(p), "-o", str(out),
         "--sim", "latency_s=0.2", "--sim", "decode_tps=40", "--max-tokens", "12",
         "--ray", address, "--workers", "2", "--concurrency", "8"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ids(out: Path) -> list[str]:
    text = out.read_text()
    assert text.endswith("\n")
    return [json.loads(line)["id"] for line in text.splitlines()]


def test_a_killed_worker_s_prompts_run_elsewhere_and_none_is_lost_or_doubled(
        cluster: Cluster, tmp_path: Path):
    p, out = prompts(tmp_path / "p.jsonl"), tmp_path / "r.jsonl"
    proc = batch(p, out, cluster.address, cluster.env)
    lines: list[str] = []
    pids: dict[int, int] = {}
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("ray: worker ") and " ready: pid " in line:
                worker = int(line.split()[2])
                pids[worker] = int(line.split(" ready: pid ")[1].split()[0])
                if len(pids) == 2:
                    seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert seen.wait(120), "".join(lines)
    nodes = {line.split(" (node ")[1].split(")")[0] for line in lines if " ready: pid " in line}
    assert "ray: 2 workers on a cluster of 2 nodes\n" in lines, lines
    deadline = time.monotonic() + 120
    while not out.exists() or out.read_bytes().count(b"\n") < 20:  # midway
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.01)  # polling another process's file: nothing to await here
    os.kill(pids[1], signal.SIGKILL)
    with proc:  # closes its pipes
        proc.wait(timeout=300)
        reader.join(10)
    text = "".join(lines)
    assert proc.returncode == 0, text
    assert "ray: worker 1 died" in text and "ray: worker 3 replaces worker 1" in text
    assert f"{N} done, 0 failed" in text
    got = ids(out)
    assert len(got) == len(set(got)) == N and set(got) == {f"q{i}" for i in range(N)}
    assert len(nodes) == 2  # the workers were spread over both nodes


def test_ray_local_starts_a_cluster_in_process_and_a_rerun_skips_everything(tmp_path: Path):
    p, out = prompts(tmp_path / "p.jsonl"), tmp_path / "r.jsonl"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    for rerun in (False, True):
        with batch(p, out, "local", env) as proc:
            _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert (f"0 done, 0 failed, {N} skipped" if rerun else f"{N} done, 0 failed") in err
    assert sorted(ids(out)) == sorted(f"q{i}" for i in range(N))


def test_the_worker_actor_has_no_coroutine_methods():
    # Ray makes an actor with any `async def` method an asyncio actor, whose calls run one
    # at a time on its event loop: a worker then ran one chunk at a time (a quarter of its
    # capacity in benchmarks/batch.py ray)
    import inspect

    from stairflow._batch.cluster import Worker

    assert not [name for name, f in inspect.getmembers(Worker, inspect.isfunction)
                if inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)]
