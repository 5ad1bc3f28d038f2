"""Checking what users give as endpoint URLs and key variable names, before any request; and
keeping the credentials a URL may carry (``http://user:KEY@host/v1``) out of what is shown."""

from __future__ import annotations

import re
from contextlib import suppress
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["ENV_NAME", "display_url", "url_problem", "url_secrets"]

MIN_QUERY_SECRET = 8  # shorter query values (?v=1) are not redacted from what servers say
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # an environment variable's name

# the scheme (or "//") before an authority; the authority ends at the first of "/?#"
_START = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://|//")


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an http(s) endpoint (None: it can)."""
    if any(c.isspace() for c in url):
        return "it contains whitespace"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it checks the port (a ValueError when out of range)
    except ValueError as exc:
        if "@" in url:  # the parser's words may quote a piece of the key ("as 'sk-ab'")
            return ("it is not a valid URL (in a user:password@ part, write '/', '?', '#' "
                    "and '@' as %2F, %3F, %23, %40)")
        return f"it is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "it is not an http(s) URL"
    if not parts.hostname:
        return "it names no host"
    return None


def _userinfo(url: str, broken: bool = False) -> tuple[int, int] | None:
    """Where ``url``'s userinfo and its ``@`` are (start, end), if it has one: as `urlsplit`
    finds it (the last "@" before the first "/", "?" or "#" ends it), or in a ``broken`` URL,
    up to its last "@" (a key with an unescaped "/" in it must not show either)."""
    start = _START.match(url)
    begin = start.end() if start else 0
    end = len(url) if broken else min(
        (i for i in (url.find(c, begin) for c in "/?#") if i >= 0), default=len(url))
    at = url.rfind("@", begin, end)
    return None if at < 0 else (begin, at + 1)


def display_url(url: str) -> str:
    """``url`` fit to print or record: its userinfo (``user:KEY@``), which is a credential,
    becomes ``[redacted]@``, and its query and fragment (``?api-key=...``, where a key may
    travel too) ``?[redacted]``. Parsed by hand, not by `urlsplit`: a URL too broken to
    parse is still shown, in error messages."""
    found = _userinfo(url, broken=url_problem(url) is not None)
    if found is None:
        start = _START.match(url)
        shown, begin = url, start.end() if start else 0
    else:
        shown = f"{url[:found[0]]}[redacted]@{url[found[1]:]}"
        begin = found[0] + len("[redacted]@")
    query = min((i for i in (shown.find(c, begin) for c in "?#") if i >= 0), default=-1)
    return shown if query < 0 else f"{shown[:query]}?[redacted]"


def url_secrets(url: str) -> tuple[str, ...]:
    """The credentials in ``url``'s userinfo, to redact from what servers send back: as
    written, decoded (``user:password``, the password alone, the user alone when there is no
    password). An HTTP client sends them as ``Authorization: Basic base64(user:password)``;
    `stairflow._backends.redact.redact` finds secrets base64-encoded too."""
    forms: set[str] = set()
    with suppress(ValueError):  # the query's values long enough to be keys (?api-key=...)
        forms |= {v for _, v in parse_qsl(urlsplit(url).query) if len(v) >= MIN_QUERY_SECRET}
    found = _userinfo(url)
    if found is not None:
        raw = url[found[0]:found[1] - 1]
        user, _, password = raw.partition(":")
        forms |= {raw, password, unquote(password), f"{unquote(user)}:{unquote(password)}"}
        if not password:  # a key given as the user name (http://KEY@host/)
            forms |= {user, unquote(user)}
    return tuple(sorted(f for f in forms if f and f != ":"))
