"""Join policies: when a node with several inputs takes its next step. Sans-I/O.

An input is *open* until its last chunk has arrived, and *pending* while it holds chunks the
node has not consumed yet. The inputs that still matter for a step are the *candidates*: open
or pending. A policy looks only at which candidates are pending:

- ``all``: every candidate is pending (the paper's rule: the next chunk of every input still
  running);
- ``any``: at least one is pending;
- ``quorum(k)``: at least ``min(k, candidates)`` are pending.

With ``max_wait_s`` a node waiting on stragglers proceeds with what it has once that long has
passed since it became ready with at least one pending input.
"""

from __future__ import annotations

import math
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
        return base if self.max_wait_s is None else f"{base}, max wait {self.max_wait_s:g}s"

    def to_config(self) -> Any:
        if self.policy == "quorum":
            table: dict[str, Any] = {"quorum": self.k}
        elif self.max_wait_s is None:
            return self.policy
        else:
            table = {"policy": self.policy}
        if self.max_wait_s is not None:
            table["max_wait_s"] = self.max_wait_s
        return table


def _check_wait(max_wait_s: float | None) -> float | None:
    if max_wait_s is None:
        return None
    if (isinstance(max_wait_s, bool) or not isinstance(max_wait_s, int | float)
            or not 0 < max_wait_s < math.inf):  # also false for nan
        raise GraphError(f"max_wait_s={max_wait_s!r}: must be a number of seconds > 0")
    return float(max_wait_s)


def join_all(max_wait_s: float | None = None) -> Join:
    """Step when every input still running has a new chunk (the paper's rule)."""
    return Join("all", 0, _check_wait(max_wait_s))


def join_any(max_wait_s: float | None = None) -> Join:
    """Step as soon as any input has a new chunk."""
    return Join("any", 0, _check_wait(max_wait_s))


def quorum(k: int, max_wait_s: float | None = None) -> Join:
    """Step when at least ``k`` inputs (or all still running, if fewer) have a new chunk."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GraphError(f"quorum({k!r}): k must be a whole number >= 1")
    return Join("quorum", k, _check_wait(max_wait_s))


_HINT = 'use "all", "any", { quorum = 2 } or { policy = "all", max_wait_s = 1.0 }'


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
        wait = value.get("max_wait_s")
        if keys <= {"quorum", "max_wait_s"} and "quorum" in keys:
            return quorum(value["quorum"], wait)
        if keys <= {"policy", "max_wait_s"} and value.get("policy") in ("all", "any"):
            return join_all(wait) if value["policy"] == "all" else join_any(wait)
    raise GraphError(f"unknown join {value!r}; {_HINT}")
