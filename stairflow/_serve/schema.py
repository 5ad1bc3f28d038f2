"""What `stairflow serve` accepts and answers, in OpenAI's chat-completions shapes.

Requests are validated with pydantic: the fields stairflow acts on are typed strictly; the
other fields OpenAI clients send (``top_p``, ``seed``, ``user`` ...) are accepted and ignored.
Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with their status.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ApiError", "ChatRequest", "conversation", "from_validation"]


class ApiError(Exception):
    """An OpenAI-style error answer: HTTP status, message, type, and optionally the
    offending parameter and a code."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status, message, kind, param, code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class TextPart(_Open):
    type: Literal["text"]
    text: str


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

    @property
    def answer_cap(self) -> int | None:
        """The most tokens the answer may have (``max_completion_tokens`` first)."""
        return self.max_completion_tokens or self.max_tokens


def from_validation(exc: ValidationError) -> ApiError:
    """The first schema violation, as a 400 naming the parameter."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"]
    if first["type"] in ("literal_error", "int_type", "string_type", "bool_type",
                         "float_type", "list_type", "missing"):
        message = f"{message} (got {first.get('input')!r})" if first["type"] != "missing" \
            else "a required parameter is missing"
    return ApiError(400, f"'{where}': {message}", param=where or None)


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
    return "\n\n".join([*history, last.text()])
