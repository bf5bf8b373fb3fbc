"""``squad batch``: batch correction over Ray Data (see squad.batch.pipeline). Wired in by squad/cli/main.py."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to the ``squad`` subparsers."""
    b = sub.add_parser(
        "batch", help="correct a JSON Lines or Parquet dataset as a Ray Data pipeline",
        description="Correct every {question, answer} row of --input (a JSON Lines or Parquet file or folder, "
                    "or any URL Ray Data can read) with the squad algorithm run as one streaming Ray Data "
                    "pipeline. layout=staged: an inspector stage, then per round a stage that runs the aligners "
                    "(rows grouped by criterion) and re-scores, each stage a map_batches actor pool; "
                    "layout=fused: one pool whose actors take rows through every step; layout=auto (default): "
                    "staged when the cluster can run every stage at once, fused on a few cores. "
                    "Writes every row with its trace to OUTPUT/part-*.{jsonl,parquet}, bad rows with the reason "
                    "to OUTPUT/errors/errors.jsonl, and prints rows in = rows out + errors. Runs on a local Ray, "
                    "or the cluster in RAY_ADDRESS; resources per stage come from configs/batch.yaml. "
                    "Exit code 3 when any row failed validation.")
    b.add_argument("--input", "-i", required=True, help="input file, folder or URL")
    b.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder")
    b.add_argument("--bundle", default="default", help="'default' or a bundle directory (on a cluster: a path every node can read)")
    b.add_argument("--format", default="jsonl", choices=["jsonl", "parquet"], help="output format (default jsonl)")
    b.add_argument("--input-format", default="auto", choices=["auto", "jsonl", "parquet"],
                   help="input format (default: from the file names)")
    b.add_argument("--config", help="batch config (default configs/batch.yaml)")
    b.add_argument("--threshold", action="append", metavar="CRITERION=VALUE", help="override a threshold (repeatable)")
    b.add_argument("--criteria", nargs="+", help="only these criteria")
    b.add_argument("--max-steps", type=int, help="at most this many aligners per row (default: the bundle's)")
    b.add_argument("--fail-closed", action="store_true", help="a failed aligner returns the policy's refusal text")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. aligner.concurrency=4")
    b.set_defaults(fn=cmd_batch)
    return b


def cmd_batch(args) -> int:
    from squad.batch.pipeline import load_batch_config, run_batch
    from squad.cli.args import parse_thresholds

    th = parse_thresholds(args.threshold)
    cfg = load_batch_config(args.config, args.overrides)
    s = run_batch(args.input, args.output, bundle=args.bundle, fmt=args.format, cfg=cfg, criteria=args.criteria,
                  thresholds=th, max_steps=args.max_steps, fail_closed=args.fail_closed,
                  input_format=args.input_format, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(s))
    else:
        print(f"rows in {s['rows_in']} = rows out {s['rows_out']} + rows in errors {s['errors']}: "
              f"{'ok' if s['balanced'] else 'MISMATCH'}\n"
              f"rows -> {s['output']}/part-*.{args.format} ({s['parts']} files), errors -> {s['errors_file']}\n"
              f"{s['rows_out']} rows in {s['seconds']:.1f} s ({s['rows_per_s'] or 0:.2f} rows/s), "
              f"layout {s['layout']}: {s['stages']} pipeline stage{'s' if s['stages'] > 1 else ''}", file=sys.stdout)
    return 0 if s["errors"] == 0 else 3
