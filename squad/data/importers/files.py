"""Reading dataset files: finding them, and ``(record number, object or None, error or None)`` per record."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path
from typing import Iterator

from squad.errors import DataError, SquadError

COMPRESSIONS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_LFS_MAGIC = b"version https://git-lfs"


def _is_data_file(p: Path) -> bool:
    suffixes = p.suffixes[-2:]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
        return bool(suffixes) and suffixes[-1] in (".jsonl", ".json")
    return bool(suffixes) and suffixes[-1] in DATA_SUFFIXES


def find_files(path: str | Path) -> list[Path]:
    """The data files at PATH (one file, or every data file under a folder, sorted)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_data_file(p))
        if not files:
            raise DataError(f"{path}: no data files in this folder (looked for .jsonl, .json, .parquet, "
                            "optionally .gz/.xz/.bz2 for JSON)")
        return files
    if not _is_data_file(path):
        raise DataError(f"{path}: unsupported file type (expected .jsonl, .json or .parquet; "
                        "JSON may end in .gz, .xz or .bz2)")
    return [path]


def _open(path: Path):
    opener = COMPRESSIONS.get(path.suffix)
    return opener(path, "rb") if opener else open(path, "rb")


def check_readable(path: Path) -> None:
    """Fail before writing anything on a file that is clearly not the data (a Git LFS pointer, a bad Parquet)."""
    with open(path, "rb") as f:
        head = f.read(len(_LFS_MAGIC))
    if head == _LFS_MAGIC:
        raise DataError(f"{path}: a Git LFS pointer, not the data itself (run `git lfs pull` in that clone)")
    if path.suffix == ".parquet":
        _parquet_file(path)
    elif path.suffix in COMPRESSIONS:
        try:
            with _open(path) as f:
                f.read(1)
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise DataError(f"{path}: not a valid {path.suffix[1:]} file ({e})") from None


def _json_suffix(path: Path) -> str:
    return path.suffixes[-2] if path.suffix in COMPRESSIONS else path.suffix


def _iter_lines(f) -> Iterator[tuple[int, dict | None, str | None]]:
    for n, raw in enumerate(f, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, None, f"not valid UTF-8 (byte {e.start})"
            continue
        if n == 1:
            line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        try:
            obj = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            yield n, None, f"invalid JSON ({e.msg} at column {e.colno})"
            continue
        yield (n, obj, None) if isinstance(obj, dict) else (n, None, f"expected a JSON object, got {type(obj).__name__}")


def _first_byte(path: Path) -> bytes:
    """The first byte that is not whitespace or a UTF-8 BOM (b'' for an empty file)."""
    with _open(path) as f:
        head = b""
        while True:
            chunk = f.read(65536)
            if not chunk:
                return b""
            head = (head + chunk).lstrip()
            if head.startswith(b"\xef\xbb\xbf"):
                head = head[3:].lstrip()
            if head:
                return head[:1]


def _iter_json(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """A ``.json`` file: one JSON array of objects, or (as many hubs publish them) JSON Lines."""
    if _first_byte(path) != b"[":
        with _open(path) as f:
            yield from _iter_lines(f)
        return
    with _open(path) as f:
        raw = f.read()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        yield 1, None, f"not valid UTF-8 (byte {e.start}); a JSON array file is read whole"
        return
    except json.JSONDecodeError as e:
        yield 1, None, f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno}); a JSON array file is read whole"
        return
    for n, obj in enumerate(data, 1):
        yield (n, obj, None) if isinstance(obj, dict) else (n, None, f"expected a JSON object, got {type(obj).__name__}")


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with ray[data]
        raise SquadError("reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    n = 0
    try:
        for batch in _parquet_file(path).iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                n += 1
                yield n, obj, None
    except (OSError, ValueError) as e:  # a corrupt page (ArrowInvalid is a ValueError)
        yield n + 1, None, f"cannot read the file past this point ({e})"


def iter_records(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(record number, record, error)`` for each record of one file (1-based; JSONL: the line)."""
    if path.suffix == ".parquet":
        yield from _iter_parquet(path)
        return
    n = 0
    try:
        if _json_suffix(path) == ".json":
            for n, obj, err in _iter_json(path):
                yield n, obj, err
        else:
            with _open(path) as f:
                for n, obj, err in _iter_lines(f):
                    yield n, obj, err
    except (OSError, EOFError, lzma.LZMAError) as e:  # a truncated or corrupt compressed file
        yield n + 1, None, f"cannot read the file past this point ({e})"
