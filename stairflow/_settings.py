"""One schema for the settings of graphs and nodes, shared by Python code and graph files.

Each setting is declared once, here, as a field of a `TypedDict`: its type, its bounds, and the
fix a user reads when a value is wrong (`Fix`). pydantic validates the TypedDicts in strict
mode, so a whole number is never a bool or a float (``max_tokens = true`` and ``2.0`` are both
rejected), a number is never a string, and every number must be finite (``inf`` and ``nan``
fail). The same TypedDicts type the keyword arguments of `Graph.llm` (``Unpack``), so mypy and
editors check user code against the very list the builder and the TOML loader validate with.

Errors are one line: ``<where>: <path>=<value>; <fix>`` (``graph 'moa', node 'agg':
temperature=3; use a number from 0 to 2``), or ``<where>: unknown field '<path>'; <hint>``.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Mapping
from functools import cache
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs these on Python < 3.12

from ._errors import GraphError
from ._joins import Join, parse_join
from ._prompts import TEMPLATES
from ._urls import ENV_NAME, display_url, url_problem

__all__ = [
    "CONTINUATIONS",
    "MAX_SIM_OUTPUT_TOKENS",
    "PROMPT_FORMATS",
    "FnSettings",
    "GraphSettings",
    "LLMSettings",
    "SimSettings",
    "SimValue",
    "fields_of",
    "parse_sim",
    "show",
    "unknown_field",
    "validate",
]

_STRICT = ConfigDict(strict=True, extra="forbid")

# No real model writes more than its context window (the largest today hold about a million
# tokens), so a longer simulated answer models nothing; the bound also keeps a typo such as
# 1e9 from building a gigabyte of simulated text.
MAX_SIM_OUTPUT_TOKENS = 1_000_000
MAX_SIM_SECONDS = 1e6  # about 11 days of latency
MIN_SIM_RATE, MAX_SIM_RATE = 1e-3, 1e9  # tokens per second

Continuation = Literal["chat-prefix", "completions", "chat-restate"]
PromptFormat = Literal["gemma", "chatml", "llama3", "document"]
CONTINUATIONS: tuple[Continuation, ...] = get_args(Continuation)
PROMPT_FORMATS: tuple[PromptFormat, ...] = get_args(PromptFormat)


class Fix:
    """What to write instead, shown after a wrong value (metadata on a schema field)."""

    def __init__(self, text: str) -> None:
        self.text = text


# The building blocks: with strict mode an `int` is never a bool, a `float` never a string.
Whole = int
Count = Annotated[int, Field(ge=1)]
Number = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_TEXT = Fix("use a string")


def _join(value: Any) -> Join:
    try:
        return parse_join(value)
    except GraphError as exc:  # keep the join's own message and accepted forms
        raise PydanticCustomError("stairflow", "{message}", {"message": str(exc)}) from None


def _url(value: str | None) -> str | None:
    if value is not None and url_problem(value) is not None:
        raise ValueError(url_problem(value))
    return value


JoinSetting = Annotated[Join | str | Mapping[str, Any], PlainValidator(_join)]


@with_config(_STRICT)
class SimSettings(TypedDict, total=False):
    """Simulated timing of a model endpoint, for the whole graph or one node (`SimTiming`)."""

    # bounded so that every time the timing model derives stays finite (1 / 5e-324 does not)
    latency_s: Annotated[
        Number, Field(ge=0, le=MAX_SIM_SECONDS),
        Fix(f"use a number of seconds from 0 to {MAX_SIM_SECONDS:g}"),
    ]
    prefill_tps: Annotated[
        Number, Field(ge=MIN_SIM_RATE, le=MAX_SIM_RATE),
        Fix(f"use a number of prompt tokens per second from {MIN_SIM_RATE:g} to "
            f"{MAX_SIM_RATE:g}"),
    ]
    decode_tps: Annotated[
        Number, Field(ge=MIN_SIM_RATE, le=MAX_SIM_RATE),
        Fix(f"use a number of output tokens per second from {MIN_SIM_RATE:g} to "
            f"{MAX_SIM_RATE:g}"),
    ]
    output_tokens: Annotated[
        Whole, Field(ge=0, le=MAX_SIM_OUTPUT_TOKENS),
        Fix(f"use a whole number from 0 to {MAX_SIM_OUTPUT_TOKENS}"),
    ]
    seed: Annotated[Whole, Fix("use a whole number")]
    cache: Annotated[
        Literal["none", "slot", "shared"],
        Fix('use "none", "slot" (a slot per node, as llama.cpp with slot pinning) or "shared" '
            "(one prefix cache per model, as vLLM and SGLang)"),
    ]


# a simulated timing setting's value: a number, or the name of the cache kind
SimValue = float | str

# validated as `SimSettings`, typed as a plain mapping so any dict of numbers type-checks
SimMapping = Annotated[
    Mapping[str, SimValue],
    GetPydanticSchema(lambda _tp, handler: handler(SimSettings)),
    Fix("use a table of simulated timings: latency_s, prefill_tps, decode_tps, "
        "output_tokens, seed, cache"),
]
_NONE_FOR_DEFAULT = "or leave it out for the backend's default"


@with_config(_STRICT)
class LLMSettings(TypedDict, total=False):
    """The settings of an llm node (``Graph.llm(name, **settings)``, ``[nodes.NAME]``, and
    ``[defaults]``). Defaults live on `LLMNode`."""

    model: Annotated[str | None, Fix("use a string, the model's name at its endpoint")]
    system: Annotated[str, Fix("use a string, the system prompt")]
    prompt: Annotated[
        str | None, Fix(f"use a template name ({', '.join(TEMPLATES)}) or a template string")
    ]
    temperature: Annotated[Number, Field(ge=0, le=2), Fix("use a number from 0 to 2")]
    max_tokens: Annotated[Count, Fix("use a whole number >= 1")]
    steps: Annotated[
        Count | Annotated[list[Count], Field(min_length=1)]
        | Annotated[tuple[Count, ...], Field(min_length=1)] | Literal["auto"],
        Fix("use a whole number >= 1, a non-empty list of them like [32, 64], or 'auto' "
            "(sized from the backend's rates)"),
    ]
    step_scale_s: Annotated[
        Positive, Field(le=1e6),
        Fix("use a number of seconds above 0 and at most 1e6 (default 16): with steps = "
            "'auto', larger makes fewer, longer steps"),
    ]
    join: JoinSetting
    on_error: Annotated[Literal["fail", "drop"], Fix("use 'fail' or 'drop'")]
    context: Annotated[Literal["rebuild", "append"], Fix("use 'rebuild' or 'append'")]
    sim: SimMapping
    base_url: Annotated[
        str | None, AfterValidator(_url),
        Fix("use an http(s):// URL with a host, e.g. http://127.0.0.1:8080/v1"),
    ]
    api_key_env: Annotated[
        str | None, Field(pattern="^" + ENV_NAME.pattern.replace("\\Z", "$")),
        Fix("use the name of an environment variable, e.g. OPENAI_API_KEY"),
    ]
    continuation: Annotated[
        Continuation | None, Fix(f"use one of {', '.join(CONTINUATIONS)}")
    ]
    prompt_format: Annotated[
        PromptFormat | None, Fix(f"use one of {', '.join(PROMPT_FORMATS)}")
    ]
    timeout_s: Annotated[
        Positive | None,
        Fix(f"use the most seconds one model request may take (> 0), {_NONE_FOR_DEFAULT}"),
    ]


@with_config(_STRICT)
class FnSettings(TypedDict, total=False):
    """The settings of an fn node besides its function (``Graph.fn``, ``[nodes.NAME]``)."""

    join: JoinSetting
    on_error: Annotated[Literal["fail", "drop"], Fix("use 'fail' or 'drop'")]
    timeout_s: Annotated[
        Positive | None,
        Fix("use the most seconds the whole fn node may take (> 0), or leave it out for no "
            "deadline"),
    ]


@with_config(_STRICT)
class GraphSettings(TypedDict, total=False):
    """The graph's own settings (``Graph(...)``, a graph file's top level)."""

    # a graph's name is its model name under `stairflow serve`: "" could never be called
    name: Annotated[str, Field(min_length=1, pattern=r"\S"), Fix("use a non-empty string")]
    description: Annotated[str, _TEXT]
    default_input: Annotated[str | None, _TEXT]
    edge_buffer: Annotated[Count, Fix("use a whole number >= 1")]
    defaults: Annotated[LLMSettings, Fix("use a table of llm node settings")]
    sim: SimMapping


def fields_of(schema: type) -> tuple[str, ...]:
    """The field names of a settings schema, in declaration order."""
    return tuple(_hints(schema))


@cache
def _hints(schema: type) -> dict[str, Any]:
    return get_type_hints(schema, include_extras=True)


@cache
def _adapter(schema: type) -> TypeAdapter[Any]:
    return TypeAdapter(schema)


def _nested(hint: Any) -> type | None:
    """The settings schema a field holds (`SimSettings` for ``sim``), if any."""
    if get_origin(hint) is Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, GetPydanticSchema):  # only `SimMapping` swaps its schema
                return SimSettings
        hint = get_args(hint)[0]
    return hint if isinstance(hint, type) and hint in _SCHEMAS else None


def _fix(hint: Any) -> str:
    while get_origin(hint) is Annotated:
        fixes = [m.text for m in hint.__metadata__ if isinstance(m, Fix)]
        if fixes:
            return fixes[-1]
        hint = get_args(hint)[0]
    return "see docs/graph-files.md"


_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel = 60, 60, 3


def show(value: Any) -> str:
    """A short, one-line repr of a user's value, whatever its size or depth."""
    try:
        return _SHOW.repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply>"


