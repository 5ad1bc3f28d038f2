"""What `stairflow serve` accepts and answers, in OpenAI's chat-completions shapes.

Requests are validated with pydantic: the fields stairflow acts on are typed strictly; the
other fields OpenAI clients send (``top_p``, ``seed``, ``user`` ...) are accepted and ignored.
Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with their status.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["ApiError", "ChatRequest", "clip", "conversation", "from_validation"]


class ApiError(Exception):
    """An OpenAI-style error answer: HTTP status, message, type, and optionally the
    offending parameter and a code."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status, message, kind, param, code)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class TextPart(_Open):
    type: str
    text: str = ""

    @model_validator(mode="after")
    def _text_only(self) -> TextPart:
        if self.type != "text":
            raise ValueError(f"a {self.type!r} content part: this server takes text parts only")
        return self


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Open):
    include_usage: bool = False


class ChatRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | int | None = Field(default=None, ge=0, le=2)
    n: int | None = Field(default=None, ge=1, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> ChatRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def answer_cap(self) -> int | None:
        """The most tokens the answer may have (``max_completion_tokens`` first)."""
        return self.max_completion_tokens or self.max_tokens


def from_validation(exc: ValidationError) -> ApiError:
    """The first schema violation (one the request's own text explains, where there is one),
    as a 400 naming the parameter."""
    errors = exc.errors()
    first = next((e for e in errors if e["type"] == "value_error"), errors[0])
    where = ".".join(str(p) for p in first["loc"] if _is_field(p))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "a required parameter is missing"
    elif first["type"].endswith("_type") or first["type"] == "literal_error":
        if len({".".join(str(p) for p in e["loc"] if _is_field(p)) for e in errors}) == 1 \
                and len(errors) > 1 and where.endswith("content"):  # none of its shapes
            message = "Input should be a string or a list of text parts"
        elif len(errors) > 1 and where == "temperature":
            message = "Input should be a number"
        message = f"{message} (got {_short(first.get('input'))})"
    return ApiError(400, f"'{where}': {message}" if where else message, param=where or None)


def _is_field(part: int | str) -> bool:
    """A field name or list index in an error's location, not a union branch's label."""
    return isinstance(part, int) or (part.isidentifier() and part not in (
        "str", "int", "float", "bool", "list", "dict"))


def _short(value: Any) -> str:
    return clip(repr(value), 80)


def clip(text: str, limit: int) -> str:
    """``text`` (a client's) fit to echo or log: past ``limit`` characters, its start, an
    ellipsis and its length."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def conversation(messages: list[Message]) -> str:
    """The graph's input message: the last message's text; earlier turns (system, user,
    assistant, ...) come before it as ``role: text`` paragraphs, so that every node that
    reads the question sees the conversation it belongs to."""
    last = messages[-1]
    if last.role != "user":
        raise ApiError(400, f"'messages.{len(messages) - 1}': the last message must be the "
                            f"user's (got role {last.role!r})", param="messages")
    if not last.text().strip():
        raise ApiError(400, "the last user message is empty", param="messages")
    history = [f"{m.role}: {m.text()}" for m in messages[:-1] if m.text().strip()]
    text = "\n\n".join([*history, last.text()])
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape ("\\ud800") in the JSON
        raise ApiError(400, "'messages': the text holds an unpaired surrogate, which is not "
                            "a character", param="messages") from None
    return text
