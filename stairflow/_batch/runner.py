"""Running a batch in one Trio loop: `open_batch` inside Trio, `run_batch` from plain code.

Theory of operation. A feeder task streams the prompts, skips the (id, mode) pairs the results
file holds, and hands the rest to ``concurrency`` worker tasks through a channel that holds
at most ``concurrency`` of them: memory stays bounded however long the input. Each worker
runs one prompt at a time on the batch's one backend (so a local model starts once and a
server's connections are reused), retries a run that failed with a transient backend error,
and appends its result to the results file the moment it finishes. A run that fails for good
is recorded with its one-line error and the batch goes on; a bad set-up (`ConfigError`) ends
the batch, since every prompt would fail the same way, and so does an endpoint that refuses
every connection (`Breaker`): its failures are not recorded, so that a rerun does them.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Unpack

import trio
import trio.testing

from .._backends.base import Backend, describe_backend
from .._backends.redact import redact_data
from .._backends.select import BackendChoice, EndpointOptions, open_backend
from .._backends.sim import SimBackend
from .._backends.slots import Slots
from .._errors import BackendError, ConfigError, RunError, unwrap
from .._graph import FrozenGraph, Graph, Mode
from .._runtime.clock import is_virtual
from .._runtime.run import open_run, prepare
from .prompts import Prompt, PromptSource, check_prompts, id_key, read_prompts
from .results import ResultsFile

__all__ = ["MODES", "Batch", "BatchMode", "BatchSummary", "Breaker", "Job", "default_concurrency",
           "jobs", "open_batch", "run_batch", "run_one", "setup"]

BatchMode = Literal["staircase", "normal", "both"]
MODES: Mapping[str, tuple[Mode, ...]] = {"staircase": ("staircase",), "normal": ("normal",),
                                         "both": ("staircase", "normal")}
RETRY_S = 1.0  # first wait before a prompt's run is retried; doubles up to MAX_RETRY_S
MAX_RETRY_S = 30.0
SAMPLE = 10_000  # TTFTs kept for the p50 (a uniform sample: memory stays bounded)
SIM_CONCURRENCY = 256
ENDPOINT_CONCURRENCY = 16
REFUSED_IN_A_ROW = 8  # prompts that could not connect, after their retries: the batch stops


@dataclass(frozen=True)
class Job:
    """One prompt in one mode."""

    prompt: Prompt
    mode: Mode


@dataclass
class Batch:
    """A batch in progress: live counters (read them any time), and `cancel`."""

    graph: str
    modes: tuple[Mode, ...]
    results: Path
    total: int  # (prompt, mode) pairs in the input
    skipped: int  # of them, already in the results file
    concurrency: int = 0
    backend: str = ""
    simulated: bool = False
    done: int = 0  # results written by this batch (failures included)
    failed: int = 0
    retried: int = 0  # runs tried again after a transient error
    in_flight: int = 0
    output_tokens: int = 0
    started: float = 0.0  # trio time
    ended: float | None = None
    virtual: bool = False  # the clock is Trio's MockClock: times are simulated ones
    interrupted: bool = False
    stopped: str | None = None  # why the batch stopped before its end (see `Breaker`)
    on_result: Callable[[Mapping[str, Any]], None] | None = None
    _ttfts: list[float] = field(default_factory=list)
    _seen_ttfts: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))
    _scope: trio.CancelScope | None = None
    _last: float = 0.0  # when the last result was written
    clock: Callable[[], float] = trio.current_time  # Ray's driver counts in wall time

    def cancel(self) -> None:
        """Stop: runs in flight are abandoned (a rerun does them), written results stay."""
        self.interrupted = True
        if self._scope is not None:
            self._scope.cancel()

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.done

    def ttft_p50(self) -> float | None:
        if not self._ttfts:
            return None
        ordered = sorted(self._ttfts)
        return ordered[(len(ordered) - 1) // 2]

    def write(self, file: ResultsFile, record: dict[str, Any],
              breaker: Breaker | None = None, started: float = 0.0) -> bool:
        """Write a result (through ``breaker``, which may hold it back; its run began at
        ``started``); False when the breaker says the batch must stop (`stopped` says why)."""
        if self.stopped is not None:
            return False
        records = ([record] if breaker is None
                   else breaker.take(record, started, self.clock()))
        if records is None:
            self.stopped = breaker.why() if breaker is not None else ""
            return False
        for one in records:
            if file.write(one):
                self._count(one)
        return True

    def _count(self, record: Mapping[str, Any]) -> None:
        self._last = self.clock()
        self.done += 1
        self.failed += record["error"] is not None
        self.output_tokens += record.get("output_tokens") or 0
        ttft = record.get("ttft_s")
        if ttft is not None:  # reservoir sampling
            self._seen_ttfts += 1
            if len(self._ttfts) < SAMPLE:
                self._ttfts.append(ttft)
            else:
                i = self._rng.randrange(self._seen_ttfts)
                if i < SAMPLE:
                    self._ttfts[i] = ttft
        if self.on_result is not None:
            self.on_result(record)

    def summary(self) -> BatchSummary:
        end = self.ended
        if end is None:  # still going; or interrupted, and read outside Trio
            end = (self.clock() if self.clock is not trio.current_time or _in_trio()
                   else max(self._last, self.started))
        elapsed = max(0.0, end - self.started)
        return BatchSummary(
            graph=self.graph, modes=self.modes, results=str(self.results),
            backend=self.backend, simulated=self.simulated, concurrency=self.concurrency,
            total=self.total, skipped=self.skipped, done=self.done, failed=self.failed,
            retried=self.retried, remaining=self.remaining, elapsed_s=elapsed,
            prompts_per_s=self.done / elapsed if elapsed > 0 else 0.0,
            ttft_p50_s=self.ttft_p50(), output_tokens=self.output_tokens,
            virtual=self.virtual, interrupted=self.interrupted, stopped=self.stopped)


@dataclass(frozen=True)
class BatchSummary:
    """What a batch did: counts are (prompt, mode) pairs; ``done`` counts the results this
    batch wrote (failures too), ``skipped`` those the file held already, ``remaining`` those
    left for a rerun (an interrupted batch)."""

    graph: str
    modes: tuple[str, ...]
    results: str
    backend: str
    simulated: bool
    concurrency: int
    total: int
    skipped: int
    done: int
    failed: int
    retried: int
    remaining: int
    elapsed_s: float
    prompts_per_s: float
    ttft_p50_s: float | None
    output_tokens: int
    virtual: bool = False  # times are the simulator's, in virtual time
    interrupted: bool = False
    stopped: str | None = None  # why the batch stopped before its end (nothing to resume)

    def describe(self) -> str:
        """Two lines for a person: what was done, and where it is."""
        ttft = "-" if self.ttft_p50_s is None else f"{self.ttft_p50_s:.3f} s"
        modes = "+".join(self.modes)
        lines = [
            f"{self.graph} ({modes}): {self.done} done, {self.failed} failed, {self.skipped} "
            f"skipped (in the file already), {self.remaining} left of {self.total} | "
            f"{self.elapsed_s:.1f} s{' (virtual)' if self.virtual else ''}, "
            f"{self.prompts_per_s:.1f}/s | TTFT p50 {ttft} | "
            f"{self.retried} retried",
            f"results: {self.results}"
            + (" (interrupted: run the same command again to resume)" if self.remaining
               and not self.stopped else ""),
        ]
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        if self.failed:
            lines.append("failed prompts have \"error\" set; --retry-failed runs them again")
        return "\n".join(lines)


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def default_concurrency(backend: Backend, graph: FrozenGraph) -> int:
    """Runs in flight: many on the simulator; on llama.cpp servers, as many as their slots
    hold whole runs (each node keeps its own slot: see slot pinning in docs/backends.md);
    `ENDPOINT_CONCURRENCY` on other servers."""
    if describe_backend(backend).simulated:
        return SIM_CONCURRENCY
    slots: Mapping[str, Slots | None] = getattr(backend, "slots", {})
    endpoint_for = getattr(backend, "endpoint_for", None)
    nodes = graph.llm_nodes()
    if not nodes or not callable(endpoint_for):
        return ENDPOINT_CONCURRENCY
    per_url: dict[str, int] = {}
    for n in nodes:
        url = endpoint_for(n.name, n.model).base_url
        per_url[url] = per_url.get(url, 0) + 1
    fits = [held.n // k for u, k in per_url.items() if (held := slots.get(u)) is not None]
    return max(1, min(fits)) if fits else ENDPOINT_CONCURRENCY


def record_of(job: Job, graph: str, simulated: bool, attempts: int,
              report: Any = None, error: str | None = None,
              error_kind: str | None = None) -> dict[str, Any]:
    """One line of the results file."""
    out: dict[str, Any] = {"id": job.prompt.id, "mode": job.mode, "graph": graph}
    if report is None:
        out |= {"output": None, "ttft_s": None, "total_s": None, "output_tokens": 0,
                "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0,
                "llm_calls": 0}
    else:
        out |= {"output": report.output, "ttft_s": _round(report.ttft_s),
                "total_s": _round(report.total_s), "output_tokens": report.output_tokens,
                "prompt_tokens": report.prompt_tokens, "cached_tokens": report.cached_tokens,
                "completion_tokens": report.completion_tokens, "llm_calls": report.llm_calls}
    out |= {"attempts": attempts, "simulated": simulated, "error": error,
            "error_kind": error_kind}
    return out


UNREACHABLE = ("connect", "broken")  # error kinds of an endpoint that is down (or went down)


class Breaker:
    """Stops a batch whose endpoint refuses every connection (or has gone down), rather than
    recording each prompt's failure after its retries, for hours.

    A result that could not reach its endpoint (``error_kind`` "connect", or "broken": the
    connection broke mid-answer) is held back, unless an answer came after its run began (the
    endpoint answers others: this prompt's failure is its own, and is written). Any other
    result is an answer, and releases what was held to be written. `REFUSED_IN_A_ROW` held
    (fewer for a batch that runs fewer at once) stop the batch, unwritten, so that the same
    command resumes once the server is up. Times are the caller's clock's."""

    def __init__(self, concurrency: int) -> None:
        self.limit = max(3, min(REFUSED_IN_A_ROW, concurrency))
        self.held: list[dict[str, Any]] = []
        self.last_answer = -math.inf  # when the endpoint last answered (any other result)

    def take(self, record: dict[str, Any], started: float,
             now: float) -> list[dict[str, Any]] | None:
        """The records to write now (``record``'s run began at ``started``, and ended
        ``now``); None when the batch must stop."""
        if record.get("error_kind") in UNREACHABLE:
            if started < self.last_answer:
                return [record]
            self.held.append(record)
            return None if len(self.held) >= self.limit else []
        self.last_answer = now
        out, self.held = [*self.held, record], []
        return out

    def why(self) -> str:
        last = self.held[-1]
        tries = last["attempts"]
        return (f"{len(self.held)} prompts in a row could not reach their endpoint (each run "
                f"tried {tries} time{'s' if tries != 1 else ''}; the last: {last['error']}); "
                "they are not recorded: once the server is up, run the same command again to "
                "resume")


def _round(t: float | None) -> float | None:
    return None if t is None else round(t, 6)


async def run_one(graph: FrozenGraph, job: Job, backend: Backend, retries: int,
                  on_retry: Callable[[], None] | None = None) -> dict[str, Any]:
    """One prompt's result: its run, tried again (after a growing wait) while it fails with a
    transient backend error, at most ``retries`` times."""
    info = describe_backend(backend)
    attempt = 1
    while True:
        try:
            async with open_run(graph, job.prompt.message, backend=backend,
                                mode=job.mode) as run:
                pass
        except BackendError as exc:
            if not exc.transient or attempt > retries:
                return record_of(job, graph.name, info.simulated, attempt, error=str(exc),
                                 error_kind=exc.kind)
            await trio.sleep(min(RETRY_S * 2 ** (attempt - 1), MAX_RETRY_S)
                             * random.uniform(0.75, 1.0))
            attempt += 1
            if on_retry is not None:
                on_retry()
            continue
        except RunError as exc:
            return record_of(job, graph.name, info.simulated, attempt, error=str(exc),
                             error_kind="node")
        record = record_of(job, graph.name, info.simulated, attempt, run.report())
        return redact_data(record, run.secrets)  # type: ignore[no-any-return]


def jobs(source: PromptSource, modes: Sequence[Mode], results: ResultsFile) -> Any:
    """The (prompt, mode) pairs the results file does not hold yet, streamed."""
    for prompt in read_prompts(source):
        for mode in modes:
            if not results.has(prompt.id, mode):
                yield Job(prompt, mode)


def setup(graph: Graph | FrozenGraph, prompts: PromptSource, results: str | os.PathLike[str],
           mode: str, concurrency: int | None, retries: int, retry_failed: bool
           ) -> tuple[dict[Mode, FrozenGraph], PromptSource, ResultsFile, int, int]:
    """Check everything a batch is given, before any run; (graphs per mode, prompts, the open
    results file, the pairs in the input, those of them the file holds)."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}; use one of {', '.join(MODES)}")
    if concurrency is not None and (isinstance(concurrency, bool)
                                    or not isinstance(concurrency, int) or concurrency < 1):
        raise ConfigError(f"concurrency={concurrency!r}; use a whole number of runs >= 1")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries={retries!r}; use a whole number >= 0")
    if not isinstance(results, str | os.PathLike) or not os.fspath(results):
        raise ConfigError(f"results={results!r}; give the path of the JSON-lines file the "
                          "results go to")
    frozen = {m: prepare(graph, m) for m in MODES[mode]}
    prompts = _prompt_source(prompts)
    name = next(iter(frozen.values())).name
    file = ResultsFile.read(results, name)  # checked; nothing written yet
    skipped = 0
    again: set[tuple[str, str]] = set()  # failed pairs of this input, to run again

    def held(prompt: Prompt) -> None:
        nonlocal skipped
        for m in frozen:
            key = (id_key(prompt.id), m)
            if retry_failed and key in file.failed:
                again.add(key)
            elif key in file.done:
                skipped += 1

    count = check_prompts(prompts, held)
    file.begin(again)
    return frozen, prompts, file, count * len(frozen), skipped


