"""Text that leaves the process (logs, MLflow tags, Prefect artifacts, `status`) never carries secrets or raw input.

Passwords in URLs (database URLs, tracking URIs with credentials) are masked; text from untrusted places (data
files, server answers, exception messages quoting them) is cut to a short excerpt without control characters.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@host — the password part, in any URL-like text.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]+:)(?P<secret>[^@\s/]+)(?=@)")
# key=value secrets as they appear in DSNs and headers (password=..., token=...).
_KEYED_SECRET = re.compile(
    r"(?i)\b(?P<key>password|passwd|pwd|secret|token|api[_-]?key|auth[_-]?string)"
    r"(?P<sep>\s*[=:]\s*)(?P<value>[^\s,;&'\"]+)"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def mask_secrets(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _KEYED_SECRET.sub(lambda m: m.group("key") + m.group("sep") + MASK, text)


def masked_uri(uri: str) -> str:
    """A URI with any password replaced, for display (the real URI is only ever handed to clients)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return mask_secrets(uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:{MASK}@" if parts.username else f":{MASK}@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def excerpt(text: object, limit: int = 300) -> str:
    """A short, single-line, secret-masked version of untrusted or foreign text."""
    flat = _CONTROL.sub(" ", str(text)).replace("\n", " ").replace("\r", " ")
    flat = mask_secrets(flat)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


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
