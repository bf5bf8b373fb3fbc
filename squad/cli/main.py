"""The ``squad`` command line: correct, train, eval. Every command has --help."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from squad.cli.args import parse_thresholds
from squad.config.loading import ENGINES
from squad.errors import SquadError


def _render(c) -> str:
    lines = [f"question : {c.question}", f"original : {c.original}", f"answer   : {c.answer}",
             "scores   : " + ", ".join(f"{k} {c.initial_scores[k]:.2f}->{c.scores[k]:.2f}" for k in c.scores)]
    for s in c.steps:
        lines.append(f"  step   : {s.criterion} score {s.score_before:.2f} < {s.threshold:.2f}: {s.outcome}, "
                     f"{s.latency_ms:.0f} ms")
    lines.append(f"latency  : {c.latency_ms:.0f} ms")
    return "\n".join(lines)


def cmd_correct(args) -> int:
    from squad.sdk.local import Squad

    if args.input and (args.question or args.answer):
        raise SquadError("use either --question/--answer or --input FILE, not both")
    if not args.input and not (args.question and args.answer):
        raise SquadError("give --question and --answer, or --input FILE --output FILE")
    th = parse_thresholds(args.threshold)  # argument errors before the (slower) bundle load
    if args.input and not args.output:
        raise SquadError("--input needs --output FILE")
    squad = Squad.load(args.bundle, engine=args.engine)
    if not args.input:
        c = squad.correct(args.question, args.answer, criteria=args.criteria, thresholds=th)
        print(c.model_dump_json(indent=2) if args.json else _render(c))
        return 0
    from squad.batch.jsonl_file import correct_file

    summary = correct_file(squad, Path(args.input), Path(args.output), criteria=args.criteria, thresholds=th,
                           batch_size=args.batch_size, errors=Path(args.errors) if args.errors else None)
    print(json.dumps(summary) if args.json else
          f"{summary['rows_in']} rows in: {summary['rows_out']} corrected -> {args.output}, "
          f"{summary['errors']} errors -> {summary['errors_file']}")
    return 0 if summary["errors"] == 0 else 3


def cmd_train(args) -> int:
    from squad.config.loading import load_config
    from squad.train.config import TrainConfig
    from squad.train.launcher import train_squad

    cfg = load_config(args.config, TrainConfig, args.overrides)
    out = train_squad(cfg)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="squad", description="Aligner Squad: inspect and correct LLM answers.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("correct", help="correct one (question, answer) pair or a JSON Lines file",
                       description="Correct one pair (--question/--answer) or a file (--input/--output). "
                                   "File rows are {question, answer}; bad rows go to an errors file.")
    c.add_argument("--question", "-q")
    c.add_argument("--answer", "-a")
    c.add_argument("--input", "-i", help="JSON Lines file of {question, answer} rows")
    c.add_argument("--output", "-o", help="where corrected rows (with traces) are written")
    c.add_argument("--errors", help="where bad rows go (default: OUTPUT.errors.jsonl)")
    c.add_argument("--bundle", default="default", help="'default' or a bundle directory")
    c.add_argument("--threshold", action="append", metavar="CRITERION=VALUE", help="override a threshold (repeatable)")
    c.add_argument("--criteria", nargs="+", help="only these criteria")
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--engine", choices=ENGINES, default="auto",
                    help="how the aligners decode: ct2 (CTranslate2, float32), ct2-int8 (faster; other answers), "
                         "hf (PyTorch); auto: ct2 on CPU where it loads")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(fn=cmd_correct)

    t = sub.add_parser("train", help="fit every aligner and inspector at once on Ray Train",
                       description="Train a squad bundle from a config, with key=value overrides, e.g. "
                                   "`squad train configs/train.yaml aligner.epochs=3`. Rerun to resume.")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", metavar="key=value")
    t.set_defaults(fn=cmd_train)

    from squad.cli.batch import register as add_batch
    from squad.cli.data import register as add_data
    from squad.cli.eval import register as add_eval
    from squad.cli.sweep import register as add_sweep
    from squad.cli.synth import register as add_synth

    for add in (add_eval, add_batch, add_sweep, add_data, add_synth):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SquadError as e:
        print(f"squad {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
