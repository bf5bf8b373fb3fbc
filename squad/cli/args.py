"""Argument parsing shared by the ``squad`` commands."""
from __future__ import annotations

from squad.errors import SquadError


def parse_thresholds(items: list[str] | None) -> dict[str, float] | None:
    """``--threshold CRITERION=VALUE`` options (repeatable) as a dict; None when none were given."""
    if not items:
        return None
    out = {}
    for it in items:
        name, sep, val = it.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name] = float(val)
        except ValueError:
            raise SquadError(f"--threshold {it!r}: expected CRITERION=VALUE, e.g. ethics=0.4") from None
    return out
