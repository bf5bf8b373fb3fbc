"""Evaluation suites: folders of JSON Lines rows, validated like the training data.

A suite is ``eval/<name>/*.jsonl`` (schema in ``eval/README.md``). Rows carry the criteria their
answer fails (``misaligned``, judged by reading it); adversarial rows also carry the behaviour
expected of the squad (``expect``) and text its output must not contain.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from squad.data.rows import iter_jsonl
from squad.errors import DataError

SUITES = ("wild", "true-but-suspicious", "adversarial", "adversarial-fresh", "outputs", "upstream")


class SuiteRow(BaseModel):
    """One suite item: the answer given to the squad, and what a careful reader says about it."""

    model_config = {"extra": "forbid"}

    id: str = Field(min_length=1, description="Stable name, unique across the suite.")
    question: str = Field(min_length=1, description="What the user asked (untrusted text).")
    answer: str = Field(min_length=1, description="The answer the squad inspects and corrects.")
    misaligned: list[str] = Field(description="Criteria this answer fails, judged by reading it; [] = good.")
    style: str = Field("plain", description="How the answer is written (plain, markdown, code, ...).")
    domain: str = Field("", description="Subject area.")
    note: str = Field("", description="What is wrong with the answer, or why it is fine.")
    expect: Literal["flag", "correct", "pass"] | None = Field(
        None, description="Adversarial rows: flag = flagged (structure removed or an inspector under threshold); "
                          "correct = changed; pass = untouched.")
    must_not_contain: list[str] = Field(default_factory=list, description="Substrings the final answer must not contain.")
    probe: str | None = Field(None, description="Upstream rows: the criterion the question was written to probe.")

    @field_validator("question", "answer", "id", mode="before")
    @classmethod
    def _strict_str(cls, v):
        if not isinstance(v, str):
            raise ValueError(f"must be a string, got {type(v).__name__}")
        return v

    @property
    def good(self) -> bool:
        return not self.misaligned


def suite_dir(name_or_path: str | Path) -> Path:
    """A suite's folder: a path to a folder, or a suite name under ``./eval`` (run from a checkout)."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    if (Path("eval") / str(name_or_path)).is_dir():
        return Path("eval") / str(name_or_path)
    raise DataError(f"no evaluation suite {str(name_or_path)!r}: expected a folder, or one of {list(SUITES)} "
                    f"under ./eval (run from the repository root)")


def suite_files(folder: Path) -> list[Path]:
    """The suite's row files (``questions.jsonl`` drafts and labels live elsewhere or are skipped)."""
    return sorted(p for p in folder.glob("*.jsonl") if p.name != "questions.jsonl")


def load_suite(name_or_path: str | Path, criteria: list[str] | None = None) -> list[SuiteRow]:
    """Every row of a suite, validated; the first bad row raises naming file, line and field.
    With ``criteria``, a row naming a criterion outside them is an error too."""
    folder = suite_dir(name_or_path)
    files = suite_files(folder)
    if not files:
        raise DataError(f"{folder}: no *.jsonl files in this suite")
    rows: list[SuiteRow] = []
    seen: dict[str, str] = {}
    for f in files:
        for lineno, row, err, _ in iter_jsonl(f, SuiteRow):
            if err:
                raise DataError(err)
            where = f"{f}:{lineno} (id {row.id!r})"
            if row.id in seen:
                raise DataError(f"{where}: id already used at {seen[row.id]}")
            seen[row.id] = where
            unknown = [c for c in row.misaligned if criteria is not None and c not in criteria]
            if unknown:
                raise DataError(f"{where}: field 'misaligned': unknown criteria {unknown}; known {criteria}")
            rows.append(row)
    return rows


def normalise_question(text: str) -> str:
    """For contamination checks: case, accents' compatibility forms, punctuation and spacing folded."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())
