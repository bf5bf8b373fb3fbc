"""aligner/aligner-20K records (the Aligner paper's data) as correction triples."""
from __future__ import annotations

from squad.data.importers.records import ImportOptions, Triple, make_triple, require_text


def convert_aligner(rec: dict, opts: ImportOptions) -> Triple:
    """aligner/aligner-20K (the Aligner paper's data): already ``question, answer, correction``."""
    return make_triple(require_text(rec, "question"), require_text(rec, "answer"), require_text(rec, "correction"),
                       "answer", "correction")
