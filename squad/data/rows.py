"""JSON Lines data: schema-validated rows and the fixed held-out split.

Row kinds (DESIGN.md): a correction triple ``{question, answer, correction}`` and an inspector row
``{question, answer, label}``. Seed data per policy lives in ``policies/<c>/data/``:
``corrections.jsonl`` (triples), ``good.jsonl`` (already-good pairs) and, optionally,
``inspector.jsonl`` (labelled rows for that criterion's inspector only, e.g. hard negatives: answers
that sound safe but are not), ``keep.jsonl`` (pairs fine on this criterion, whatever else is wrong
with them: its aligner learns to return them unchanged) and ``rewrites.jsonl`` (read rewrites).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from squad.errors import DataError

HELDOUT_PERCENT = 15


class Row(BaseModel):
    model_config = {"extra": "ignore", "str_strip_whitespace": True}

    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    topic: str | None = None

    @field_validator("question", "answer", mode="before")
    @classmethod
    def _strict_str(cls, v):
        if not isinstance(v, str):
            raise ValueError(f"must be a string, got {type(v).__name__}")
        return v


class PairRow(Row):
    """A (question, answer) pair, e.g. an already-good answer or an input to correct."""


class CorrectionRow(Row):
    """A correction triple: ``correction`` is the better version of ``answer``."""

    correction: str = Field(min_length=1)

    @field_validator("correction", mode="before")
    @classmethod
    def _strict_corr(cls, v):
        if not isinstance(v, str):
            raise ValueError(f"must be a string, got {type(v).__name__}")
        return v


class LabeledRow(Row):
    """Inspector data: label 1 = aligned, 0 = misaligned."""

    label: int = Field(ge=0, le=1, strict=True)


class Rewrite(BaseModel):
    """An aligner's rewrite of an answer, as ``squad data rewrites`` writes it for a reader."""

    model_config = {"extra": "forbid"}

    question: str = Field(min_length=1)
    original: str = Field(description="The answer the aligner was given.")
    answer: str = Field(description="The aligner's rewrite, as the squad would keep it.")
    criterion: str = Field(description="Whose aligner wrote it.")


class RewriteRow(Rewrite):
    """A rewrite once read by hand (``rewrites.jsonl``): inspector data for every criterion."""

    misaligned: list[str] = Field(description="Criteria the rewrite fails, judged by reading it; [] = good.")
    compare: Literal["better", "same", "worse", ""] = Field("", description="The rewrite against the original, by reading.")
    note: str = ""

    def labeled(self, criterion: str) -> LabeledRow:
        """This rewrite as ``criterion``'s inspector row: 0 where the reader said it fails it, else 1."""
        return LabeledRow(question=self.question, answer=self.answer, label=0 if criterion in self.misaligned else 1)


R = TypeVar("R", bound=BaseModel)


def row_error(path, lineno: int, e: ValidationError | Exception) -> str:
    if isinstance(e, ValidationError):
        parts = [f"field '{'.'.join(map(str, err['loc'])) or '<row>'}': {err['msg']}" for err in e.errors()]
        return f"{path}:{lineno}: " + "; ".join(parts)
    return f"{path}:{lineno}: {e}"


def parse_line(line: str, model: type[R]) -> R:
    """Parse one JSON line into ``model``; raises ValueError or ValidationError."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return model.model_validate(obj)


def check_line(path: str | Path, lineno: int, line: str, model: type[R]) -> tuple[int, R | None, str | None, str]:
    """One decoded JSON Lines row as ``(lineno, row, error, raw_line)``; the error names file, line, field."""
    try:
        return lineno, parse_line(line, model), None, line
    except (ValueError, ValidationError) as e:
        return lineno, None, row_error(path, lineno, e), line


def iter_jsonl(path: str | Path, model: type[R]) -> Iterator[tuple[int, R | None, str | None, str]]:
    """Yield ``(lineno, row, error, raw_line)`` for each non-blank line: never stops at a bad row."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, None, row_error(path, lineno, ValueError(f"not valid UTF-8 (byte {e.start})")), \
                    raw.decode("utf-8", errors="replace")
                continue
            if line.strip():
                yield check_line(path, lineno, line, model)


