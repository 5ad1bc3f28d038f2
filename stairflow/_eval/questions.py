"""Benchmark question files, read as prompts: AlpacaEval, Arena-Hard and MT-Bench.

- **AlpacaEval**: a JSON list of objects with ``instruction`` (and ``dataset``, used as the
  category).
- **Arena-Hard**: ``question.jsonl``; v0.1 lines hold ``question_id``, ``category`` and
  ``turns: [{"content": ...}]``, v2 lines ``uid``, ``category`` and ``prompt``.
- **MT-Bench**: ``question.jsonl`` lines with ``question_id``, ``category`` and ``turns``
  (strings); only the first turn is asked (a graph answers one message).

Anything else is read as `stairflow batch` prompts. The sets are small (hundreds of
questions), so they are read whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._batch.prompts import PromptSource
from .._errors import ConfigError

__all__ = ["load_questions"]


def load_questions(source: PromptSource) -> PromptSource:
    """``source`` as prompts: a benchmark's question file converted, anything else as is."""
    if not isinstance(source, str | os.PathLike):
        return source
    path = Path(source)
    if path.suffix == ".json":
        return _alpaca(path)
    try:
        with path.open(encoding="utf-8-sig") as f:
            first = next((line for line in f if line.strip()), "")
        head = json.loads(first) if first else None
    except (OSError, ValueError, UnicodeDecodeError):
        return source  # the batch reader gives the one-line error
    if isinstance(head, dict) and ({"turns", "uid", "question_id"} & set(head)):
        return _turns(path)
    return source


def _alpaca(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not an AlpacaEval question file ({exc}); give a JSON list "
                          "of {\"instruction\": ...}, or JSON lines of prompts") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) and isinstance(
            d.get("instruction"), str) for d in data):
        raise ConfigError(f"{path}: not an AlpacaEval question file; give a JSON list of "
                          "{\"instruction\": ...}, or JSON lines of prompts")
    return [{"id": i, "prompt": d["instruction"],
             **({"category": d["dataset"]} if isinstance(d.get("dataset"), str) else {})}
            for i, d in enumerate(data, 1)]


def _turns(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                qid = d.get("question_id", d.get("uid", n))
                if "prompt" in d:
                    text = d["prompt"]
                else:
                    turn = d["turns"][0]
                    text = turn["content"] if isinstance(turn, dict) else turn
                if not isinstance(text, str):
                    raise TypeError
            except (ValueError, KeyError, IndexError, TypeError):
                raise ConfigError(f"{path}:{n}: not a question (MT-Bench or Arena-Hard: "
                                  "\"turns\" or \"prompt\")") from None
            row: dict[str, Any] = {"id": qid if isinstance(qid, str | int) else str(qid),
                                   "prompt": text}
            if isinstance(d.get("category"), str):
                row["category"] = d["category"]
            out.append(row)
    return out