def unknown_field(where: str, path: str, known: tuple[str, ...]) -> str:
    """The one-line message for a setting that does not exist, with the closest name."""
    prefix, _, key = path.rpartition(".")
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        hint = f"did you mean {(prefix + '.' if prefix else '') + close[0]!r}?"
    else:
        hint = f"use one of {', '.join(known)}"
    return f"{where}: unknown field {path!r}; {hint}"


def _message(exc: ValidationError, schema: type, values: Any, where: str) -> str:
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if isinstance(p, str)]
    path: list[str] = []
    value: Any = values
    fix = "see docs/graph-files.md"
    for key in loc:
        hints = _hints(schema)
        if key not in hints:
            if err["type"] == "extra_forbidden":
                return unknown_field(where, ".".join([*path, key]), fields_of(schema))
            break  # a union member's name, not a field
        path.append(key)
        value = value[key] if isinstance(value, Mapping) and key in value else err.get("input")
        fix = _fix(hints[key])
        nested = _nested(hints[key])
        if nested is None:
            break
        schema = nested
    if err["type"] == "stairflow":  # the message of a parser we call, e.g. parse_join
        inside = ".".join(path[:-1])
        return f"{where}: {inside + ': ' if inside else ''}{err['msg']}"
    if not path:
        return f"{where}: {show(values)} is not a table of settings; {fix}"
    if path[-1] == "base_url" and isinstance(value, str):
        value = display_url(value)  # a key in its user:password@ stays out of the message
    return f"{where}: {'.'.join(path)}={show(value)}; {fix}"


def validate(schema: type, values: Any, where: str) -> dict[str, Any]:
    """``values`` checked against ``schema``; raises `GraphError` with a one-line message."""
    try:
        out: dict[str, Any] = _adapter(schema).validate_python(values)
    except ValidationError as exc:
        raise GraphError(_message(exc, schema, values, where)) from None
    except RecursionError:
        raise GraphError(f"{where}: a value is nested too deeply; simplify it") from None
    return out


def parse_sim(values: Mapping[str, Any], where: str) -> dict[str, SimValue]:
    """Simulated timing settings, checked like a graph's ``[sim]`` table.

    For what-ifs from a command line, a value may also be the text of a number
    (``"10"``, ``"0.5"``). Raises `GraphError`: ``<where>: decode_tps=0; use ...``.
    """
    if not isinstance(values, Mapping):
        raise GraphError(f"{where}: {show(values)} is not a table of simulated timings")
    parsed = {k: _number(v) if isinstance(v, str) else v for k, v in values.items()}
    return validate(SimSettings, parsed, where)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text  # not a number: the schema names the setting and the fix


_SCHEMAS = (SimSettings, LLMSettings, FnSettings, GraphSettings)
