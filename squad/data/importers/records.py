"""The shared record machinery of the importers: options, errors, the triple, field helpers."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from squad.errors import SquadError

PREFERENCES = ("safer", "better")
CONTEXTS = ("transcript", "last-turn")


class RecordError(ValueError):
    """One record cannot be converted; ``field`` names the source field at fault."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        super().__init__(f"field '{field}': {message}" if field else message)


@dataclass
class ImportOptions:
    """Per-format choices (each format reads only the ones that concern it)."""

    preference: str = "safer"        # pku-saferlhf: which id names the preferred response: safer | better
    allow_unsafe: bool = False       # pku-saferlhf: keep rows whose preferred response is labelled unsafe
    context: str = "transcript"      # hh-rlhf multi-turn question: transcript | last-turn

    def validate(self) -> "ImportOptions":
        if self.preference not in PREFERENCES:
            raise SquadError(f"--preference {self.preference!r}: expected one of {', '.join(PREFERENCES)}")
        if self.context not in CONTEXTS:
            raise SquadError(f"--context {self.context!r}: expected one of {', '.join(CONTEXTS)}")
        return self


@dataclass
class Triple:
    question: str
    answer: str
    correction: str


# ---------------------------------------------------------------------------------------------
# Field helpers: every error names the source field


def require_text(rec: dict, name: str) -> str:
    if name not in rec or rec[name] is None:
        raise RecordError(name, "missing")
    v = rec[name]
    if not isinstance(v, str):
        raise RecordError(name, f"must be a string, got {type(v).__name__}")
    if not v.strip():
        raise RecordError(name, "empty text")
    return v


def as_number(v: Any) -> float | None:
    """A usable score, or None (bools, strings, NaN and missing values are not scores)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def make_triple(question: str, answer: str, correction: str, answer_field: str, correction_field: str) -> Triple:
    if answer.strip() == correction.strip():
        raise RecordError(correction_field, f"identical to '{answer_field}' (no correction to learn)")
    return Triple(question, answer, correction)

