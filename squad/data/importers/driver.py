"""The import driver: a dataset at PATH -> correction triples and an errors file."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from squad.data.importers.files import check_readable, find_files, iter_records
from squad.data.importers.formats import Format, get_format
from squad.data.importers.records import ImportOptions, RecordError
from squad.data.rows import CorrectionRow
from squad.errors import SquadError


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
