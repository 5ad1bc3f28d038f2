"""A batch on a Ray cluster: `run_on_ray` (``stairflow batch ... --ray ADDRESS``).

Theory of operation. This process (the driver) does what needs one owner: it checks the
prompts, streams them, and is the only writer of the results file, so the file's guarantees
(whole lines, no duplicates, resumable: see `results`) hold as they do on one process. Ray
actors do the runs: each worker process keeps one Trio loop on a thread of its own, with one
backend open for all its runs, and takes small chunks of prompts; Ray calls arrive on the
actor's threads and hand their chunk to that loop (``trio.from_thread``), so a worker runs
as many prompts at once as its concurrency allows. A chunk's results come back together and
are written at once. A worker that dies loses only the chunks it held, none written yet:
they go to the other workers (a new worker takes the dead one's place, up to as many new
ones as there were workers), so no prompt is lost and none is written twice.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from typing import Any

import trio
import trio.testing

from .._backends.base import Backend, describe_backend
from .._backends.select import BackendChoice, open_backend
from .._errors import ConfigError, RunError, StairflowError
from .._graph import FrozenGraph, Graph, Mode
from .prompts import PromptSource
from .results import ResultsFile
from .runner import (
    Batch,
    BatchMode,
    BatchSummary,
    Breaker,
    Job,
    default_concurrency,
    jobs,
    run_one,
    setup,
)

__all__ = ["run_on_ray"]

CHUNK = 8  # prompts per Ray call, at most (a quarter of a worker's concurrency, at least 1)
WAIT_S = 0.5  # the driver looks up from ray.wait this often (Ctrl-C is seen at once anyway)


class Worker:
    """One Ray actor: a Trio loop on its own thread with the batch's backend open."""

    def __init__(self, graphs: Mapping[Mode, FrozenGraph], backend: BackendChoice | Backend,
                 options: Mapping[str, Any], retries: int, virtual: bool,
                 concurrency: int | None) -> None:
        self.graphs, self.retries = graphs, retries
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.info: dict[str, Any] = {}

        async def main() -> None:
            first = next(iter(graphs.values()))
            try:
                async with open_backend(first, backend, **options) as chosen:
                    warm_up = getattr(chosen, "warm_up", None)
                    if callable(warm_up):
                        await warm_up([(n.name, n.model) for n in first.llm_nodes()])
                    self._backend = chosen
                    limit = concurrency or default_concurrency(chosen, first)
                    self._limit = trio.CapacityLimiter(limit)
                    described = describe_backend(chosen)
                    self.info = {"pid": os.getpid(), "node": _node(),
                                 "backend": described.name, "simulated": described.simulated,
                                 "concurrency": limit}
                    self._token = trio.lowlevel.current_trio_token()
                    self._stop = trio.Event()
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._ready.set()

        def loop() -> None:
            clock = trio.testing.MockClock(autojump_threshold=0) if virtual else None
            with suppress(BaseException):  # kept in self._error: ready() raises it
                trio.run(main, clock=clock)

        threading.Thread(target=loop, name="stairflow-batch", daemon=True).start()

    def ready(self) -> dict[str, Any]:
        """Where this worker runs and with what (raises what stopped it from starting)."""
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self.info

    def run(self, chunk: list[Job]) -> list[dict[str, Any]]:
        """The chunk's results, run concurrently on this worker's loop (Ray calls this on
        one of the actor's threads, several at once)."""
        return trio.from_thread.run(_run_chunk, self, chunk, trio_token=self._token)

    def close(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)


async def _run_chunk(worker: Worker, chunk: list[Job]) -> list[dict[str, Any]]:
    """A function, not a method: Ray makes an actor with any ``async def`` method an asyncio
    actor, whose calls would all run on one event loop, one at a time."""
    out: list[dict[str, Any]] = [{} for _ in chunk]

    async def one(i: int, job: Job) -> None:
        async with worker._limit:
            out[i] = await run_one(worker.graphs[job.mode], job, worker._backend,
                                   worker.retries)

    async with trio.open_nursery() as nursery:
        for i, job in enumerate(chunk):
            nursery.start_soon(one, i, job)
    return out


def _ray() -> Any:
    """Ray, typed as Any (it has no type hints; and it is an optional extra)."""
    return importlib.import_module("ray")


def _node() -> str:
    """The worker's node: its IP address and the start of Ray's id for it (several nodes of
    a test cluster share one address)."""
    ray = _ray()
    return (f"{ray.util.get_node_ip_address()} "
            f"(node {ray.get_runtime_context().get_node_id()[:8]})")


def _connect(ray: Any, address: str) -> bool:
    """Join the cluster at ``address`` (``local``: start one here); whether we started it."""
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                             "include_dashboard": False, "configure_logging": True}
    try:
        if address == "local":
            ray.init(**quiet)
        else:
            quiet.pop("include_dashboard")
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--ray {address}: cannot join the cluster ({first}); start one "
                          "with 'ray start --head', or give --ray local") from None
    return True


