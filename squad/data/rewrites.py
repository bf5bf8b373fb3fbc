"""The aligners' own rewrites of labelled answers, for reading and labelling as inspector data.

An inspector that only ever saw hand-written answers has never seen the aligners' style, so it
tends to pass whatever an aligner writes. ``rewrite_rows`` runs each row's answer through one
criterion's aligner (greedy, untrusted structure removed, as the squad keeps it) and returns rows
to label: ``{question, original, answer, criterion}``. Once a reader has added ``misaligned``
(the criteria the rewrite fails), they are ``RewriteRow``s: a policy's ``data/rewrites.jsonl``
trains every inspector (``squad.data.rows.inspector_rows``), and ``labelled_rows`` reads such a
file as one criterion's inspector rows for the benches.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from squad.core.structure import sanitise
from squad.data.rows import LabeledRow, Rewrite, RewriteRow, read_jsonl
from squad.progress import terminal_bar


class RewriteInput(BaseModel):
    model_config = {"extra": "ignore"}

    question: str
    answer: str
    criterion: str | None = Field(None, description="Whose aligner rewrites it (else the command's --criterion).")


def rewrite_rows(aligner, rows: list[tuple[str, str, str]], batch_size: int = 16) -> list[Rewrite]:
    """Rewrite each ``(criterion, question, answer)`` with that criterion's aligner, in mixed batches."""
    out: list[Rewrite] = []
    bar = terminal_bar(total=len(rows), desc="rewriting", unit="answer")
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        groups: dict[str, list[tuple[str, str]]] = {}
        for c, q, a in chunk:
            groups.setdefault(c, []).append((q, a))
        texts = {c: iter(t) for c, t in aligner.correct_many(groups).items()}
        for c, q, a in chunk:
            out.append(Rewrite(question=q, original=a, answer=sanitise(next(texts[c]))[0], criterion=c))
        bar.update(len(chunk))
    bar.close()
    return out


def labelled_rows(path: str | Path, criterion: str) -> list[LabeledRow]:
    """Inspector rows for ``criterion`` from a file of read rewrites: 0 where the reader said the
    rewrite fails ``criterion``, else 1 (empty rewrites are skipped)."""
    return [r.labeled(criterion) for r in read_jsonl(path, RewriteRow) if r.answer.strip()]