def _prompt_source(prompts: object) -> PromptSource:
    """The prompts as a path or a list (a one-shot iterable is read into a list: a batch
    reads its prompts twice)."""
    if isinstance(prompts, str | os.PathLike):
        path = os.fspath(prompts)
        if isinstance(prompts, str) and not os.path.exists(path) and (
                " " in path or "?" in path):
            raise ConfigError(f"prompts={_short(path)!r}: no such file; to run one prompt, "
                              "give a list: prompts=[\"...\"]")
        return prompts
    if prompts is None or isinstance(prompts, bytes | Mapping) or not isinstance(
            prompts, Iterable):
        raise ConfigError(f"prompts={type(prompts).__name__}; give a JSON-lines file's path "
                          "or a list of prompts (strings or {\"id\": ..., \"prompt\": ...})")
    return list(prompts)


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


@asynccontextmanager
async def open_batch(
    graph: Graph | FrozenGraph,
    prompts: PromptSource,
    results: str | os.PathLike[str],
    *,
    backend: BackendChoice | Backend | None = None,
    mode: BatchMode = "staircase",
    concurrency: int | None = None,
    retries: int = 2,
    retry_failed: bool = False,
    on_result: Callable[[Mapping[str, Any]], None] | None = None,
    **options: Unpack[EndpointOptions],
) -> AsyncIterator[Batch]:
    """Run a batch inside Trio; leaving the block waits for it to end (or `Batch.cancel` it).

    ``prompts``: a JSON-lines file (see `stairflow._batch.prompts`) or a list of prompts;
    ``results``: the JSON-lines file each result is appended to as it finishes. Pairs the
    file holds already are skipped, so the same call resumes an interrupted batch;
    ``retry_failed`` runs those recorded with an error again. ``backend`` and ``options`` as
    for `open_run`; ``on_result`` is called with each result as it is written.
    """
    frozen, source, file, total, skipped = setup(graph, prompts, results, mode, concurrency,
                                                  retries, retry_failed)
    first = next(iter(frozen.values()))
    batch = Batch(first.name, tuple(frozen), file.path, total, skipped, on_result=on_result)
    try:
        if is_virtual() and first.llm_nodes() and (backend is None or backend in (
                "auto", "local", "openai")):
            raise ConfigError("a batch in virtual time (MockClock) needs the simulated "
                              "backend: pass backend='sim' or a SimBackend")
        async with open_backend(first, backend, **options) as chosen:
            warm_up = getattr(chosen, "warm_up", None)
            if callable(warm_up):
                await warm_up([(n.name, n.model) for n in first.llm_nodes()])
            info = describe_backend(chosen)
            batch.backend, batch.simulated = info.name, info.simulated
            # never more workers than runs to do: each is a task, and a big number costs
            batch.concurrency = max(1, min(concurrency or default_concurrency(chosen, first),
                                           total - skipped))
            batch.started = trio.current_time()
            batch.virtual = is_virtual()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_drive, batch, frozen, source, file, chosen, retries)
                    yield batch
            except BaseExceptionGroup as group:  # the one error (or Ctrl-C), not a group
                raise unwrap(group) from None
            batch.ended = trio.current_time()
    finally:
        file.close()


