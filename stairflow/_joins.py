"""Join policies: when a node with several inputs takes its next step. Sans-I/O.

An input is *open* until its last chunk has arrived, and *pending* while it holds chunks the
node has not consumed yet. The inputs that still matter for a step are the *candidates*: open
or pending. A policy looks only at which candidates are pending:

- ``all``: every candidate is pending (the paper's rule: the next chunk of every input still
  running);
- ``any``: at least one is pending;
- ``quorum(k)``: at least ``min(k, candidates)`` are pending.

With ``max_wait_s`` a node waiting on stragglers proceeds with what it has once that long has
passed since it became ready with at least one pending input. With ``straggler`` (a factor
``f``) it waits for stragglers at most ``f`` times as long as its first new chunk took: a
node whose previous step started at ``s`` (the run's start, before its first step) and
whose first new chunk arrived at ``t`` proceeds at ``t + f * (t - s)``, or as soon as it is
ready if that has passed. That adapts to the pace of the run (a fixed ``max_wait_s`` is too
long on a fast server and too short on a slow one). With both, whichever comes first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import GraphError

__all__ = ["Join", "join_all", "join_any", "parse_join", "quorum"]


@dataclass(frozen=True)
class Join:
    """A join policy (build one with `join_all`, `join_any` or `quorum`)."""

    policy: Literal["all", "any", "quorum"] = "all"
    k: int = 0
    max_wait_s: float | None = None
    straggler: float | None = None

    @property
    def waits(self) -> bool:
        """Whether the node may step before its rule holds (a straggler timeout or factor)."""
        return self.max_wait_s is not None or self.straggler is not None

    def deadline(self, ready: float, first: float, stepped: float) -> float | None:
        """When a node ready since ``ready``, whose oldest pending chunk came at ``first``
        and whose previous step started at ``stepped`` (the run's start before its first),
        goes on without its stragglers (None: it waits for them)."""
        due = [max(ready, first) + self.max_wait_s] if self.max_wait_s is not None else []
        if self.straggler is not None:
            due.append(max(ready, first + self.straggler * (first - stepped)))
        return min(due) if due else None

    def on_part(self, inputs: int) -> bool:
        """Whether a node with ``inputs`` inputs may take its first step before all of them
        have ended (``any``, ``quorum(k)`` with ``k`` below ``inputs``, a straggler timeout or
        factor); with one input, no join can."""
        if inputs < 2:
            return False
        return self.waits or self.policy == "any" or (self.policy == "quorum"
                                                       and self.k < inputs)

    def first_due(self, ends: Sequence[float], inputs: int, start: float) -> float | None:
        """When normal mode's first step starts, as far as the ends seen so far tell: there
        each of the ``inputs`` arrives whole when it ends (``ends``: those that have ended,
        in any order), the join counts ended inputs, and a straggler timeout or factor counts
        from the first end (``start``: when the node began waiting). None: not before
        another input ends."""
        if not ends:
            return None
        ordered = sorted(ends)
        due = [t for m, t in enumerate(ordered, 1) if self.satisfied(m, inputs)][:1]
        timer = self.deadline(start, ordered[0], start)
        if timer is not None:
            due.append(timer)
        return min(due) if due else None

    def satisfied(self, pending: int, candidates: int) -> bool:
        """Whether a step may start, given how many candidate inputs are pending."""
        if pending == 0:
            return False
        if self.policy == "all":
            return pending >= candidates
        if self.policy == "any":
            return True
        return pending >= min(self.k, candidates)

    def describe(self) -> str:
        base = f"quorum({self.k})" if self.policy == "quorum" else self.policy
        if self.max_wait_s is not None:
            base += f", max wait {self.max_wait_s:g}s"
        if self.straggler is not None:
            base += f", straggler {self.straggler:g}x"
        return base

    def to_config(self) -> Any:
        if self.policy == "quorum":
            table: dict[str, Any] = {"quorum": self.k}
        elif not self.waits:
            return self.policy
        else:
            table = {"policy": self.policy}
        if self.max_wait_s is not None:
            table["max_wait_s"] = self.max_wait_s
        if self.straggler is not None:
            table["straggler"] = self.straggler
        return table


def _check_wait(max_wait_s: float | None) -> float | None:
    if max_wait_s is None:
        return None
    if (isinstance(max_wait_s, bool) or not isinstance(max_wait_s, int | float)
            or not 0 < max_wait_s < math.inf):  # also false for nan
        raise GraphError(f"max_wait_s={max_wait_s!r}: must be a number of seconds > 0")
    return float(max_wait_s)


def _check_straggler(straggler: float | None) -> float | None:
    if straggler is None:
        return None
    if (isinstance(straggler, bool) or not isinstance(straggler, int | float)
            or not 0 <= straggler < math.inf):
        raise GraphError(f"straggler={straggler!r}: must be a factor >= 0, e.g. 2.0 (wait for "
                         "a straggler at most twice as long as the first input took)")
    return float(straggler)


def join_all(max_wait_s: float | None = None, *, straggler: float | None = None) -> Join:
    """Step when every input still running has a new chunk (the paper's rule); see the
    module docs for ``max_wait_s`` and ``straggler``."""
    return Join("all", 0, _check_wait(max_wait_s), _check_straggler(straggler))


def join_any(max_wait_s: float | None = None) -> Join:
    """Step as soon as any input has a new chunk."""
    return Join("any", 0, _check_wait(max_wait_s))


def quorum(k: int, max_wait_s: float | None = None, *, straggler: float | None = None) -> Join:
    """Step when at least ``k`` inputs (or all still running, if fewer) have a new chunk."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GraphError(f"quorum({k!r}): k must be a whole number >= 1")
    return Join("quorum", k, _check_wait(max_wait_s), _check_straggler(straggler))


_HINT = ('use "all", "any", { quorum = 2 }, { policy = "all", max_wait_s = 1.0 } or '
         '{ policy = "all", straggler = 2.0 }')


def parse_join(value: Any) -> Join:
    """A join from its graph-file form; raises GraphError naming the accepted forms."""
    if isinstance(value, Join):
        return value
    if value == "all":
        return join_all()
    if value == "any":
        return join_any()
    if isinstance(value, dict):
        keys = set(value)
        wait, lag = value.get("max_wait_s"), value.get("straggler")
        if keys <= {"quorum", "max_wait_s", "straggler"} and "quorum" in keys:
            return quorum(value["quorum"], wait, straggler=lag)
        if keys <= {"policy", "max_wait_s", "straggler"} and value.get("policy") == "all":
            return join_all(wait, straggler=lag)
        if keys <= {"policy", "max_wait_s"} and value.get("policy") == "any":
            return join_any(wait)
    raise GraphError(f"unknown join {value!r}; {_HINT}")
