"""Benchmark question files read as prompts: AlpacaEval, Arena-Hard (v0.1 and v2), MT-Bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import stairflow as sf
from stairflow._eval.questions import load_questions


def test_alpaca_eval_is_a_json_list_of_instructions(tmp_path: Path):
    p = tmp_path / "alpaca_eval.json"
    p.write_text(json.dumps([{"instruction": "Name a tree.", "dataset": "helpful_base",
                              "output": "Oak."}, {"instruction": "Why?"}]))
    assert load_questions(p) == [{"id": 1, "prompt": "Name a tree.", "category": "helpful_base"},
                                 {"id": 2, "prompt": "Why?"}]


def test_mt_bench_asks_the_first_turn(tmp_path: Path):
    p = tmp_path / "question.jsonl"
    p.write_text(json.dumps({"question_id": 81, "category": "writing",
                             "turns": ["Write a blog post.", "Rewrite it."]}) + "\n")
    assert load_questions(p) == [{"id": 81, "prompt": "Write a blog post.", "category": "writing"}]


def test_arena_hard_v01_and_v2(tmp_path: Path):
    p = tmp_path / "question.jsonl"
    p.write_text(json.dumps({"question_id": "abc", "category": "arena-hard-v0.1",
                             "turns": [{"content": "Prove it."}]}) + "\n"
                 + json.dumps({"uid": "def", "category": "coding", "prompt": "Sort it."}) + "\n")
    assert load_questions(p) == [
        {"id": "abc", "prompt": "Prove it.", "category": "arena-hard-v0.1"},
        {"id": "def", "prompt": "Sort it.", "category": "coding"}]


def test_our_own_prompts_pass_through_and_a_broken_question_names_its_line(tmp_path: Path):
    ours = tmp_path / "p.jsonl"
    ours.write_text('{"id": "a", "prompt": "x"}\n')
    assert load_questions(ours) == ours
    bad = tmp_path / "question.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "turns": []}) + "\n")
    with pytest.raises(sf.ConfigError, match=r"question\.jsonl:1: not a question"):
        load_questions(bad)
    wrong = tmp_path / "x.json"
    wrong.write_text('{"instruction": "not a list"}')
    with pytest.raises(sf.ConfigError, match="not an AlpacaEval question file"):
        load_questions(wrong)
