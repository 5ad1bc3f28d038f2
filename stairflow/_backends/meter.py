"""Rates measured on real endpoints: latency, prefill and decode speed per (endpoint, model).

Why: the no-regret step policy and ``steps = "auto"`` (`stairflow._core.policy`) need a
node's `Rates`. The simulator knows them exactly; a real server has to be watched. Sans-I/O:
the backend hands each finished request's timings to `Meter.add`; `Meter.rates` gives the
estimate. Times are the caller's clock (seconds), so a test feeds exact numbers.

Theory of operation. A request sent at ``t0`` whose first token comes at ``t1`` and whose
``n`` tokens end at ``t2`` gives:

- a decode sample ``(n - 1) / (t2 - t1)`` (one streamed delta is one token), when ``n >= 3``;
- a first-token sample ``(x, t1 - t0)`` with ``x`` the prompt tokens the server had to read
  (its ``prompt_tokens`` less the ``cached_tokens`` it reports; estimated from the prompt's
  characters when the server reports no usage). The model is ``t1 - t0 = latency + x /
  prefill``; a Theil-Sen line through the samples (the median of the pairwise slopes, then
  the median intercept) fits it and shrugs off the outliers a busy server gives: a request
  queued behind others, a slot that was busy.

Estimates use the last `WINDOW` samples of each kind, so they follow a server whose load
changes; they exist once two requests with prompts of different sizes have been seen (one
for the decode rate). Until then `rates` is None and a run takes its declared step budgets.
A `RateCache` file remembers the samples across runs, for a day (`MAX_AGE_S`), so a
command-line run starts with the rates the last one measured.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._core.policy import Rates
from .._prompts import Message

__all__ = ["MAX_AGE_S", "WINDOW", "EndpointRates", "Meter", "RateCache", "Sample"]

WINDOW = 64  # samples of each kind an estimate reads
MAX_AGE_S = 24 * 3600.0  # remembered samples older than this are dropped
CHARS_PER_TOKEN = 4.0  # before a server has reported a prompt's token count
MIN_SPREAD = 8  # prompt tokens two first-token samples must differ by to give a slope
# an output token read back in a later prompt may split into more prompt tokens (a word cut
# at a chunk's end): the measured ratio, with this margin, keeps the step rule on the safe side
READ_BACK_MARGIN = 1.25


@dataclass(frozen=True)
class Sample:
    """One request, as the backend saw it (times in seconds on one clock)."""

    sent: float
    first: float | None  # its first token (None: it wrote nothing)
    last: float | None  # its last token
    tokens: int  # streamed deltas
    prompt_chars: int
    output_chars: int
    prompt_tokens: int = 0  # as the server reported them (0: not reported)
    cached_tokens: int = 0


@dataclass(frozen=True)
class EndpointRates:
    """What stairflow measured of one (endpoint, model): the time from sending a request to
    its first token, less the prompt's reading (``latency_s``), prompt tokens read per
    second (``prefill_tps``), tokens written per second by one stream (``decode_tps``), and
    how many requests the estimate rests on. None where not measured yet."""

    base_url: str
    model: str
    latency_s: float | None
    prefill_tps: float | None
    decode_tps: float | None
    requests: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        def num(v: float | None, unit: str, fmt: str) -> str:
            return "?" if v is None else f"{v:{fmt}}{unit}"

        return (f"{self.model} at {self.base_url}: latency {num(self.latency_s, ' s', '.3f')}, "
                f"prefill {num(self.prefill_tps, ' tok/s', '.0f')}, decode "
                f"{num(self.decode_tps, ' tok/s', '.1f')} ({self.requests} requests)")


def theil_sen(points: Sequence[tuple[float, float]], min_dx: float) -> tuple[float, float] | None:
    """The robust line ``y = a + b x`` through ``points``: ``(a, b)``, or None when no two
    points are ``min_dx`` apart in x."""
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points)
              for x2, y2 in points[i + 1:] if abs(x2 - x1) >= min_dx]
    if not slopes:
        return None
    b = statistics.median(slopes)
    a = statistics.median(y - b * x for x, y in points)
    return a, b


class _Series:
    """The samples of one (endpoint, model)."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, Sample]] = deque(maxlen=WINDOW)  # (wall time, sample)

    def add(self, sample: Sample, wall: float) -> None:
        self.samples.append((wall, sample))

    def chars_per_token(self) -> float:
        ratios = [s.prompt_chars / s.prompt_tokens for _, s in self.samples
                  if s.prompt_tokens > 0 and s.prompt_chars > 0]
        return statistics.median(ratios) if ratios else CHARS_PER_TOKEN

    def decode_tps(self) -> float | None:
        rates = [(s.tokens - 1) / (s.last - s.first) for _, s in self.samples
                 if s.tokens >= 3 and s.first is not None and s.last is not None
                 and s.last > s.first]
        return statistics.median(rates) if rates else None

    def first_token_points(self) -> list[tuple[float, float]]:
        per_token = 1 / self.chars_per_token()
        points = []
        for _, s in self.samples:
            if s.first is None:
                continue
            read = (s.prompt_tokens - s.cached_tokens if s.prompt_tokens
                    else s.prompt_chars * per_token)
            points.append((float(max(read, 0)), s.first - s.sent))
        return points

    def latency_and_prefill(self) -> tuple[float | None, float | None]:
        line = theil_sen(self.first_token_points(), MIN_SPREAD)
        if line is None or line[1] <= 0:
            return None, None  # prompt sizes too alike yet, or noise hides the prefill
        return max(line[0], 0.0), 1 / line[1]

    def read_back(self) -> float:
        """Prompt tokens one output token becomes when the node's answer is read back."""
        per_token = 1 / self.chars_per_token()
        ratios = [s.output_chars / s.tokens * per_token for _, s in self.samples if s.tokens]
        return max(1.0, READ_BACK_MARGIN * statistics.median(ratios)) if ratios else 2.0


