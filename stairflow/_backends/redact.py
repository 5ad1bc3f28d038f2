"""Keeping secrets and server noise out of what stairflow prints and records.

Whatever a server sends back can end up in a message: an error body that echoes the
``Authorization`` header, an SSE error event, a model id. `redact` removes every configured
key from a text; `one_line` makes server text safe to show on one line of a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import quote

__all__ = ["REDACTED", "one_line", "redact"]

REDACTED = "[redacted]"


def _forms(secret: str) -> set[str]:
    # the key as sent, and as a JSON string or a URL may spell it back
    return {secret, json.dumps(secret)[1:-1], secret.replace("/", "\\/"), quote(secret, safe="")}


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of every non-empty secret replaced by ``[redacted]``.

    Redact before cutting a text short: a cut can leave the start of a key that no longer
    matches.
    """
    forms = {form for secret in secrets if secret for form in _forms(secret)}
    for form in sorted(forms, key=len, reverse=True):  # longest first: a form may hold another
        text = text.replace(form, REDACTED)
    return text


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` on one line of printable characters (no escape sequences), cut to ``limit``."""
    printable = "".join(c if c.isprintable() else " " for c in text)
    flat = " ".join(printable.split())
    if limit is not None and len(flat) > limit:
        return flat[: max(limit - 3, 0)] + "..."
    return flat