class _Pool:
    """The driver's view of the workers: chunks in flight, deaths, replacements."""

    def __init__(self, ray: Any, actor: Any, count: int, args: tuple[Any, ...],
                 log: Callable[[str], None]) -> None:
        self.ray, self.actor, self.args, self.log = ray, actor, args, log
        self.alive: dict[int, Any] = {}
        self.info: dict[int, dict[str, Any]] = {}
        self.spares = count  # new workers that may still take a dead one's place
        self.started = 0
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self.cpus = min(1.0, cpus / count)  # each worker's share: all of them fit
        for _ in range(count):
            self._start()
        refs = {i: a.ready.remote() for i, a in self.alive.items()}
        for i, ref in refs.items():
            self._ready(i, ref)

    def _start(self) -> int:
        self.started += 1
        i = self.started
        self.alive[i] = self.actor.options(
            num_cpus=self.cpus, max_concurrency=1024, scheduling_strategy="SPREAD",
        ).remote(*self.args)
        return i

    def _ready(self, i: int, ref: Any) -> None:
        try:
            self.info[i] = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None
        w = self.info[i]
        self.log(f"ray: worker {i} ready: pid {w['pid']} on {w['node']}, {w['concurrency']} "
                 f"runs at once ({w['backend']})")

    def replace(self, i: int, why: str, lost: int) -> None:
        """Worker ``i`` died: forget it and start another, while spares last."""
        if i not in self.alive:
            return
        del self.alive[i]
        self.log(f"ray: worker {i} died ({why}); its {lost} prompts run again on the others")
        if self.spares > 0:
            self.spares -= 1
            j = self._start()
            self.log(f"ray: worker {j} replaces worker {i}")
            self._ready(j, self.alive[j].ready.remote())
        if not self.alive:
            raise RunError("every Ray worker died; the results so far are kept: run the same "
                           "command again to resume")

    def close(self) -> None:
        for a in self.alive.values():
            a.close.remote()


def _cause(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, without Ray's wrapping (a one-line message)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def run_on_ray(
    graph: Graph | FrozenGraph,
    prompts: PromptSource,
    results: str | os.PathLike[str],
    *,
    address: str = "local",
    workers: int | None = None,
    backend: BackendChoice | Backend | None = None,
    mode: BatchMode = "staircase",
    concurrency: int | None = None,
    retries: int = 2,
    retry_failed: bool = False,
    virtual_clock: bool = False,
    on_result: Callable[[Mapping[str, Any]], None] | None = None,
    on_start: Callable[[Batch], None] | None = None,
    log: Callable[[str], None] = lambda line: None,
    **options: Any,
) -> BatchSummary:
    """`run_batch` on a Ray cluster: ``address`` (``"local"`` starts one in this process),
    ``workers`` worker processes (default: the cluster's CPUs), each running ``concurrency``
    prompts at once. The results file is written here, with the same guarantees."""
    try:
        ray = _ray()
    except ImportError:
        raise ConfigError("--ray needs Ray; install it: pip install 'stairflow[ray]'") from None
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ConfigError(f"workers={workers!r}; use a whole number of workers >= 1")
    if virtual_clock and (backend is None or backend in ("auto", "local", "openai")):
        if backend is None or backend == "auto":
            backend = "sim"
        else:
            raise ConfigError(f"the virtual clock needs the simulated backend, not {backend!r}")
    frozen, source, file, total, skipped = setup(graph, prompts, results, mode, concurrency,
                                                  retries, retry_failed)
    first = next(iter(frozen.values()))
    batch = Batch(first.name, tuple(frozen), file.path, total, skipped, on_result=on_result,
                  clock=time.monotonic)
    try:
        started_here = _connect(ray, address)
        pool = None
        try:
            count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            nodes = len([n for n in ray.nodes() if n.get("Alive")])
            log(f"ray: {count} workers on a cluster of {nodes} node{'s' * (nodes != 1)}")
            actor = ray.remote(Worker)
            graphs = ray.put(dict(frozen))
            pool = _Pool(ray, actor, count, (graphs, backend or "auto", options, retries,
                                             virtual_clock, concurrency), log)
            w = next(iter(pool.info.values()))
            per = w["concurrency"]
            batch.backend, batch.simulated = w["backend"], w["simulated"]
            batch.concurrency = per * count
            batch.started = time.monotonic()
            if on_start is not None:
                on_start(batch)
            _drive(ray, pool, jobs(source, tuple(frozen), file), file, batch, per)
            batch.ended = time.monotonic()
        except KeyboardInterrupt:
            batch.interrupted = True
            raise
        finally:
            if pool is not None:
                pool.close()
            if started_here:
                ray.shutdown()
    finally:
        file.close()
    return batch.summary()


def _drive(ray: Any, pool: _Pool, feed: Iterator[Job], file: ResultsFile, batch: Batch,
           per: int) -> None:
    """Keep every worker busy with chunks; write each chunk's results as it comes back."""
    size = max(1, min(CHUNK, per // 4))
    depth = math.ceil(per / size) + 1  # chunks in flight per worker: a little more than it runs
    again: deque[list[Job]] = deque()  # chunks a dead worker held
    pending: dict[Any, tuple[int, list[Job]]] = {}
    flying: dict[int, int] = {}

    breaker = Breaker(batch.concurrency)
    sent: dict[Any, float] = {}

    def chunk() -> list[Job]:
        if again:
            return again.popleft()
        return [job for _, job in zip(range(size), feed, strict=False)]

    while True:
        for i in list(pool.alive):
            while flying.get(i, 0) < depth and (part := chunk()):
                ref = pool.alive[i].run.remote(part)
                pending[ref] = (i, part)
                sent[ref] = batch.clock()  # when its runs began, near enough (see Breaker)
                flying[i] = flying.get(i, 0) + 1
                batch.in_flight += len(part)
        if not pending:
            for record in breaker.held:  # the last could not connect, fewer than the limit
                batch.write(file, record)
            return
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
        for ref in ready:
            i, part = pending.pop(ref)
            began = sent.pop(ref)
            flying[i] -= 1
            batch.in_flight -= len(part)
            try:
                records = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                again.append(part)
                lost = len(part) + sum(len(p) for w, p in pending.values() if w == i)
                pool.replace(i, _why(exc), lost)
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = _cause(exc)
                if isinstance(cause, StairflowError):
                    raise cause from None
                raise
            for record in records:
                batch.retried += record["attempts"] - 1
                if not batch.write(file, record, breaker, began):
                    return


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__
