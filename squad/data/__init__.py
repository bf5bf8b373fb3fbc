"""Data: schema-validated JSON Lines rows and the held-out split, importers of public datasets,
and synthetic triples from a teacher LLM."""
from squad.data.rows import CorrectionRow, LabeledRow, PairRow, read_jsonl

__all__ = ["CorrectionRow", "LabeledRow", "PairRow", "read_jsonl"]
