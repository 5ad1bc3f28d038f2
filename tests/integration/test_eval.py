"""``stairflow eval`` end to end: simulated answers (virtual time), a judge on a real HTTP
server speaking the OpenAI protocol (`fake_openai`) that answers as each test scripts it."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import stairflow as sf
from stairflow._cli import main

from .fake_openai import Exchange, fake_openai, stream

pytestmark = pytest.mark.integration

N = 12


def prompts(tmp_path: Path) -> Path:
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?",
                                     "category": "math" if i % 3 == 0 else "writing"}) + "\n"
                         for i in range(N)))
    return p


def evaluate(tmp_path: Path, url: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["eval", "chain", "--prompts", str(prompts(tmp_path)), "-o",
                 str(tmp_path / "eval"), "--judge-base-url", url, "--judge-model", "m",
                 "--virtual-clock", "--max-tokens", "16", "--json", *extra],
                out=out, err=err, stdin=io.StringIO())
    return code, json.loads(out.getvalue()) if out.getvalue() else {}, err.getvalue()


def test_a_judge_that_always_answers_a_gives_half_with_every_pair_inconsistent(tmp_path):
    with fake_openai(stream("Both are fine. ", "[[A]]")) as fake:
        code, report, err = evaluate(tmp_path, fake.base_url)
        assert code == 0, err
        assert len(fake.posts()) == 2 * N  # each pair in both orders
    assert report["judged"] == N and report["inconsistent"] == N
    assert report["win_rate"]["value"] == 0.5 and report["ties"] == 0
    assert report["categories"] == {"math": {"judged": 4, "win_rate": 0.5},
                                    "writing": {"judged": 8, "win_rate": 0.5}}
    assert report["ours"] == "staircase" and report["theirs"] == "normal"
    assert report["judge_tokens"]["requests"] == 2 * N
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "| win rate of staircase | 50.0% |" in md


def test_a_judge_that_prefers_the_other_graph_in_both_orders_gives_it_every_pair(tmp_path):
    # the simulator's text depends on the node, not the prompt: moa's answer is known
    theirs = sf.run(sf.resolve_graph("moa").capped(16), "x", virtual_clock=True).output

    def answer(ex: Exchange) -> None:
        user = ex.body["messages"][-1]["content"]
        a = user.split("[The Start of Assistant A's Answer]")[1].split("[The End of")[0]
        stream("[[A]]" if theirs.strip() in a else "[[B]]")(ex)

    with fake_openai(answer) as fake:
        code, report, err = evaluate(tmp_path, fake.base_url, "--against", "moa")
    assert code == 0, err
    assert (report["ours"], report["theirs"]) == ("staircase", "moa")
    assert report["losses"] == N and report["win_rate"]["value"] == 0.0
    assert report["inconsistent"] == 0 and report["length_tokens"]["moa"] == 16


def test_no_verdict_is_asked_once_more_then_counted_unparsable(tmp_path):
    asked: Counter[str] = Counter()

    def answer(ex: Exchange) -> None:
        user = ex.body["messages"][-1]["content"]
        asked[user] += 1
        if "Question 0?" in user or asked[user] == 1:  # q0: never a verdict
            stream("I cannot decide.")(ex)
        else:
            stream("[[C]]")(ex)

    with fake_openai(answer) as fake:
        code, report, err = evaluate(tmp_path, fake.base_url, "--against", "moa")
        assert code == 0, err
        assert len(fake.posts()) == 4 * N  # every ask twice
    assert report["unparsable"] == 1 and report["judged"] == N - 1
    assert report["ties"] == N - 1 and report["win_rate"]["value"] == 0.5


def test_judge_errors_are_counted_and_a_rerun_judges_them_and_nothing_else(tmp_path):
    def refuse(ex: Exchange) -> None:
        ex.json(400, {"error": {"message": "bad request"}})

    with fake_openai(refuse) as fake:
        code, report, err = evaluate(tmp_path, fake.base_url)
    assert code == 1, err  # not a pass: every ask failed
    assert f"{N} judge errors, 0 answers failed: run the same command again" in err
    assert report["judge_errors"] == N and report["judged"] == 0
    assert report["win_rate"]["value"] is None
    with fake_openai(stream("[[C]]")) as fake:
        code, report, err = evaluate(tmp_path, fake.base_url)
        assert code == 0, err
        assert len(fake.posts()) == 2 * N  # only the failed asks
        assert "eval answers: 0 done" in err  # the answers were kept
        code, report, err = evaluate(tmp_path, fake.base_url)
        assert len(fake.posts()) == 2 * N  # resumed: nothing asked again
    assert report["judged"] == N and report["judge_errors"] == 0


def test_the_shipped_prompts_run_by_default_with_their_categories(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    with fake_openai(stream("[[C]]")) as fake:
        code = main(["eval", "chain", "-o", str(tmp_path / "eval"), "--judge-base-url",
                     fake.base_url, "--judge-model", "m", "--virtual-clock", "--max-tokens",
                     "8", "--json"], out=out, err=err, stdin=io.StringIO())
    assert code == 0, err.getvalue()
    report = json.loads(out.getvalue())
    assert report["judged"] == 60 and set(report["categories"]) == {
        "facts", "reasoning", "math", "writing", "coding", "advice"}
