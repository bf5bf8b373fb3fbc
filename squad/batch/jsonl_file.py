"""File mode of ``squad correct``: JSON Lines in, corrected rows out, bad rows to an errors file."""
from __future__ import annotations

import json
from pathlib import Path

from squad.data.rows import PairRow, iter_jsonl


def correct_file(squad, src: Path, dst: Path, criteria=None, thresholds=None, batch_size: int = 16,
                 errors: Path | None = None) -> dict:
    from squad.progress import terminal_bar

    errors = errors or dst.with_name(dst.name + ".errors.jsonl")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as f:
        total = sum(1 for line in f if line.strip())
    n_in = n_out = n_err = 0
    batch: list[tuple[int, PairRow, dict]] = []
    with open(dst, "w", encoding="utf-8") as out, open(errors, "w", encoding="utf-8") as err, \
            terminal_bar(total=total, desc="correcting", unit="row") as bar:
        def flush():
            nonlocal n_out
            if not batch:
                return
            results = squad.correct_batch([(r.question, r.answer) for _, r, _ in batch], criteria, thresholds)
            for (lineno, _, extra), c in zip(batch, results):
                out.write(json.dumps({**extra, **c.model_dump(), "line": lineno}, ensure_ascii=False) + "\n")
            n_out += len(batch)
            bar.update(len(batch))
            batch.clear()

        for lineno, row, error, raw in iter_jsonl(src, PairRow):
            n_in += 1
            if error:
                n_err += 1
                err.write(json.dumps({"line": lineno, "error": error, "raw": raw.rstrip("\n")}, ensure_ascii=False) + "\n")
                bar.update(1)
                continue
            extra = {k: v for k, v in json.loads(raw).items() if k not in ("question", "answer")}
            batch.append((lineno, row, extra))
            if len(batch) >= batch_size:
                flush()
        flush()
    return {"rows_in": n_in, "rows_out": n_out, "errors": n_err, "errors_file": str(errors)}
