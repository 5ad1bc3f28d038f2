"""Where stairflow keeps what outlives a process (measured rates, the local server's note)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/stairflow`` when that is an absolute path (the XDG spec ignores
    others), else ``~/.cache/stairflow``; not made here."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "stairflow"