def read_jsonl(path: str | Path, model: type[R]) -> list[R]:
    """Read every row strictly: the first bad row raises DataError naming file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    for _, row, err, _ in iter_jsonl(path, model):
        if err:
            raise DataError(err)
        rows.append(row)
    return rows


def is_heldout(question: str) -> bool:
    """The fixed held-out split: about 15% of questions, chosen by a stable hash, never trained on."""
    digest = hashlib.sha256(question.strip().encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class PolicyData:
    """A criterion's seed data, split into train and held-out test."""

    criterion: str
    corrections: dict[str, list[CorrectionRow]] = field(default_factory=dict)  # split -> rows
    good: dict[str, list[PairRow]] = field(default_factory=dict)
    labeled: dict[str, list[LabeledRow]] = field(default_factory=dict)  # inspector.jsonl, if any
    keep: dict[str, list[PairRow]] = field(default_factory=dict)  # keep.jsonl, if any
    rewrites: dict[str, list[RewriteRow]] = field(default_factory=dict)  # rewrites.jsonl, if any
    hashes: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> tuple[list[CorrectionRow], list[PairRow]]:
        return self.corrections.get(name, []), self.good.get(name, [])


def _check_criteria(path: Path, rows: list[RewriteRow], known: set[str]) -> None:
    """A criterion named in 'misaligned' must be one of the policies beside it (a typo would pass silently)."""
    for n, r in enumerate(rows, 1):
        for name in (*r.misaligned, r.criterion):
            if name not in known:
                raise DataError(f"{path}: row {n}: criterion {name!r} is not a policy beside it (known: {sorted(known)})")


OPTIONAL_FILES = ("inspector.jsonl", "keep.jsonl", "rewrites.jsonl")


def load_policy_data(policy_dir: str | Path) -> PolicyData:
    folder = Path(policy_dir) / "data"
    data = PolicyData(criterion=Path(policy_dir).name)
    for fname, model, target in (("corrections.jsonl", CorrectionRow, data.corrections),
                                 ("good.jsonl", PairRow, data.good), ("inspector.jsonl", LabeledRow, data.labeled),
                                 ("keep.jsonl", PairRow, data.keep), ("rewrites.jsonl", RewriteRow, data.rewrites)):
        path = folder / fname
        if fname in OPTIONAL_FILES and not path.exists():
            continue
        rows = read_jsonl(path, model)
        if model is RewriteRow:
            _check_criteria(path, rows, {p.parent.name for p in Path(policy_dir).parent.glob("*/policy.yaml")})
        data.hashes[f"{data.criterion}/{fname}"] = file_sha256(path)
        for r in rows:
            target.setdefault("test" if is_heldout(r.question) else "train", []).append(r)
    return data


def inspector_rows(all_data: dict[str, PolicyData], criterion: str, split: str,
                   independent_of: list[str] | tuple[str, ...] = ()) -> list[LabeledRow]:
    """Inspector examples for one criterion.

    Misaligned (0): the criterion's own bad answers. Aligned (1): its corrections, every
    criterion's good answers (a good answer should pass every inspector), and both the misaligned
    answers and the corrections of the criteria in ``independent_of`` (the policy's field): a vague
    answer is not unethical, so the ethics inspector must not flag it, or the squad would route it
    to the wrong aligner. Plus the criterion's own labelled rows (``inspector.jsonl``), as labelled,
    its ``keep.jsonl`` pairs as aligned (for this criterion only: they may fail the others), and
    every criterion's read rewrites (``rewrites.jsonl``): 0 where the reader said the rewrite
    fails this criterion, so each inspector learns what the aligners' own mistakes look like.
    """
    rows: list[LabeledRow] = []
    own = all_data[criterion]
    corr, good = own.split(split)
    rows += [LabeledRow(question=r.question, answer=r.answer, label=0) for r in corr]
    rows += [LabeledRow(question=r.question, answer=r.correction, label=1) for r in corr]
    for c, d in all_data.items():
        other_corr, other_good = d.split(split)
        rows += [LabeledRow(question=r.question, answer=r.answer, label=1) for r in other_good]
        if c in independent_of and c != criterion:
            rows += [LabeledRow(question=r.question, answer=a, label=1) for r in other_corr for a in (r.answer, r.correction)]
    rows += own.labeled.get(split, [])
    rows += [LabeledRow(question=r.question, answer=r.answer, label=1) for r in own.keep.get(split, [])]
    rows += [r.labeled(criterion) for d in all_data.values() for r in d.rewrites.get(split, []) if r.answer.strip()]
    return rows
