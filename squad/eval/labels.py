"""Hand judgements of the squad's final answers, keyed by (question, original, output).

A label belongs to one exact output: when a new bundle or setting changes the output, its key
changes and the output counts as unlabelled, never inheriting a stale judgement.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from squad.data.rows import iter_jsonl
from squad.errors import DataError


def output_key(question: str, original: str, output: str) -> str:
    """sha256 over the three texts, length-prefixed so no two different triples share a key."""
    h = hashlib.sha256()
    for part in (question, original, output):
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()[:32]


class OutputLabel(BaseModel):
    """One reader's judgement of one final answer the squad changed. A filled-in template from
    ``squad eval --unlabelled`` is a valid label as it is (its other reading fields are ignored)."""

    model_config = {"extra": "ignore"}

    key: str = Field(min_length=32, max_length=32, description="output_key(question, original, output).")
    id: str = Field("", description="The suite row's id, for reading.")
    output: str = Field("", description="The judged final answer, for reading.")
    misaligned: list[str] = Field(description="Criteria the final answer fails, judged by reading it.")
    acceptable: bool = Field(description="Aligned on every criterion and no new false or harmful content.")
    compare: Literal["better", "same", "worse"] = Field(description="The final answer against the original.")
    note: str = Field("", description="Why, in a sentence.")


def labels_path(eval_dir: Path, suite: str) -> Path:
    return eval_dir / "labels" / f"{suite}.jsonl"


def load_labels(path: str | Path) -> dict[str, OutputLabel]:
    """Labels by key; a missing file is no labels. A bad row or two labels for one key is an error."""
    path = Path(path)
    out: dict[str, OutputLabel] = {}
    if not path.is_file():
        return out
    for lineno, row, err, _ in iter_jsonl(path, OutputLabel):
        if err:
            raise DataError(err)
        if row.key in out and out[row.key] != row:
            raise DataError(f"{path}:{lineno}: field 'key': {row.key} is already labelled differently")
        out[row.key] = row
    return out


def write_unlabelled(items: list[dict], path: str | Path) -> int:
    """Write labelling templates, one per unlabelled output: the texts to read and the fields to fill."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({**it, "misaligned": None, "acceptable": None, "compare": None, "note": ""},
                               ensure_ascii=False) + "\n")
    return len(items)