async def _drive(batch: Batch, frozen: Mapping[Mode, FrozenGraph], source: PromptSource,
                 file: ResultsFile, backend: Backend, retries: int) -> None:
    def retried() -> None:
        batch.retried += 1

    breaker = Breaker(batch.concurrency)

    async def work(recv: trio.MemoryReceiveChannel[Job]) -> None:
        async with recv:
            async for job in recv:
                batch.in_flight += 1
                started = trio.current_time()
                try:
                    record = await run_one(frozen[job.mode], job, backend, retries, retried)
                finally:
                    batch.in_flight -= 1
                if not batch.write(file, record, breaker, started):
                    scope.cancel()

    async def feed(send: trio.MemorySendChannel[Job]) -> None:
        async with send:
            for job in jobs(source, tuple(frozen), file):
                await send.send(job)

    with trio.CancelScope() as scope:
        batch._scope = scope
        send, recv = trio.open_memory_channel[Job](batch.concurrency)
        async with trio.open_nursery() as nursery, recv:
            nursery.start_soon(feed, send)
            for _ in range(batch.concurrency):
                nursery.start_soon(work, recv.clone())
    if batch.stopped is None and not batch.interrupted:  # fewer than the limit, at the end
        for record in breaker.held:
            batch.write(file, record)
    batch.ended = trio.current_time()


