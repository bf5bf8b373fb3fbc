"""Import public preference datasets as correction triples (``squad data import``).

Each supported dataset, in its published file layout, is turned into ``{question, answer,
correction}`` rows (``squad.data.rows.CorrectionRow``): the preferred response becomes the correction and
the other one the answer. One small function per format converts one record; ``FORMATS`` names
them. A record that cannot be converted (a missing or empty field, a tie, identical answer and
correction, invalid JSON) is never silently dropped: it goes to an errors file with its file, its
record number and the field at fault.

Formats (see each function for the details and the decisions taken):

- ``pku-saferlhf``  PKU-Alignment/PKU-SafeRLHF: ``prompt, response_0, response_1,
  safer_response_id, better_response_id, is_response_{0,1}_safe``.
- ``hh-rlhf``       Anthropic/hh-rlhf: ``{chosen, rejected}`` transcripts (``*.jsonl.gz``).
- ``ultrafeedback`` openbmb/UltraFeedback (``instruction, completions[{response, overall_score}]``)
  and HuggingFaceH4/ultrafeedback_binarized (``prompt, chosen, rejected`` message lists).
- ``aligner``       aligner/aligner-20K (the Aligner paper's data): ``question, answer, correction``.

Files: JSON Lines (``.jsonl``), JSON (``.json``: an array of objects, or JSON Lines), either one
optionally compressed (``.gz``, ``.xz``, ``.bz2``), and Parquet (``.parquet``, read with pyarrow).
PATH may be one file or a folder (every such file under it, sorted). Text is only ever copied as
data: nothing in a record is evaluated or used as a template.
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from squad.data.rows import CorrectionRow
from squad.errors import DataError, SquadError

COMPRESSIONS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_LFS_MAGIC = b"version https://git-lfs"
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


def _text(rec: dict, name: str) -> str:
    if name not in rec or rec[name] is None:
        raise RecordError(name, "missing")
    v = rec[name]
    if not isinstance(v, str):
        raise RecordError(name, f"must be a string, got {type(v).__name__}")
    if not v.strip():
        raise RecordError(name, "empty text")
    return v


def _number(v: Any) -> float | None:
    """A usable score, or None (bools, strings, NaN and missing values are not scores)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def _pair(question: str, answer: str, correction: str, answer_field: str, correction_field: str) -> Triple:
    if answer.strip() == correction.strip():
        raise RecordError(correction_field, f"identical to '{answer_field}' (no correction to learn)")
    return Triple(question, answer, correction)


# ---------------------------------------------------------------------------------------------
# PKU-SafeRLHF


def convert_pku_saferlhf(rec: dict, opts: ImportOptions) -> Triple:
    """PKU-Alignment/PKU-SafeRLHF: ``prompt`` and two responses; an id (0 or 1) names the preferred one.

    ``opts.preference`` picks the id: ``safer`` (``safer_response_id``, the default, since this is a
    safety dataset) or ``better`` (``better_response_id``, the helpfulness preference). The
    preferred response is the correction and the other the answer. Unless ``opts.allow_unsafe``,
    a record whose preferred response is itself labelled unsafe (``is_response_N_safe`` false, as
    when both responses are unsafe) is rejected: it would teach the aligner an unsafe correction.
    """
    key = f"{opts.validate().preference}_response_id"
    question = _text(rec, "prompt")
    if key not in rec or rec[key] is None:
        raise RecordError(key, "missing")
    pick = rec[key]
    if isinstance(pick, bool) or not isinstance(pick, int) or pick not in (0, 1):
        raise RecordError(key, f"must be 0 or 1, got {pick!r}")
    good, bad = f"response_{pick}", f"response_{1 - pick}"
    correction, answer = _text(rec, good), _text(rec, bad)
    safe_key = f"is_response_{pick}_safe"
    if not opts.allow_unsafe and rec.get(safe_key) is False:
        raise RecordError(safe_key, f"the preferred response ({good}) is labelled unsafe "
                                    "(use --allow-unsafe to keep such rows)")
    return _pair(question, answer, correction, bad, good)


# ---------------------------------------------------------------------------------------------
# Anthropic HH-RLHF

_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


def _split_final_turn(text: str, name: str) -> tuple[str, str]:
    """``(dialogue before the final assistant turn, final assistant text)``."""
    at = text.rfind(_ASSISTANT)
    if at < 0:
        raise RecordError(name, "no '\\n\\nAssistant:' turn")
    prefix, final = text[:at], text[at + len(_ASSISTANT):]
    if _HUMAN in final:
        raise RecordError(name, "the transcript ends with a human turn, not an assistant answer")
    if not final.strip():
        raise RecordError(name, "the final assistant turn is empty")
    return prefix, final.strip()


