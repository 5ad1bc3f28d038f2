"""The figures of an evaluation, sans I/O: win rate, its bootstrap interval, and the
length-controlled win rate.

Scores are "ours" against "theirs" per prompt: 1 a win, 0 a loss, 0.5 a tie. The
length-controlled win rate follows AlpacaEval 2: fit a logistic model of the outcome with an
intercept and a length term, ``tanh((len_ours - len_theirs) / sd)``, then report the win rate
the model predicts with the length term set to zero (the intercept's probability). The length
coefficient has a small ridge penalty, so a judge that only looks at length (separable data)
still gives a finite fit. Pure Python: a two-parameter Newton fit needs no numerics library.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Interval", "bootstrap", "length_controlled", "win_rate"]

RIDGE = 1.0  # on the length coefficient (the intercept is free)
BOOTSTRAP = 1000  # resamples
SEED = 0


@dataclass(frozen=True)
class Interval:
    value: float
    low: float  # the 95% bootstrap interval
    high: float


def win_rate(scores: Sequence[float]) -> float:
    """Wins plus half the ties, over all pairs."""
    return sum(scores) / len(scores) if scores else math.nan


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)


def length_controlled(scores: Sequence[float], ours: Sequence[int],
                      theirs: Sequence[int]) -> float:
    """The win rate with the length term of a fitted logistic model set to zero."""
    if not scores:
        return math.nan
    diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / len(diffs))
    xs = [math.tanh(d / sd) if sd > 0 else 0.0 for d in diffs]
    b0 = b1 = 0.0
    for _ in range(100):  # Newton's method on the penalised log-likelihood
        g0 = g1 = h00 = h01 = h11 = 0.0
        for y, x in zip(scores, xs, strict=True):
            p = _sigmoid(b0 + b1 * x)
            w = p * (1 - p)
            g0 += y - p
            g1 += (y - p) * x
            h00 += w
            h01 += w * x
            h11 += w * x * x
        g1 -= RIDGE * b1
        h11 += RIDGE
        det = h00 * h11 - h01 * h01
        if det <= 1e-12:
            break
        d0 = (h11 * g0 - h01 * g1) / det
        d1 = (h00 * g1 - h01 * g0) / det
        b0, b1 = b0 + d0, b1 + d1
        if abs(d0) + abs(d1) < 1e-10:
            break
    return _sigmoid(b0)


def bootstrap(stat: Callable[[Sequence[int]], float], n: int, *, resamples: int = BOOTSTRAP,
              seed: int = SEED) -> Interval:
    """``stat`` of all ``n`` pairs, with the 2.5th and 97.5th percentiles of ``stat`` over
    resamples of the pairs (``stat`` takes the indices of a sample)."""
    value = stat(range(n))
    if n == 0:
        return Interval(value, math.nan, math.nan)
    rng = random.Random(seed)
    values = sorted(stat([rng.randrange(n) for _ in range(n)]) for _ in range(resamples))
    return Interval(value, values[int(0.025 * (resamples - 1))],
                    values[math.ceil(0.975 * (resamples - 1))])
