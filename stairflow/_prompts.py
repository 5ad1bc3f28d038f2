"""Prompt templates: how an llm node turns what it has received into chat messages.

At every step a node asks its backend to continue its own answer so far (the *prefix*) given
messages built here from everything received so far. Two context layouts:

- ``rebuild`` (default): the messages are rebuilt at every step from all reference text
  received so far; references still being written are marked as unfinished.
- ``append`` (the paper's prefix-caching variant): the context only grows, so a server-side
  prefix cache hits at every step: ``[instruction + query + R_1] S_1 [R_2] S_2 ...`` where
  ``R_j`` is the reference text that arrived for step ``j`` and ``S_j`` what the node wrote.

Templates: ``chat`` (the query as the user message), ``moa-aggregate`` (references as a
numbered list in the system message after an instruction to synthesise them critically),
``moa-aggregate-user`` (the same in the user message, for models without a system role), or a
template string using ``{query}``, ``{references}`` and the names of the node's inputs.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["TEMPLATES", "InputText", "Message", "StepText", "build_messages", "check_template"]

TEMPLATES = ("chat", "moa-aggregate", "moa-aggregate-user")

AGGREGATE_INSTRUCTION = (
    "Several assistants have answered the user's latest question; their responses are listed "
    "below. Write one answer of your own that is accurate, complete and well organised. Read "
    "them critically: some may be wrong, biased or incomplete. A response ending in '…' is "
    "still being written. Do not copy them and do not mention them."
)
# Marks a reference still being written. Attached to its text, it costs no extra word, so a
# partial reference never makes a prompt longer than the finished one would be.
UNFINISHED = "…"


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class InputText:
    """What a node has received from one input so far."""

    name: str
    text: str
    finished: bool
    is_query: bool = False  # the graph's input node


@dataclass(frozen=True)
class StepText:
    """One past or current step, for the append-only layout."""

    new: tuple[tuple[str, str], ...]  # (input name, text that arrived for this step)
    output: str  # what the node wrote in this step ("" for the current one)


def check_template(prompt: str | None, inputs: Sequence[str]) -> None:
    """Raise ValueError (one line, with the fix) when ``prompt`` cannot be rendered."""
    if prompt is None or prompt in TEMPLATES:
        return
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None]
    except ValueError as exc:
        raise ValueError(f"prompt template is malformed ({exc}); escape braces as {{{{ }}}}") \
            from None
    if not fields and re.fullmatch(r"[a-z0-9_-]+", prompt):
        raise ValueError(
            f"unknown prompt template {prompt!r}; use one of {', '.join(TEMPLATES)} or a "
            "template string with {query}, {references} or an input's name"
        )
    allowed = {"query", "references", *inputs}
    for f in fields:
        if f not in allowed:
            raise ValueError(
                f"prompt uses {{{f}}}, which is not one of its inputs ({', '.join(inputs)}) "
                "nor {query} or {references}"
            )


def _numbered(inputs: Sequence[InputText]) -> str:
    return "\n\n".join(
        f"{i}. {inp.text.strip()}{'' if inp.finished else UNFINISHED}"
        for i, inp in enumerate(inputs, 1)
    )


def _resolve(prompt: str | None, inputs: Sequence[InputText]) -> str:
    if prompt is not None:
        return prompt
    return "moa-aggregate" if any(not i.is_query for i in inputs) else "chat"


def build_messages(
    prompt: str | None,
    system: str,
    query: str,
    inputs: Sequence[InputText],
    output: str,
    context: Literal["rebuild", "append"] = "rebuild",
    history: Sequence[StepText] = (),
) -> tuple[list[Message], str]:
    """The messages for the next step, and the assistant prefix to continue."""
    template = _resolve(prompt, inputs)
    refs = [i for i in inputs if not i.is_query]
    if context == "append" and template in ("moa-aggregate", "moa-aggregate-user") and history:
        return _append_layout(system, query, history)
    sys_parts = [system] if system else []
    if template == "chat":
        user = query
    elif template == "moa-aggregate":
        sys_parts += [AGGREGATE_INSTRUCTION, "Responses:\n\n" + _numbered(refs)]
        user = query
    elif template == "moa-aggregate-user":
        sys_parts += [AGGREGATE_INSTRUCTION]
        user = f"{query}\n\nResponses:\n\n{_numbered(refs)}"
    else:
        values = {i.name: i.text.rstrip() + ("" if i.finished else UNFINISHED) for i in inputs}
        user = template.format(query=query, references=_numbered(refs), **values)
    messages = [Message("system", "\n\n".join(sys_parts))] if sys_parts else []
    messages.append(Message("user", user))
    return messages, output


def _append_layout(
    system: str, query: str, history: Sequence[StepText]
) -> tuple[list[Message], str]:
    sys_text = "\n\n".join(p for p in (system, AGGREGATE_INSTRUCTION) if p)
    messages = [Message("system", sys_text)]
    prefix = ""
    for j, step in enumerate(history):
        new = [(name, text) for name, text in step.new if text]
        if new or j == 0:
            head = query + "\n\nResponses so far:" if j == 0 else "More of the responses:"
            body = "\n\n".join(f"[{name}] {text.strip()}" for name, text in new)
            if prefix:
                messages.append(Message("assistant", prefix))
            messages.append(Message("user", f"{head}\n\n{body}"))
            prefix = ""
        prefix += step.output
    return messages, prefix
