"""`run_eval`: answer every prompt on both sides, have a judge compare each pair in both orders,
and report who won.

Every stage is a batch (`stairflow._batch`), so an evaluation is concurrent, resumable and
shows progress like one: the answers go to ``DIR/answers.jsonl`` (staircase and normal mode
of one graph; or ``DIR/answers-against.jsonl`` too, for a second graph), and the judge -
itself a one-node graph on the judge's endpoint - writes ``DIR/judgments.jsonl``. A verdict
the judge did not give is asked once more (``DIR/judgments-again.jsonl``), then counted as
unparsable. The figures are computed from those files (`stats`), into ``DIR/report.json`` and
``DIR/report.md``.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .._backends.base import Backend
from .._batch.prompts import PromptSource, id_key, read_prompts
from .._batch.runner import BatchSummary, run_batch
from .._errors import ConfigError, RunError
from .._graph import FrozenGraph, Graph
from .judge import JUDGE_SYSTEM, judge_messages, outcome, parse_verdict
from .questions import load_questions
from .stats import Interval, bootstrap, length_controlled, win_rate

__all__ = ["BUILTIN_PROMPTS", "judge_graph", "run_eval"]

# 60 short instructions of our own over six categories (facts, reasoning, math, writing,
# coding, advice), so that an evaluation runs offline
BUILTIN_PROMPTS = Path(__file__).with_name("instructions.jsonl")
ORDERS = ("ab", "ba")  # ours as A, then ours as B


def judge_graph(base_url: str, model: str, api_key_env: str | None = None,
                max_tokens: int = 1024) -> FrozenGraph:
    """The judge: one llm node on the judge's endpoint, greedy, with the judge's system
    prompt; its input is the pair as `judge_messages` writes it."""
    g = Graph("judge")
    g.input("pair")
    settings: dict[str, Any] = {"system": JUDGE_SYSTEM, "temperature": 0.0,
                                "max_tokens": max_tokens, "base_url": base_url, "model": model}
    if api_key_env:
        settings["api_key_env"] = api_key_env
    g.llm("judge", **settings)
    g.connect("pair", "judge")
    g.connect("judge", g.output("verdict"))
    return g.build()


def _records(path: Path) -> Iterable[dict[str, Any]]:
    if path.exists():
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def run_eval(
    graph: Graph | FrozenGraph,
    prompts: PromptSource,
    out_dir: str | os.PathLike[str],
    *,
    judge_base_url: str,
    judge_model: str,
    judge_api_key_env: str | None = None,
    against: Graph | FrozenGraph | None = None,
    backend: str | Backend | None = None,
    concurrency: int | None = None,
    judge_concurrency: int | None = None,
    judge_max_tokens: int = 1024,
    retries: int = 2,
    virtual_clock: bool = False,
    on_stage: Callable[[str, BatchSummary], None] | None = None,
    on_result: Callable[[str, Mapping[str, Any]], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate ``graph`` in staircase mode against normal mode (or against ``against``, in
    staircase mode) on ``prompts``; the report (also written to ``out_dir``)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: not a directory; give a directory for the evaluation")
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_questions(prompts)  # AlpacaEval, Arena-Hard, MT-Bench files too
    if not isinstance(prompts, str | os.PathLike):
        prompts = list(prompts)
    judge = judge_graph(judge_base_url, judge_model, judge_api_key_env, judge_max_tokens)

    def stage(name: str, summary: BatchSummary) -> None:
        if on_stage is not None:
            on_stage(name, summary)
        if summary.stopped:  # an endpoint refusing every connection: no point going on
            raise RunError(f"the {name} stage stopped: {summary.stopped}")

    def each(name: str) -> Callable[[Mapping[str, Any]], None] | None:
        if on_result is None:
            return None
        report = on_result
        return lambda record: report(name, record)

    common: dict[str, Any] = dict(backend=backend, concurrency=concurrency, retries=retries,
                                  virtual_clock=virtual_clock, **options)
    answers = out / "answers.jsonl"
    if against is None:
        stage("answers", run_batch(graph, prompts, answers, mode="both",
                                   on_result=each("answers"), **common))
        ours_of = {(id_key(r["id"])): r for r in _records(answers) if r["mode"] == "staircase"}
        theirs_of = {(id_key(r["id"])): r for r in _records(answers) if r["mode"] == "normal"}
        labels = ("staircase", "normal")
    else:
        other = out / "answers-against.jsonl"
        stage("answers", run_batch(graph, prompts, answers, mode="staircase",
                                   on_result=each("answers"), **common))
        stage("against", run_batch(against, prompts, other, mode="staircase",
                                   on_result=each("against"), **common))
        ours_of = {id_key(r["id"]): r for r in _records(answers)}
        theirs_of = {id_key(r["id"]): r for r in _records(other)}
        name = against.name if isinstance(against, FrozenGraph) else against.build().name
        labels = ("staircase", name)

    items = list(read_prompts(prompts))
    pairs = []  # (key, question, category, ours, theirs) with both answers
    failed_answers = 0
    for p in items:
        key = id_key(p.id)
        ours, theirs = ours_of.get(key), theirs_of.get(key)
        if ours is None or theirs is None or ours["error"] or theirs["error"]:
            failed_answers += 1
            continue
        pairs.append((key, p.message, p.category, ours, theirs))

    def asks(keys: set[str] | None, suffix: str) -> list[dict[str, str]]:
        out_: list[dict[str, str]] = []
        for key, question, _, ours, theirs in pairs:
            for order in ORDERS:
                if keys is not None and f"{key}#{order}" not in keys:
                    continue
                a, b = (ours, theirs) if order == "ab" else (theirs, ours)
                user = judge_messages(question, a["output"], b["output"])[1].content
                out_.append({"id": f"{key}#{order}{suffix}", "prompt": user})
        return out_

    verdicts_file = out / "judgments.jsonl"
    if pairs:
        stage("judge", run_batch(judge, asks(None, ""), verdicts_file, mode="normal",
                                 concurrency=judge_concurrency, retries=retries,
                                 retry_failed=True, on_result=each("judge")))
    first = {r["id"]: r for r in _records(verdicts_file)}
    unclear = {k for k, r in first.items() if r["error"] is None
               and parse_verdict(r["output"] or "") is None}
    again_file = out / "judgments-again.jsonl"
    if unclear:
        stage("judge again", run_batch(judge, asks(unclear, "#again"), again_file,
                                       mode="normal", concurrency=judge_concurrency,
                                       retries=retries, retry_failed=True,
                                       on_result=each("judge again")))
    second = {r["id"].removesuffix("#again"): r for r in _records(again_file)}
    return _report(out, pairs, first, second, labels, failed_answers, len(items))


def _verdict(key: str, first: Mapping[str, Any], second: Mapping[str, Any]) -> str | None:
    for held in (first, second):
        r = held.get(key)
        if r is not None and r["error"] is None:
            v = parse_verdict(r["output"] or "")
            if v is not None:
                return v
    return None


def _report(out: Path, pairs: list[Any], first: Mapping[str, Any], second: Mapping[str, Any],
            labels: tuple[str, str], failed_answers: int, total: int) -> dict[str, Any]:
    scores: list[float] = []
    ours_len: list[int] = []
    theirs_len: list[int] = []
    cats: list[str | None] = []
    inconsistent = unparsable = judge_errors = 0
    ttft: tuple[list[float], list[float]] = ([], [])
    all_len: tuple[list[int], list[int]] = ([], [])
    for _, _, _, ours, theirs in pairs:  # the sides' figures: every pair answered
        for side, r in zip(ttft, (ours, theirs), strict=True):
            if r["ttft_s"] is not None:
                side.append(r["ttft_s"])
        all_len[0].append(ours["output_tokens"])
        all_len[1].append(theirs["output_tokens"])
    for key, _, category, ours, theirs in pairs:
        rows = [first.get(f"{key}#{o}") for o in ORDERS]
        if any(r is None or r["error"] is not None for r in rows):
            judge_errors += 1
            continue
        v = [_verdict(f"{key}#{o}", first, second) for o in ORDERS]
        if v[0] is None or v[1] is None:
            unparsable += 1
            continue
        o = outcome(v[0], v[1])  # type: ignore[arg-type]
        scores.append(o.score)
        inconsistent += o.inconsistent
        ours_len.append(ours["output_tokens"])
        theirs_len.append(theirs["output_tokens"])
        cats.append(category)

    def wr(ix: Iterable[int]) -> float:
        return win_rate([scores[i] for i in ix])

    def lc(ix: Iterable[int]) -> float:
        ix = list(ix)
        return length_controlled([scores[i] for i in ix], [ours_len[i] for i in ix],
                                 [theirs_len[i] for i in ix])

    def interval(i: Interval) -> dict[str, float | None]:
        return {k: None if v != v else v  # NaN (nothing judged): null
                for k, v in (("value", i.value), ("low", i.low), ("high", i.high))}

    judged = len(scores)
    judge_rows = [*first.values(), *second.values()]
    report: dict[str, Any] = {
        "ours": labels[0], "theirs": labels[1], "prompts": total, "judged": judged,
        "wins": sum(s == 1.0 for s in scores), "losses": sum(s == 0.0 for s in scores),
        "ties": sum(s == 0.5 for s in scores) - inconsistent, "inconsistent": inconsistent,
        "unparsable": unparsable, "judge_errors": judge_errors,
        "answer_errors": failed_answers,
        "win_rate": interval(bootstrap(wr, judged)),
        "length_controlled_win_rate": interval(bootstrap(lc, judged)),
        "length_tokens": {labels[0]: _mean(all_len[0]), labels[1]: _mean(all_len[1])},
        "ttft_s_median": {labels[0]: _median(ttft[0]), labels[1]: _median(ttft[1])},
        "judge_tokens": {"prompt": sum(r["prompt_tokens"] for r in judge_rows),
                         "completion": sum(r["completion_tokens"] for r in judge_rows),
                         "requests": len(judge_rows)},
        "categories": {},
    }
    for cat in sorted({c for c in cats if c is not None}):
        ix = [i for i, c in enumerate(cats) if c == cat]
        report["categories"][cat] = {"judged": len(ix), "win_rate": wr(ix)}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    return report


def _mean(xs: list[int]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"  # None: no pairs


def markdown(r: Mapping[str, Any]) -> str:
    """The report for a person."""
    w, lc = r["win_rate"], r["length_controlled_win_rate"]
    ours, theirs = r["ours"], r["theirs"]
    lines = [
        f"# {ours} against {theirs}", "",
        f"{r['judged']} of {r['prompts']} prompts judged (both orders each): "
        f"{r['wins']} wins, {r['losses']} losses, {r['ties']} ties, {r['inconsistent']} "
        f"inconsistent (the two orders disagreed: counted as ties), {r['unparsable']} "
        f"unparsable, {r['judge_errors']} judge errors, {r['answer_errors']} answers failed.",
        "",
        "| figure | value | 95% interval |", "|---|---|---|",
        f"| win rate of {ours} | {_pct(w['value'])} | {_pct(w['low'])} - {_pct(w['high'])} |",
        f"| length-controlled win rate | {_pct(lc['value'])} | {_pct(lc['low'])} - "
        f"{_pct(lc['high'])} |", "",
        "| side | mean answer length (tokens) | median TTFT (s) |", "|---|---|---|",
    ]
    for side in (ours, theirs):
        length, ttft = r["length_tokens"][side], r["ttft_s_median"][side]
        lines.append(f"| {side} | {'-' if length is None else f'{length:.0f}'} | "
                     f"{'-' if ttft is None else f'{ttft:.3f}'} |")
    if r["categories"]:
        lines += ["", "| category | judged | win rate |", "|---|---|---|"]
        lines += [f"| {c} | {v['judged']} | {_pct(v['win_rate'])} |"
                  for c, v in r["categories"].items()]
    t = r["judge_tokens"]
    lines += ["", f"The judge read {t['prompt']} prompt tokens and wrote {t['completion']} "
                  f"in {t['requests']} requests."]
    return "\n".join(lines) + "\n"
