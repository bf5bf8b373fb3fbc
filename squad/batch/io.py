"""``squad batch`` input and output: validated records from JSON Lines or Parquet, part files, errors."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from squad.core.correction import Correction
from squad.data.rows import PairRow, check_line, iter_jsonl, row_error
from squad.errors import DataError, SquadError

FORMATS = ("jsonl", "parquet")


# Input: (ref, row | None, error | None, raw) records, where ref is the line (JSONL) or row (Parquet) number


@dataclass
class Source:
    path: str
    format: str  # jsonl | parquet
    ref: str  # "line" | "row"


def _is_url(path: str) -> bool:
    return "://" in path


def detect_source(path: str, input_format: str = "auto") -> Source:
    if input_format not in ("auto", *FORMATS):
        raise SquadError(f"unknown input format {input_format!r}; use auto, jsonl or parquet")
    local = not _is_url(path)
    if local and not Path(path).exists():
        raise DataError(f"{path}: input not found")
    fmt = input_format
    if fmt == "auto":
        names = [path] if not (local and Path(path).is_dir()) else [p.name for p in Path(path).iterdir()]
        if any(n.endswith((".parquet", ".pq")) for n in names):
            fmt = "parquet"
        elif any(n.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")) for n in names):
            fmt = "jsonl"
        else:
            raise SquadError(f"{path}: cannot tell the input format from its name; pass --input-format jsonl|parquet")
    return Source(path, fmt, "line" if fmt == "jsonl" else "row")


def read_records(src: Source) -> Iterator[tuple[int, PairRow | None, str | None, Any]]:
    """Every input row with its validation result; never stops at a bad row."""
    import ray

    if src.format == "jsonl" and Path(src.path).is_file():
        yield from iter_jsonl(src.path, PairRow)
    elif src.format == "jsonl":  # a folder or URL: lines through Ray Data, so a bad line is one error, not a failed read
        lineno: dict[str, int] = {}
        for r in ray.data.read_text(src.path, drop_empty_lines=False, include_paths=True).iter_rows():
            line, path = r["text"], r["path"]
            n = lineno[path] = lineno.get(path, 0) + 1  # numbered per file; errors name the file
            if line.strip():
                yield check_line(path, n, line, PairRow)
    else:
        for n, obj in enumerate(ray.data.read_parquet(src.path).iter_rows(), 1):
            try:
                yield n, PairRow.model_validate(dict(obj)), None, dict(obj)
            except ValidationError as e:
                yield n, None, row_error(src.path, n, e), dict(obj)


def extra_fields(raw: Any) -> dict:
    obj = json.loads(raw) if isinstance(raw, str) else raw
    return {k: v for k, v in obj.items() if k not in ("question", "answer")}


def _jsonable(o: Any) -> Any:
    return o.tolist() if hasattr(o, "tolist") else str(o)


# Output


class Writer:
    """``OUT/part-NNNNN.<fmt>`` per chunk (rows in input order) and ``OUT/errors/errors.jsonl``."""

    def __init__(self, out: Path, fmt: str, overwrite: bool):
        if fmt not in FORMATS:
            raise SquadError(f"unknown output format {fmt!r}; use jsonl or parquet")
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise SquadError(f"{out}: output folder is not empty; pass --overwrite to replace it")
            shutil.rmtree(out)
        (out / "errors").mkdir(parents=True, exist_ok=True)
        self.out, self.fmt, self.parts = out, fmt, 0
        self.errors_path = out / "errors" / "errors.jsonl"
        self._err = open(self.errors_path, "w", encoding="utf-8")

    def error(self, ref: str, n: int, error: str, raw: Any) -> None:
        raw = raw.rstrip("\n") if isinstance(raw, str) else raw
        self._err.write(json.dumps({ref: n, "error": error, "raw": raw}, ensure_ascii=False, default=_jsonable) + "\n")
        self._err.flush()

    def rows(self, ref: str, chunk: list[tuple[int, PairRow, dict]], results: list[Correction]) -> None:
        rows = [{**extra, **c.model_dump(), ref: n} for (n, _, extra), c in zip(chunk, results)]
        path = self.out / f"part-{self.parts:05d}.{self.fmt}"
        self.parts += 1
        if self.fmt == "jsonl":
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in rows)
        else:
            import pyarrow.parquet as pq

            pq.write_table(_table(rows, list(results[0].scores)), path)

    def close(self) -> None:
        self._err.close()


def _table(rows: list[dict], criteria: list[str]):
    """Arrow table with a fixed type for the trace, so every part file has the same schema."""
    import pyarrow as pa

    scores = pa.struct([(c, pa.float64()) for c in criteria])
    step = pa.struct([("criterion", pa.string()), ("score_before", pa.float64()), ("threshold", pa.float64()),
                      ("applied", pa.bool_()), ("answer", pa.string()), ("latency_ms", pa.float64()),
                      ("wall_ms", pa.float64()), ("error", pa.string()), ("rewrite", pa.string()),
                      ("scores_after", scores), ("rejected", pa.string())])
    fixed = {"question": pa.string(), "original": pa.string(), "answer": pa.string(), "changed": pa.bool_(),
             "initial_scores": scores, "scores": scores, "steps": pa.list_(step), "latency_ms": pa.float64(),
             "wall_ms": pa.float64(), "sanitised": pa.list_(pa.string())}
    keys = dict.fromkeys(k for r in rows for k in r)  # input rows may differ in their extra fields
    cols = {k: pa.array([r.get(k) for r in rows], type=fixed.get(k)) for k in keys}
    return pa.table(cols)
