"""What several commands share: the parser class and the graph argument."""

from __future__ import annotations

import argparse
from typing import NoReturn

from .._errors import ConfigError

__all__ = ["GRAPH_HELP", "Parser"]

GRAPH_HELP = "a graph file, a bundled graph name (see 'stairflow list') or module:attribute"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see '{self.prog} --help')")
