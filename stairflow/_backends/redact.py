"""Keeping secrets and server noise out of what stairflow prints and records.

Whatever a server sends back can end up in a message: an error body that echoes the
``Authorization`` header, an SSE error event, a model id. `redact` removes every configured
key from a text, also base64-encoded (``Authorization: Basic base64(user:KEY)``: an HTTP
client sends a URL's ``user:KEY@`` that way); `one_line` makes server text safe to show on one
line of a terminal.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

__all__ = ["MIN_SECRET", "REDACTED", "one_line", "redact", "redact_data"]

REDACTED = "[redacted]"
# shorter "keys" would match ordinary text (a key "1" would rewrite every number); real API
# keys are far longer, and servers that want no key get none
MIN_SECRET = 8


def _char(c: str) -> str:
    """A pattern for one character of a key as a server may spell it back: as it is, as a
    URL escape (%2F or %2f, one per UTF-8 byte), or as a JSON string escape (\\/, \\u00e9)."""
    if c.isascii() and (c.isalnum() or c in "-_.~"):
        return re.escape(c)
    url = "".join(f"%{b:02x}" for b in c.encode())
    spellings = {re.escape(c), re.escape(json.dumps(c)[1:-1]),
                 re.escape(json.dumps(c, ensure_ascii=False)[1:-1])}
    if c == "/":
        spellings.add(re.escape("\\/"))
    url_pattern = "".join(f"%[{h[1].lower()}{h[1].upper()}][{h[2].lower()}{h[2].upper()}]"
                          for h in re.findall(r"%..", url))
    return "(?:" + "|".join([*sorted(spellings), url_pattern]) + ")"


_URLSAFE = str.maketrans("+/", "-_")


def _base64(secret: str) -> set[str]:
    """What base64 text holding ``secret`` surely contains, in the standard and the URL-safe
    alphabet. Base64 spells 3 bytes as 4 characters, so the spelling of the secret depends on
    where it starts in the encoded bytes (``base64(":" + KEY)`` shares nothing with
    ``base64(KEY)``): for each of the 3 offsets, the characters made of the secret's bits
    alone; and the whole encoding of the secret alone, padding and all."""
    data = secret.encode()
    found = {base64.b64encode(data).decode()}
    for skip in range(3):
        text = base64.b64encode(bytes(skip) + data).decode()
        # character i spells bits 6i..6i+6: keep those inside the secret's 8*skip..8*(skip+n)
        found.add(text[-(-8 * skip // 6):8 * (skip + len(data)) // 6])
    return found | {s.translate(_URLSAFE) for s in found}


@lru_cache(maxsize=64)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    given = {s for s in secrets if len(s) >= MIN_SECRET}
    spelt = given.union(*(_base64(s) for s in given))
    keys = sorted((s for s in spelt if len(s) >= MIN_SECRET), key=len, reverse=True)
    if not keys:
        return None
    # longest first: a key may hold another
    return re.compile("|".join("".join(_char(c) for c in key) for key in keys))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of every secret (of at least `MIN_SECRET` characters)
    replaced by ``[redacted]``, however a server spelt it back (see `_char`), base64-encoded
    too (see `_base64`).

    Redact before cutting a text short: a cut can leave the start of a key that no longer
    matches.
    """
    pattern = _pattern(frozenset(secrets))
    return text if pattern is None else pattern.sub(REDACTED, text)


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` on one line of printable characters (no escape sequences), cut to ``limit``."""
    printable = "".join(c if c.isprintable() else " " for c in text)
    flat = " ".join(printable.split())
    if limit is not None and len(flat) > limit:
        return flat[: max(limit - 3, 0)] + "..."
    return flat


def redact_data(data: Any, secrets: Iterable[str]) -> Any:
    """``data`` (JSON-like: dicts, lists, strings, numbers) with every string redacted; its
    structure and its other values stay as they are, so it still serialises to valid JSON."""
    keys = tuple(secrets)
    if not any(len(k) >= MIN_SECRET for k in keys):
        return data
    if isinstance(data, str):
        return redact(data, keys)
    if isinstance(data, dict):
        return {redact_data(k, keys): redact_data(v, keys) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(v, keys) for v in data]
    return data