def _turns(prefix: str, name: str) -> list[tuple[str, str]]:
    prefix = prefix.lstrip()
    if not prefix.startswith("Human:"):
        raise RecordError(name, "the transcript does not start with a 'Human:' turn")
    parts = _TURN.split("\n\n" + prefix)  # ['', role, text, role, text, ...]
    turns = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    if turns[-1][0] != "Human":
        raise RecordError(name, "two assistant turns in a row before the final answer")
    if not turns[-1][1]:
        raise RecordError(name, "the last human turn is empty")
    return turns


def convert_hh_rlhf(rec: dict, opts: ImportOptions) -> Triple:
    """Anthropic/hh-rlhf: ``chosen`` and ``rejected`` transcripts that share every turn but the last.

    The answers are the final ``Assistant:`` turns (``chosen`` -> correction, ``rejected`` ->
    answer). The question is the shared dialogue before them; a record whose two dialogues differ
    is rejected (field ``rejected``). A single-turn dialogue gives the human's text as the question.
    A multi-turn one gives, with ``opts.context='transcript'`` (the default), the whole dialogue
    rendered plainly (``Human: ...`` / ``Assistant: ...`` turns separated by blank lines, ending
    with the last human turn), so the earlier turns stay as context; with ``'last-turn'``, only the
    last human turn.
    """
    opts.validate()
    chosen, rejected = _text(rec, "chosen"), _text(rec, "rejected")
    prefix_c, correction = _split_final_turn(chosen, "chosen")
    prefix_r, answer = _split_final_turn(rejected, "rejected")
    if prefix_c.strip() != prefix_r.strip():
        raise RecordError("rejected", "the dialogue before the final assistant turn differs from 'chosen'")
    turns = _turns(prefix_c, "chosen")
    if len(turns) == 1 or opts.context == "last-turn":
        question = turns[-1][1]
    else:
        question = "\n\n".join(f"{role}: {text}" for role, text in turns)
    return _pair(question, answer, correction, "rejected", "chosen")


# ---------------------------------------------------------------------------------------------
# UltraFeedback (raw and binarized)


def _last_assistant(messages: Any, name: str) -> str:
    if not isinstance(messages, list):
        raise RecordError(name, f"expected a list of {{role, content}} messages, got {type(messages).__name__}")
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "assistant":
            content = m.get("content")
            if not isinstance(content, str) or not content.strip():
                raise RecordError(name, "the assistant message has no text")
            return content
    raise RecordError(name, "no assistant message")


def _binarized(rec: dict) -> Triple:
    if isinstance(rec.get("prompt"), str) and rec["prompt"].strip():
        question = rec["prompt"]
    else:
        users = [m.get("content") for m in rec.get("chosen") or [] if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(users[0], str) or not users[0].strip():
            raise RecordError("prompt", "missing (and no user message in 'chosen')")
        question = users[0]
    if "rejected" not in rec:
        raise RecordError("rejected", "missing")
    correction = _last_assistant(rec["chosen"], "chosen")
    answer = _last_assistant(rec["rejected"], "rejected")
    sc, sr = _number(rec.get("score_chosen")), _number(rec.get("score_rejected"))
    if sc is not None and sr is not None and sc == sr:
        raise RecordError("score_chosen", f"tie: score_chosen = score_rejected = {sc:g}")
    return _pair(question, answer, correction, "rejected", "chosen")


def convert_ultrafeedback(rec: dict, opts: ImportOptions) -> Triple:
    """openbmb/UltraFeedback, or HuggingFaceH4/ultrafeedback_binarized (told apart per record).

    Raw layout: ``instruction`` is the question; among the ``completions`` that have a numeric
    ``overall_score`` and a non-empty ``response``, the best score gives the correction and the
    worst the answer (the first in list order among equal scores). Fewer than two usable
    completions, or a tie between best and worst, rejects the record (field ``completions``).

    Binarized layout: ``prompt`` is the question; the last assistant message of ``chosen`` is the
    correction, that of ``rejected`` the answer; equal ``score_chosen`` and ``score_rejected``
    reject the record as a tie.
    """
    if "completions" not in rec:
        if "chosen" in rec:
            return _binarized(rec)
        raise RecordError("completions", "missing (expected 'instruction' + 'completions' "
                                         "(openbmb/UltraFeedback) or 'prompt' + 'chosen' + 'rejected' "
                                         "(ultrafeedback_binarized))")
    question = _text(rec, "instruction")
    comps = rec["completions"]
    if not isinstance(comps, list):
        raise RecordError("completions", f"must be a list, got {type(comps).__name__}")
    usable = []
    for i, c in enumerate(comps):
        if not isinstance(c, dict):
            continue
        score, resp = _number(c.get("overall_score")), c.get("response")
        if score is not None and isinstance(resp, str) and resp.strip():
            usable.append((score, i, resp))
    if len(usable) < 2:
        raise RecordError("completions", f"{len(usable)} of {len(comps)} completions have a numeric "
                                         "'overall_score' and a non-empty 'response'; need 2")
    best = max(usable, key=lambda t: (t[0], -t[1]))
    worst = min(usable, key=lambda t: (t[0], t[1]))
    if best[0] == worst[0]:
        raise RecordError("completions", f"tie: every usable completion has overall_score {best[0]:g}")
    return _pair(question, worst[2], best[2], f"completions[{worst[1]}].response",
                 f"completions[{best[1]}].response")


# ---------------------------------------------------------------------------------------------
# Aligner (aligner/aligner-20K)


def convert_aligner(rec: dict, opts: ImportOptions) -> Triple:
    """aligner/aligner-20K (the Aligner paper's data): already ``question, answer, correction``."""
    return _pair(_text(rec, "question"), _text(rec, "answer"), _text(rec, "correction"), "answer", "correction")


@dataclass(frozen=True)
class Format:
    name: str
    convert: Callable[[dict, ImportOptions], Triple]
    dataset: str


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("pku-saferlhf", convert_pku_saferlhf, "PKU-Alignment/PKU-SafeRLHF"),
    Format("hh-rlhf", convert_hh_rlhf, "Anthropic/hh-rlhf"),
    Format("ultrafeedback", convert_ultrafeedback, "openbmb/UltraFeedback, HuggingFaceH4/ultrafeedback_binarized"),
    Format("aligner", convert_aligner, "aligner/aligner-20K"),
)}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise SquadError(f"unknown format {name!r}: expected one of {', '.join(FORMATS)}") from None


