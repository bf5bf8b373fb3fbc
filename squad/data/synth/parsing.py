"""Parsing a teacher's replies: list items, a leading label, text compared loosely."""
from __future__ import annotations

import re

_ITEM = re.compile(r"^\s*(?:\*\*)?(?:\(?\d+[.):]|[-*•])\s+(.*\S)\s*$")  # "1. x", "1) x", "- x", "**1. x**"
_ITEM_LABEL = re.compile(r"^(?:question|topic|message|example|step)\s*\d*\s*:\s*", re.I)
_LABEL = re.compile(r"^(?:corrected answer|rewritten answer|answer|critique)\s*:\s*", re.I)
_QUOTES = "\"'“”‘’`"


def _unquote(s: str) -> str:
    s = _ITEM_LABEL.sub("", s.strip().strip("*").strip()).strip("*").strip()  # markdown bold, "Question:"
    while len(s) > 1 and s[0] in _QUOTES and s[-1] in _QUOTES:
        s = s[1:-1].strip()
    return s


def parse_list(text: str) -> list[str]:
    """Items of a numbered ("1. x", "1) x") or bulleted ("- x", "* x") list; preamble is skipped.

    Without any list marker, every non-empty line that is not a heading (ending in ':') is an item.
    Duplicates (case-insensitive) are dropped.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    items = [m.group(1) for ln in lines if (m := _ITEM.match(ln))]
    if not items:
        items = [ln for ln in lines if not ln.rstrip().endswith(":")]
    out, seen = [], set()
    for it in map(_unquote, items):
        if it and (key := norm_text(it)) not in seen:
            seen.add(key)
            out.append(it)
    return out


def clean(text: str) -> str:
    """A teacher's reply without surrounding whitespace or a leading 'Answer:'-style label."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def norm_text(text: str) -> str:
    """``text`` for loose comparison: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()
