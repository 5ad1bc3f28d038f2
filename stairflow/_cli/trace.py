"""``stairflow trace convert`` and ``stairflow timeline``: trace files written by ``run
--trace``, in another format or as a picture.

Also the writer ``run --trace`` uses, so both write the same formats the same way.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

from .._chrome import to_chrome
from .._errors import ConfigError
from .._timeline import FORMATS as PICTURE_FORMATS
from .._timeline import draw

__all__ = ["TRACE_FORMATS", "add_parsers", "write_trace"]

TRACE_FORMATS = ("stairflow", "chrome")
T = TypeVar("T")


def add_parsers(sub: Any) -> None:
    t = sub.add_parser("trace", help="work with trace files written by 'run --trace'")
    tsub = t.add_subparsers(dest="trace_command", required=True, parser_class=type(t))
    c = tsub.add_parser("convert", help="convert a trace file, e.g. for ui.perfetto.dev")
    c.add_argument("input", help="a trace file written by 'stairflow run --trace FILE'")
    c.add_argument("-o", "--output", required=True, help="the file to write")
    c.add_argument("--to", choices=TRACE_FORMATS[1:], default="chrome",
                   help="the format to write: chrome (Chrome trace events, for "
                        "ui.perfetto.dev and chrome://tracing; the default)")
    c.set_defaults(handler=_convert)

    d = sub.add_parser("timeline", help="draw runs' timelines (one lane per node) from their "
                                        "traces")
    d.add_argument("traces", nargs="+", metavar="TRACE",
                   help="trace files written by 'stairflow run --trace FILE', drawn one above "
                        "the other on one time axis (e.g. a staircase run and a normal one)")
    d.add_argument("-o", "--output", required=True,
                   help=f"the picture ({', '.join(PICTURE_FORMATS)}, from the suffix)")
    d.set_defaults(handler=_timeline)


def write_trace(data: Mapping[str, Any], path: Path, fmt: str) -> None:
    """Write a trace (as `Trace.to_json` gives it) in ``fmt``, one of `TRACE_FORMATS`."""
    out = to_chrome(data) if fmt == "chrome" else data
    path.write_text(json.dumps(out, indent=None if fmt == "chrome" else 1) + "\n")


def _read(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; give a trace written by 'stairflow run "
                          "--trace FILE'") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}); give a trace "
                          "written by 'stairflow run --trace FILE'") from None
    if "traceEvents" in data if isinstance(data, dict) else False:
        raise ConfigError(f"{path}: already a Chrome trace; open it in ui.perfetto.dev")
    if not (isinstance(data, dict) and isinstance(data.get("meta"), dict)
            and isinstance(data.get("events"), list)
            and all(isinstance(e, dict) and isinstance(e.get("t"), int | float)
                    and isinstance(e.get("kind"), str) for e in data["events"])):
        raise ConfigError(f"{path}: not a stairflow trace (an object with 'meta' and "
                          "'events', each event with 't' and 'kind'); give a trace written by "
                          "'stairflow run --trace FILE'")
    return data


def _timeline(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    traces = [_read(path) for path in args.traces]
    path = draw_picture(traces, args.output, ", ".join(args.traces))
    print(f"wrote {path}", file=out)
    return 0


def _guarded(action: Callable[[], T], output: str, source: str) -> T:
    """``action()``, with a file that cannot be written, or events that are not a run's, as
    one-line errors."""
    try:
        return action()
    except OSError as exc:
        raise ConfigError(f"-o {output}: cannot write there ({exc.strerror or exc}); give a "
                          "file in an existing directory") from None
    except (KeyError, TypeError, ValueError) as exc:  # well-formed JSON, broken events
        raise ConfigError(f"{source}: an event is not as 'stairflow run --trace' writes it "
                          f"({type(exc).__name__}: {exc})") from None


def draw_picture(traces: list[dict[str, Any]], output: str, source: str = "the trace") -> Path:
    """`draw`, with its failures as one-line errors."""
    return _guarded(lambda: draw(traces, output), output, source)


def _convert(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    data = _read(args.input)
    target = Path(args.output)
    _guarded(lambda: write_trace(data, target, args.to), args.output, args.input)
    print(f"wrote {target} ({args.to}: open it in ui.perfetto.dev or chrome://tracing)",
          file=out)
    return 0
