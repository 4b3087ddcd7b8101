"""The README's fenced code blocks, by section, so tests and CI run what users read."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section(heading: str, text: str | None = None) -> str:
    """The text under a `## heading`, up to the next heading of the same level."""
    text = README.read_text() if text is None else text
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    if match is None:
        raise LookupError(f"README has no section '## {heading}'")
    return match.group(1)


def code_blocks(heading: str, language: str | None = None) -> list[str]:
    """Every fenced block in a section, optionally only those tagged with `language`."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", section(heading), flags=re.S | re.M)
    return [body for lang, body in blocks if language is None or lang == language]
