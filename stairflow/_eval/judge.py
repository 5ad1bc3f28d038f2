"""The pairwise judge, sans I/O: the prompt it is asked, its verdict, and a pair's outcome.

MT-Bench's convention: the judge ends its answer with ``[[A]]``, ``[[B]]`` or ``[[C]]`` (a
tie). Each pair is judged twice, once in each order, to cancel the judge's position bias; two
orders that disagree count as a tie, marked ``inconsistent``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .._prompts import Message

__all__ = ["JUDGE_SYSTEM", "Outcome", "Verdict", "judge_messages", "outcome", "parse_verdict"]

Verdict = Literal["A", "B", "C"]  # C: a tie

JUDGE_SYSTEM = """\
You are an impartial judge comparing two AI assistants' answers to the same user question.
Judge which answer serves the user better, on these criteria, in this order:
1. Correctness: facts, reasoning and any code or arithmetic are right.
2. Helpfulness: it does what was asked, completely, and follows the question's instructions.
3. Clarity: it is organised and easy to follow.
Do NOT prefer an answer for being longer or shorter: length is not a criterion. Do not let
the order in which the answers appear, or the assistants' names, influence you.
First explain your comparison in a few sentences. Then give your verdict on the last line,
exactly one of: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" for
a tie."""

_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def judge_messages(question: str, answer_a: str, answer_b: str) -> tuple[Message, ...]:
    """The judge's request for one order of one pair."""
    user = (f"[User Question]\n{question}\n\n"
            f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]"
            f"\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
            "[The End of Assistant B's Answer]")
    return (Message("system", JUDGE_SYSTEM), Message("user", user))


def parse_verdict(text: str) -> Verdict | None:
    """The judge's verdict: the last ``[[A]]``/``[[B]]``/``[[C]]`` in its answer (None: none)."""
    found = _VERDICT.findall(text)
    return found[-1] if found else None


@dataclass(frozen=True)
class Outcome:
    """One pair's result for the first side ("ours"): 1 a win, 0 a loss, 0.5 a tie."""

    score: float
    inconsistent: bool  # the two orders disagreed (counted as a tie)


def outcome(ours_first: Verdict, ours_second: Verdict) -> Outcome:
    """The pair's outcome from the verdict with our answer as A (``ours_first``) and the one
    with our answer as B (``ours_second``)."""
    first = {"A": 1.0, "B": 0.0, "C": 0.5}[ours_first]
    second = {"A": 0.0, "B": 1.0, "C": 0.5}[ours_second]
    if first == second:
        return Outcome(first, False)
    return Outcome(0.5, True)  # as MT-Bench: any disagreement (a tie one way too) is a tie
