"""A batch's prompts: JSON lines read as a stream, checked whole before the first run.

One prompt per line, in one of three shapes::

    "Why is the sky blue?"
    {"id": "q17", "prompt": "Why is the sky blue?"}
    {"id": 18, "messages": [{"role": "user", "content": "Why is the sky blue?"}]}

``id`` is optional (default: the line's number, from 1) and unique in the file; ``messages``
is a conversation as `stairflow serve` takes it (the graph reads its earlier turns as
``role: text`` paragraphs before the last user message). Blank lines are skipped. Code may
give an iterable of such values instead of a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ConfigError

__all__ = ["Prompt", "PromptSource", "check_prompts", "id_key", "read_prompts"]

PromptSource = str | os.PathLike[str] | Iterable[str | Mapping[str, Any]]
_FIELDS = {"id", "prompt", "messages", "category"}  # category: for `stairflow eval`


@dataclass(frozen=True)
class Prompt:
    id: str | int  # as the input gave it (or the line number)
    message: str  # the graph's input message
    line: int
    default_id: bool = False  # the id is the line number: the line gave none
    category: str | None = None  # for per-category figures (`stairflow eval`)


def id_key(value: object) -> str:
    """An id as the results file keys it: 7 and "7" are different ids."""
    return json.dumps(value, ensure_ascii=False)


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _where(source: PromptSource) -> str:
    return os.fspath(source) if isinstance(source, str | os.PathLike) else "prompts"


def _values(source: PromptSource) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) per non-blank line."""
    where = _where(source)
    if isinstance(source, str | os.PathLike):
        if os.fspath(source) == "-":
            raise ConfigError("the prompts cannot come from stdin: a batch reads them twice "
                              "(once to check them); give a file")
        path = Path(source)
        if path.is_dir():
            raise ConfigError(f"{where}: is a directory; give a JSON-lines file of prompts")
        try:
            f = path.open("rb")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read the prompts ({exc.strerror}); give a "
                              "JSON-lines file") from None
        with f:
            for n, raw in enumerate(f, 1):  # lines end at "\n" only ("\r" is whitespace)
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise ConfigError(f"{where}:{n}: not UTF-8 text; save the file as "
                                      "UTF-8") from None
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except (ValueError, RecursionError) as exc:
                        why = exc.msg if isinstance(exc, json.JSONDecodeError) else (
                            "nested too deep" if isinstance(exc, RecursionError)
                            else str(exc)[:60])
                        raise ConfigError(f"{where}:{n}: not JSON ({why}); write one prompt "
                                          "per line: a JSON string or an object with "
                                          "\"prompt\"") from None
        return
    for n, value in enumerate(source, 1):
        yield n, value


def _message(value: Any, at: str) -> tuple[object, str]:
    """(the given id or None, the graph's message) of one prompt value."""
    if isinstance(value, str):
        text: object = value
        given: object = None
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - _FIELDS)
        if unknown:
            raise ConfigError(f"{at}: unknown field {unknown[0]!r}; a prompt has \"prompt\" "
                              "or \"messages\", and optionally \"id\" and \"category\"")
        if not isinstance(value.get("category", ""), str):
            raise ConfigError(f"{at}: \"category\" must be a string")
        given = value.get("id")
        if given is not None and (isinstance(given, bool) or not isinstance(given, str | int)):
            raise ConfigError(f"{at}: \"id\" must be a string or an integer, got "
                              f"{_short(json.dumps(given))}")
        if isinstance(given, str):
            try:
                given.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError(f"{at}: the id holds an unpaired surrogate; fix its "
                                  "encoding") from None
        if ("prompt" in value) == ("messages" in value):
            raise ConfigError(f"{at}: give either \"prompt\" or \"messages\"")
        text = value["prompt"] if "prompt" in value else _conversation(value["messages"], at)
    else:
        raise ConfigError(f"{at}: a prompt is a JSON string or an object with \"prompt\", got "
                          f"{type(value).__name__}")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{at}: the prompt must be non-empty text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{at}: the prompt holds an unpaired surrogate; fix its "
                          "encoding") from None
    return given, text


def _conversation(messages: object, at: str) -> str:
    """A conversation as the graph's message, as `stairflow serve` builds it."""
    from pydantic import TypeAdapter, ValidationError

    from .._serve.schema import ApiError, Message, conversation, from_validation

    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"{at}: \"messages\" must be a non-empty list of "
                          "{\"role\": ..., \"content\": ...}")
    try:
        return conversation(TypeAdapter(list[Message]).validate_python(messages))
    except ValidationError as exc:
        raise ConfigError(f"{at}: \"messages\" {from_validation(exc).message}") from None
    except ApiError as exc:
        raise ConfigError(f"{at}: {exc.message}") from None


def read_prompts(source: PromptSource) -> Iterator[Prompt]:
    """The prompts one at a time (the file is streamed, never held whole)."""
    where = _where(source)
    for n, value in _values(source):
        given, text = _message(value, f"{where}:{n}")
        category = value.get("category") if isinstance(value, Mapping) else None
        yield Prompt(n if given is None else given, text, n,  # type: ignore[arg-type]
                     given is None, category)


def check_prompts(source: PromptSource, each: Callable[[Prompt], None] | None = None) -> int:
    """Check every prompt and that no id repeats (``each`` sees every prompt); the number of
    prompts."""
    seen: dict[str, tuple[int, bool]] = {}
    count = 0
    for p in read_prompts(source):
        if each is not None:
            each(p)
        key = id_key(p.id)
        if key in seen:
            first, default = seen[key]
            whose = f"line {first}'s" + (" (its default id, the line number)" if default
                                         else "")
            raise ConfigError(f"{_where(source)}:{p.line}: id {_short(key)} repeats {whose}; "
                              "give each prompt its own id")
        seen[key] = (p.line, p.default_id)
        count += 1
    if count == 0:
        raise ConfigError(f"{_where(source)}: no prompts; write one per line")
    return count
