"""The evaluation's sans-I/O core: the judge's verdicts, both orders of a pair, and the
statistics (win rate, bootstrap interval, length-controlled win rate)."""

from __future__ import annotations

import math
import random

import pytest

from stairflow._eval.judge import JUDGE_SYSTEM, judge_messages, outcome, parse_verdict
from stairflow._eval.stats import bootstrap, length_controlled, win_rate


@pytest.mark.parametrize(("text", "verdict"), [
    ("A is more accurate.\n[[A]]", "A"),
    ("First I thought [[A]], but on reflection [[B]]", "B"),  # the last one counts
    ("[[ C ]]", "C"),
    ("A is better", None),
    ("[A]", None),
    ("[[D]]", None),
])
def test_the_verdict_is_the_last_double_bracketed_letter(text: str, verdict: str | None):
    assert parse_verdict(text) == verdict


def test_the_judge_prompt_forbids_length_and_holds_both_answers():
    system, user = judge_messages("Why?", "answer one", "answer two")
    assert "length is not a criterion" in JUDGE_SYSTEM and system.content == JUDGE_SYSTEM
    assert user.content.index("answer one") < user.content.index("answer two")
    assert "[User Question]\nWhy?" in user.content


@pytest.mark.parametrize(("first", "second", "score", "inconsistent"), [
    ("A", "B", 1.0, False),  # ours won in both orders
    ("B", "A", 0.0, False),
    ("C", "C", 0.5, False),
    ("A", "A", 0.5, True),  # the judge picked the first answer both times
    ("B", "B", 0.5, True),
    ("A", "C", 0.5, True),  # a win one way, a tie the other: MT-Bench calls it a tie
])
def test_both_orders_make_one_outcome(first, second, score, inconsistent):
    o = outcome(first, second)
    assert (o.score, o.inconsistent) == (score, inconsistent)


def test_a_judge_that_always_answers_a_gives_half_with_every_pair_inconsistent():
    outcomes = [outcome(parse_verdict("[[A]]"), parse_verdict("[[A]]")) for _ in range(40)]
    assert win_rate([o.score for o in outcomes]) == 0.5
    assert all(o.inconsistent for o in outcomes)


def test_a_judge_that_prefers_length_moves_the_raw_rate_but_not_the_length_controlled_one():
    rng = random.Random(7)
    ours = [rng.randint(50, 400) for _ in range(200)]
    theirs = [n - rng.randint(10, 150) if rng.random() < 0.8 else n + rng.randint(10, 150)
              for n in ours]
    # the judge prefers the longer answer, the more so the longer it is, whatever the order
    # (so it is consistent); the answers are otherwise equal
    sd = 120.0
    scores = []
    for a, b in zip(ours, theirs, strict=True):
        longer_wins = rng.random() < 1 / (1 + math.exp(-4 * math.tanh(abs(a - b) / sd)))
        ours_wins = (a > b) == longer_wins
        scores.append(outcome("A" if ours_wins else "B", "B" if ours_wins else "A").score)
    raw = bootstrap(lambda ix: win_rate([scores[i] for i in ix]), len(scores))
    lc = bootstrap(lambda ix: length_controlled([scores[i] for i in ix], [ours[i] for i in ix],
                                                [theirs[i] for i in ix]), len(scores))
    assert raw.value > 0.65 and raw.low > 0.6  # length moved the raw win rate
    assert lc.low <= 0.5 <= lc.high  # and the controlled one stays at a coin flip
    assert not lc.low <= raw.value <= lc.high


def test_without_a_length_effect_the_controlled_rate_follows_the_raw_one():
    rng = random.Random(3)
    ours = [rng.randint(50, 400) for _ in range(300)]
    theirs = [rng.randint(50, 400) for _ in range(300)]
    scores = [1.0 if rng.random() < 0.7 else 0.0 for _ in range(300)]
    raw = win_rate(scores)
    assert abs(length_controlled(scores, ours, theirs) - raw) < 0.03


def test_the_bootstrap_interval_holds_the_value_and_is_reproducible():
    scores = [1.0] * 30 + [0.0] * 20 + [0.5] * 10
    a = bootstrap(lambda ix: win_rate([scores[i] for i in ix]), len(scores))
    b = bootstrap(lambda ix: win_rate([scores[i] for i in ix]), len(scores))
    assert a == b and a.value == pytest.approx(35 / 60) and a.low < a.value < a.high
    assert a.low > 0.4 and a.high < 0.75
