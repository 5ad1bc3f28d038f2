"""Checking what users give as endpoint URLs and key variable names, before any request."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["ENV_NAME", "url_problem"]

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # an environment variable's name


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an http(s) endpoint (None: it can)."""
    if any(c.isspace() for c in url):
        return "it contains whitespace"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it checks the port (a ValueError when out of range)
    except ValueError as exc:
        return f"it is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "it is not an http(s) URL"
    if not parts.hostname:
        return "it names no host"
    return None