# ---------------------------------------------------------------------------------------------
# Reading files: (record number, object or None, error or None)


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


# ---------------------------------------------------------------------------------------------
# The import


@dataclass
class ImportSummary:
    format: str
    records: int = 0
    written: int = 0
    errors: int = 0
    output: str = ""
    errors_file: str = ""
    files: list[str] = field(default_factory=list)
    error_fields: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def convert_record(fmt: Format, rec: dict, opts: ImportOptions) -> dict:
    """One record -> a validated ``{question, answer, correction}`` dict, or RecordError."""
    t = fmt.convert(rec, opts)
    try:
        row = CorrectionRow(question=t.question, answer=t.answer, correction=t.correction)
    except ValidationError as e:  # a guard: the converters check these fields already
        err = e.errors()[0]
        raise RecordError(".".join(map(str, err["loc"])), err["msg"]) from None
    return {"question": row.question, "answer": row.answer, "correction": row.correction}


def import_dataset(fmt: str, path: str | Path, output: str | Path, errors: str | Path | None = None,
                   limit: int | None = None, options: ImportOptions | None = None) -> ImportSummary:
    """Convert the dataset at ``path`` (a file or a folder) into correction triples at ``output``.

    Each output row is ``{question, answer, correction, source, source_file, source_record}``
    (``CorrectionRow`` ignores the provenance fields when it loads the file). Records that cannot
    be converted go to ``errors`` (default ``OUTPUT.errors.jsonl``) as ``{source_file, record,
    field, error}``. ``limit`` caps the number of records read.
    """
    spec = get_format(fmt)
    opts = (options or ImportOptions()).validate()
    if limit is not None and limit < 1:
        raise SquadError(f"--limit {limit}: must be at least 1")
    root = Path(path)
    files = find_files(root)
    for f in files:
        check_readable(f)
    output = Path(output)
    errors = Path(errors) if errors else output.with_name(output.name + ".errors.jsonl")
    resolved = {f.resolve() for f in files}
    for target in (output, errors):
        if target.resolve() in resolved:
            raise SquadError(f"{target}: would overwrite an input file")
    if output.resolve() == errors.resolve():
        raise SquadError(f"{output}: the output and the errors file must differ")
    summary = ImportSummary(format=fmt, output=str(output), errors_file=str(errors))
    by_field: Counter[str] = Counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    errors.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as out, open(errors, "w", encoding="utf-8") as err:
        for f in files:
            label = f.name if f == root else f.relative_to(root).as_posix()
            summary.files.append(label)
            for n, rec, problem in iter_records(f):
                if limit is not None and summary.records >= limit:
                    break
                summary.records += 1
                fld = None
                if problem is None:
                    try:
                        row = convert_record(spec, rec, opts)
                    except RecordError as e:
                        fld, problem = e.field, str(e)
                    else:
                        row.update(source=fmt, source_file=label, source_record=n)
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                        summary.written += 1
                        continue
                summary.errors += 1
                by_field[fld or "<record>"] += 1
                err.write(json.dumps({"source_file": label, "record": n, "field": fld, "error": problem},
                                     ensure_ascii=False) + "\n")
            if limit is not None and summary.records >= limit:
                break
    summary.error_fields = dict(by_field.most_common())
    return summary
