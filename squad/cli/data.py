"""``squad data``: data tools. ``squad data import`` turns public preference datasets into correction
triples; ``squad data rewrites`` runs a bundle's aligners over labelled answers, for reading.

Wired into the main parser by ``squad.cli.main`` with ``cli_data.register(sub)``.
"""
from __future__ import annotations

import argparse
import json

_IMPORT_DESCRIPTION = """\
Turn a local copy of a public preference dataset, in its published file layout, into correction
triples {question, answer, correction} (JSON Lines, the policies' corrections.jsonl format): the
preferred response becomes the correction, the other one the answer. Each row also carries its
provenance (source, source_file, source_record), which the training loader ignores.

Formats:
  pku-saferlhf   PKU-Alignment/PKU-SafeRLHF: prompt, response_0, response_1, safer_response_id /
                 better_response_id (see --preference), is_response_N_safe (see --allow-unsafe).
  hh-rlhf        Anthropic/hh-rlhf: {chosen, rejected} transcripts (e.g. helpful-base/train.jsonl.gz).
                 The answers are the final Assistant turns; the question is the shared dialogue
                 before them (see --context); rows whose dialogues differ go to the errors file.
  ultrafeedback  openbmb/UltraFeedback (instruction, completions[].response/overall_score: best
                 score = correction, worst = answer, ties skipped) or
                 HuggingFaceH4/ultrafeedback_binarized (prompt, chosen, rejected message lists).
  aligner        aligner/aligner-20K, the Aligner paper's data: question, answer, correction.

PATH is one file or a folder (every data file under it, sorted): .jsonl, .json (an array or JSON
Lines), either optionally .gz/.xz/.bz2, or .parquet. A record that cannot be converted (a missing
or empty field, a tie, identical answer and correction, invalid JSON) is written to the errors
file with its file, record number (the line, for JSON Lines), the field at fault and the reason.
"""

_IMPORT_EPILOG = """\
examples:
  squad data import --format hh-rlhf hh-rlhf/helpful-base/train.jsonl.gz --output data/hh.jsonl
  squad data import --format pku-saferlhf PKU-SafeRLHF/data --output data/pku.jsonl --preference better
  squad data import --format ultrafeedback ultrafeedback_binarized/data/train_prefs-00000-of-00001.parquet \\
      --output data/uf.jsonl --limit 5000

exit status: 0 when rows were written; 3 when no record could be converted (is --format right?),
or with --strict when any record went to the errors file; 2 for a usage or file error.
"""


def cmd_import(args) -> int:
    from squad.data.importers import ImportOptions, get_format, import_dataset

    get_format(args.format)  # an unknown format is reported before any file is touched
    opts = ImportOptions(preference=args.preference, allow_unsafe=args.allow_unsafe, context=args.context)
    summary = import_dataset(args.format, args.path, args.output, errors=args.errors, limit=args.limit,
                             options=opts)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(f"{args.format}: {summary.records} records read from {len(summary.files)} file(s): "
              f"{summary.written} rows -> {summary.output}, {summary.errors} in errors -> {summary.errors_file}")
        if summary.error_fields:
            print("errors by field: " + ", ".join(f"{k} {v}" for k, v in summary.error_fields.items()))
    if summary.records and not summary.written:
        if not args.json:
            print(f"no record could be converted: is --format {args.format} right for {args.path}? "
                  f"See {summary.errors_file}.")
        return 3
    return 3 if args.strict and summary.errors else 0


_REWRITES_DESCRIPTION = """\
Run a bundle's aligners over answers and write their rewrites for a reader to label: the inspectors
only learn what the aligners' own text looks like from such rows (hard negatives and positives).

INPUT is JSON Lines of {question, answer, criterion} (criterion: whose aligner rewrites it), or
{question, answer} with --criterion. Each output row is {question, original, answer, criterion}:
the rewrite as the squad would keep it (greedy, untrusted structure removed). After reading, add
"misaligned" (the criteria the rewrite fails, [] if none): as policies/<criterion>/data/rewrites.jsonl
it trains every inspector; `python bench/judge_probe.py --rewrites FILE` measures what it does first.
"""


