"""The ``stairflow`` command: the parser and the exit-status rule; one module per command.

Bad input ends with a one-line ``stairflow: error: ...`` on stderr and exit status 2; a run
that fails ends with exit status 1; a bug in stairflow, with one line and exit status 70.
A reader that closes the pipe early (``stairflow run moa | head``) ends the run quietly with
status 141, as a program killed by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from .._errors import ConfigError, RunError, StairflowError
from . import batch, bench, eval, graphs, local, run, serve, trace
from .common import Parser

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="stairflow", description="Low-latency multi-agent LLM graphs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    run.add_parser(sub)
    bench.add_parser(sub)
    batch.add_parser(sub)
    eval.add_parser(sub)
    graphs.add_parsers(sub)
    local.add_parsers(sub)
    serve.add_parser(sub)
    trace.add_parsers(sub)
    return p


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args, extra = _parser().parse_known_args(argv)
    # argparse matches "GRAPH [PROMPT]" in one go, so a prompt after options ("run moa
    # --virtual-clock 'Why?'") is left over: take it as the prompt
    if extra[:1] == ["--"]:  # "--" ends the options: what follows is the prompt
        extra = extra[1:]
        if args.command == "run" and args.prompt is None and len(extra) == 1:
            args.prompt, extra = extra[0], []
    if args.command == "run" and args.prompt is None and len(extra) == 1 and (
        extra[0] == "-" or not extra[0].startswith("-")
    ):
        args.prompt, extra = extra[0], []
    if args.command == "bench" and extra and not any(x.startswith("-") for x in extra):
        args.prompts, extra = [*args.prompts, *extra], []  # prompts given after options
    if extra:
        raise ConfigError(f"unrecognized arguments: {' '.join(extra)} (see 'stairflow "
                          f"{args.command} --help')")
    return args


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None, stdin: TextIO | None = None) -> int:
    # a closed descriptor leaves sys.stdout/sys.stderr None: write into the void, not crash
    out = out or sys.stdout or open(os.devnull, "w")  # noqa: SIM115 - lives as long as we do
    err = err or sys.stderr or open(os.devnull, "w")  # noqa: SIM115
    stdin = stdin or sys.stdin or open(os.devnull)  # noqa: SIM115
    try:
        args = _parse(argv)
        code: int = args.handler(args, out, err, stdin)
        out.flush()
        return code
    except RunError as exc:
        print(f"stairflow: run failed: {exc}", file=err)
        return 1
    except StairflowError as exc:
        print(f"stairflow: error: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        print("stairflow: interrupted", file=err)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except OSError as exc:  # the output cannot be written (a full disk, /dev/full ...)
        _quiet_stdout()
        print(f"stairflow: error: cannot write the output ({exc.strerror or exc})", file=err)
        return 1
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("STAIRFLOW_DEBUG"):
            raise
        print(f"stairflow: internal error: {type(exc).__name__}: {exc} (please report it; "
              "STAIRFLOW_DEBUG=1 shows the traceback)", file=err)
        return 70


def _quiet_stdout() -> None:
    """The reader went away: send what Python still wants to flush at exit to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests)
        pass