class Meter:
    """Samples and estimates per (endpoint, model); see the module docs."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _Series] = {}

    def add(self, base_url: str, model: str, sample: Sample, wall: float | None = None) -> None:
        series = self._series.setdefault((base_url, model), _Series())
        series.add(sample, time.time() if wall is None else wall)

    def endpoints(self) -> list[tuple[str, str]]:
        return sorted(self._series)

    def adopt(self, other: Meter, source: tuple[str, str], key: tuple[str, str]) -> None:
        """Take ``other``'s samples of ``source`` as the oldest of ``key`` (a cache file's
        samples, under the name they have there)."""
        found = other._series.get(source)
        if found is None:
            return
        series = self._series.setdefault(key, _Series())
        mine = list(series.samples)
        series.samples.clear()
        series.samples.extend([*found.samples, *mine])

    def replace(self, other: Meter, source: tuple[str, str], key: tuple[str, str]) -> None:
        """Make ``key``'s samples ``other``'s of ``source`` (when it has any)."""
        found = other._series.get(source)
        if found is not None and found.samples:
            series = self._series[key] = _Series()
            series.samples.extend(found.samples)

    def measured(self, base_url: str, model: str) -> EndpointRates:
        series = self._series.get((base_url, model), _Series())
        latency, prefill = series.latency_and_prefill()
        return EndpointRates(base_url, model, latency, prefill, series.decode_tps(),
                             len(series.samples))

    def rates(self, base_url: str, model: str) -> Rates | None:
        """The node-level `Rates` of the step policy, once latency, prefill and decode are
        all measured; None before."""
        series = self._series.get((base_url, model))
        if series is None:
            return None
        latency, prefill = series.latency_and_prefill()
        decode = series.decode_tps()
        if latency is None or prefill is None or decode is None:
            return None
        chars = series.chars_per_token()

        def count(messages: Sequence[Message], prefix: str) -> int:
            return math.ceil((sum(len(m.content) for m in messages) + len(prefix)) / chars)

        return Rates(prefill, decode, count, prompt_tokens_per_token=series.read_back(),
                     latency_s=latency)

    def export(self) -> dict[str, list[list[Any]]]:
        return {f"{url}\n{model}": [[wall, *asdict(s).values()] for wall, s in series.samples]
                for (url, model), series in self._series.items()}

    def load(self, data: Any, now: float, max_age_s: float = MAX_AGE_S) -> None:
        """Samples from `export` (a cache file), the fresh ones only; a malformed entry is
        skipped, not an error (the cache is only a head start)."""
        if not isinstance(data, dict):
            return
        for key, rows in data.items():
            if not isinstance(key, str) or "\n" not in key or not isinstance(rows, list):
                continue
            url, model = key.split("\n", 1)
            for row in rows:
                try:
                    wall, *fields = row
                    sample = Sample(*fields)
                    ok = (now - float(wall) <= max_age_s and sample.tokens >= 0
                          and all(isinstance(v, int | float | None) for v in fields))
                except (TypeError, ValueError):
                    continue
                if ok:
                    self.add(url, model, sample, float(wall))


class RateCache:
    """A `Meter`'s samples in a small JSON file, kept across runs (see `MAX_AGE_S`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load_into(self, meter: Meter) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        meter.load(data, time.time())

    def save(self, meter: Meter) -> None:
        """Write atomically (another process may be reading); a cache that cannot be written
        is not worth failing a run for."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".rates-")
            with os.fdopen(fd, "w") as f:
                json.dump(meter.export(), f)
            os.replace(tmp, self.path)
        except OSError:
            pass
