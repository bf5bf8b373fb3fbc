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

from squad.data.importers.aligner_20k import convert_aligner
from squad.data.importers.driver import ImportSummary, convert_record, import_dataset
from squad.data.importers.files import COMPRESSIONS, DATA_SUFFIXES, check_readable, find_files, iter_records
from squad.data.importers.formats import FORMATS, Format, get_format
from squad.data.importers.hh_rlhf import convert_hh_rlhf
from squad.data.importers.pku_saferlhf import convert_pku_saferlhf
from squad.data.importers.records import CONTEXTS, PREFERENCES, ImportOptions, RecordError, Triple
from squad.data.importers.ultrafeedback import convert_ultrafeedback

__all__ = ["COMPRESSIONS", "CONTEXTS", "DATA_SUFFIXES", "FORMATS", "PREFERENCES", "Format", "ImportOptions",
           "ImportSummary", "RecordError", "Triple", "check_readable", "convert_aligner", "convert_hh_rlhf",
           "convert_pku_saferlhf", "convert_record", "convert_ultrafeedback", "find_files", "get_format",
           "import_dataset", "iter_records"]