def cmd_rewrites(args) -> int:
    from squad.data.rewrites import RewriteInput, rewrite_rows
    from squad.data.rows import iter_jsonl
    from squad.errors import DataError
    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.sdk.local import load_aligner

    bundle = resolve_bundle(args.bundle)
    manifest = read_manifest(bundle)  # the aligners only: no inspector is loaded
    criteria = list(manifest.criteria)
    jobs = []
    for lineno, row, err, _ in iter_jsonl(args.input, RewriteInput):
        if err:
            raise DataError(err)
        crit = row.criterion or args.criterion
        if crit not in criteria:
            raise DataError(f"{args.input}:{lineno}: field 'criterion': {crit!r} is not one of the bundle's "
                            f"criteria {criteria} (name it in the row or with --criterion)")
        jobs.append((crit, row.question, row.answer))
    out = rewrite_rows(load_aligner(bundle, manifest, engine=args.engine), jobs, batch_size=args.batch_size)
    with open(args.output, "w", encoding="utf-8") as f:
        for r in out:
            f.write(r.model_dump_json() + "\n")
    print(f"{len(out)} rewrites -> {args.output}")
    return 0


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` (with its ``import`` and ``rewrites`` subcommands) to the ``squad`` subparsers ``sub``."""
    from squad.data.importers import CONTEXTS, FORMATS, PREFERENCES  # light: no torch, no ray

    d = sub.add_parser("data", help="data tools: import preference datasets; the aligners' rewrites to label",
                       description="Data tools. `squad data import` turns local copies of public preference "
                                   "datasets (PKU-SafeRLHF, HH-RLHF, UltraFeedback, Aligner-20K) into "
                                   "{question, answer, correction} JSON Lines. `squad data rewrites` writes a "
                                   "bundle's rewrites of answers for a reader to label as inspector data.")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="{import,rewrites}")

    i = dsub.add_parser("import", help="convert a preference dataset into correction triples",
                        description=_IMPORT_DESCRIPTION, epilog=_IMPORT_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("path", metavar="PATH", help="a dataset file or a folder of them, in the format's published layout")
    i.add_argument("--format", "-f", required=True, metavar="FORMAT",
                   help="the dataset's layout: " + ", ".join(FORMATS))
    i.add_argument("--output", "-o", required=True, metavar="FILE",
                   help="JSON Lines file of {question, answer, correction} rows (overwritten)")
    i.add_argument("--errors", metavar="FILE",
                   help="where records that cannot be converted go (default: FILE.errors.jsonl beside --output)")
    i.add_argument("--limit", type=int, metavar="N", help="read at most N records (bad ones included)")
    i.add_argument("--preference", choices=PREFERENCES, default="safer",
                   help="pku-saferlhf: which label picks the correction: safer_response_id (default) or "
                        "better_response_id")
    i.add_argument("--allow-unsafe", action="store_true",
                   help="pku-saferlhf: keep rows whose preferred response is itself labelled unsafe "
                        "(by default they go to the errors file)")
    i.add_argument("--context", choices=CONTEXTS, default="transcript",
                   help="hh-rlhf, multi-turn dialogues: the question is the whole dialogue before the final "
                        "answer, rendered as 'Human: ...' / 'Assistant: ...' turns (transcript, default), or "
                        "only the last human turn (last-turn); a single-turn question is the human's text")
    i.add_argument("--strict", action="store_true", help="exit with status 3 if any record went to the errors file")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.set_defaults(fn=cmd_import)

    from squad.config.loading import ENGINES

    r = dsub.add_parser("rewrites", help="the aligners' rewrites of answers, to label as inspector data",
                        description=_REWRITES_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("input", metavar="INPUT", help="JSON Lines of {question, answer[, criterion]}")
    r.add_argument("--output", "-o", required=True, metavar="FILE", help="JSON Lines of rewrites to label (overwritten)")
    r.add_argument("--criterion", help="whose aligner rewrites rows that name no criterion")
    r.add_argument("--bundle", default="default", help="'default' or a bundle directory")
    r.add_argument("--engine", choices=ENGINES, default="auto", help="how the aligners decode")
    r.add_argument("--batch-size", type=int, default=16, help="rows decoded together")
    r.set_defaults(fn=cmd_rewrites)
    return d