def run_batch(
    graph: Graph | FrozenGraph,
    prompts: PromptSource,
    results: str | os.PathLike[str],
    *,
    backend: BackendChoice | Backend | None = None,
    mode: BatchMode = "staircase",
    concurrency: int | None = None,
    retries: int = 2,
    retry_failed: bool = False,
    virtual_clock: bool = False,
    on_result: Callable[[Mapping[str, Any]], None] | None = None,
    **options: Unpack[EndpointOptions],
) -> BatchSummary:
    """Run ``graph`` over every prompt from plain (non-Trio) code; the batch's summary.

    Arguments as for `open_batch`; ``virtual_clock=True`` runs the simulated backend in
    virtual time (exact timings, no waiting). Ctrl-C stops it with ``KeyboardInterrupt``;
    what was written stays, and the same call resumes.
    """
    if _in_trio():
        raise ConfigError("sf.run_batch() cannot run inside Trio; use `async with "
                          "sf.open_batch(...)`")
    if virtual_clock:
        backend = "sim" if backend is None else backend
        if isinstance(backend, str) and backend not in ("sim", "simulated"):
            raise ConfigError(f"the virtual clock needs the simulated backend, not {backend!r}")
        if not isinstance(backend, str) and not isinstance(backend, SimBackend) and \
                not describe_backend(backend).simulated:
            raise ConfigError("the virtual clock needs a simulated backend")

    async def main() -> BatchSummary:
        async with open_batch(graph, prompts, results, backend=backend, mode=mode,
                              concurrency=concurrency, retries=retries,
                              retry_failed=retry_failed, on_result=on_result,
                              **options) as batch:
            pass
        return batch.summary()

    clock = trio.testing.MockClock(autojump_threshold=0) if virtual_clock else None
    return trio.run(main, clock=clock)

