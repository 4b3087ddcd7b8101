"""Text that leaves the process (logs, MLflow tags, Prefect artifacts, `status`) never carries secrets or raw input.

Passwords in URLs (database URLs, tracking URIs with credentials) are masked; text from untrusted places (data
files, server answers, exception messages quoting them) is cut to a short excerpt without control characters.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@host — the password part, in any URL-like text.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]+:)(?P<secret>[^@\s/]+)(?=@)")
# key=value secrets as they appear in DSNs, headers and environments (password=..., PREFECT_API_AUTH_STRING=...):
# the key may be the tail of a longer name.
_KEYED_SECRET = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?P<key>[A-Za-z0-9_]*?(?:password|passwd|pwd|secret(?:[_-]?key)?|token|api[_-]?key"
    r"|auth[_-]?string))(?P<sep>\s*[=:]\s*)(?P<value>[^\s,;&'\"]+)"
)


def mask_secrets(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _KEYED_SECRET.sub(lambda m: m.group("key") + m.group("sep") + MASK, text)


def masked_uri(uri: str) -> str:
    """A URI with any password replaced, for display (the real URI is only ever handed to clients)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return mask_secrets(uri)
    host = parts.netloc.rpartition("@")[2]  # as written: keeps an IPv6 host's brackets and the port
    user = f"{parts.username}:{MASK}@" if parts.username else f":{MASK}@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


# NAME=value, as in an environment entry: in untrusted data any such value is masked, whatever the name.
_ASSIGNMENT = re.compile(r"(?P<key>\b[A-Za-z_][A-Za-z0-9_.-]*\s?=\s?)[^\s,;&'\"=]+")


def _printable(ch: str) -> str:
    """Controls and separators (NUL between environment entries, newlines, \x9b) become spaces; invisible format
    characters (bidi overrides, zero-width) vanish, so they cannot split a masked value or disguise text."""
    category = unicodedata.category(ch)
    if category == "Cc" or (category[0] == "Z" and ch != " "):
        return " "
    return "" if category[0] == "C" else ch


def excerpt(value: object, limit: int = 300, *, mask_assignments: bool = False) -> str:
    """A short, single-line, secret-masked version of untrusted or foreign text. With `mask_assignments` (text that
    came from a data file), the value of anything shaped like NAME=value is masked too."""
    text = "".join(_printable(ch) for ch in str(value)[: limit * 8])
    text = mask_secrets(text)
    if mask_assignments:
        text = _ASSIGNMENT.sub(lambda m: m.group("key") + MASK, text)
    text = re.sub(r" {2,}", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def secret_values(environ: dict[str, str]) -> list[str]:
    """The values of the environment's secret-looking variables (and URL passwords in any variable), longest first,
    so a caller can check that none of them appears in what it is about to write."""
    found = set()
    for key, value in environ.items():
        if not value:
            continue
        if re.search(r"(?i)(password|passwd|secret|token|api_?key|auth_string)", key) and len(value) >= 6:
            found.add(value)
        for match in _URL_PASSWORD.finditer(value):
            if len(match.group("secret")) >= 6:
                found.add(match.group("secret"))
    return sorted(found, key=len, reverse=True)
