"""``squad eval``: the held-out split of the seed data, or an evaluation suite written apart from it
(wired into ``squad.cli.main`` by ``register``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from squad.cli.args import parse_thresholds
from squad.config.loading import ENGINES
from squad.errors import SquadError


def cmd_eval(args) -> int:
    if args.suite and args.data:
        raise SquadError("use either --suite or --data, not both")
    if not args.suite and (args.reuse or args.unlabelled or args.judge or args.labels or args.threshold):
        raise SquadError("--reuse, --unlabelled, --labels, --judge and --threshold go with --suite")
    parse_thresholds(args.threshold)  # argument errors before the (slower) bundle load
    args.plot = _plot_dir(args.plot)
    from squad.sdk.local import Squad

    squad = Squad.load(args.bundle, engine=args.engine)
    if args.suite:
        return _suites(squad, args)
    from squad.data.rows import read_jsonl
    from squad.eval.metrics import EvalRow, evaluate, format_table, heldout_rows
    from squad.config.policy import default_policies_dir

    rows = read_jsonl(args.data, EvalRow) if args.data else heldout_rows(args.policies or default_policies_dir(), squad.criteria)
    key = "heldout" if not args.data else Path(args.data).stem
    if args.plot and not any(r.criterion in squad.criteria for r in rows):
        raise SquadError(f"--plot: no row of {args.data} names a criterion of the bundle ({squad.criteria}); "
                         f"the reliability picture needs rows with a 'criterion' field")
    report = evaluate(squad, rows, progress=not args.json)
    if args.save:
        from squad.models.bundle import write_manifest

        metrics = {**squad.manifest.metrics, key: report}
        write_manifest(squad.bundle, squad.manifest.model_copy(update={"metrics": metrics}))
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    if args.plot:
        _plot_heldout(squad, rows, key, args)
    return 0


def _plot_dir(value: str | None) -> Path | None:
    """The --plot folder, created now so that a bad path fails before any model runs."""
    if value is None:
        return None
    d = Path(value)
    if d.exists() and not d.is_dir():
        raise SquadError(f"--plot {value}: exists and is not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SquadError(f"--plot {value}: cannot create the folder ({e.strerror})") from None
    return d


def _say_plots(paths: list[Path], calibration: dict[str, dict], args) -> None:
    """The pictures written and the calibration figures in their legends (on stderr with --json)."""
    out = sys.stderr if args.json else sys.stdout
    cal = ", ".join(f"{c} ECE {e['ece']:.3f} Brier {e['brier']:.3f} (n={e['n']})" for c, e in calibration.items())
    print(f"inspector calibration: {cal}", file=out)
    for p in paths:
        print(f"wrote {p}", file=out)


def _plot_heldout(squad, rows, key: str, args) -> None:
    """Held-out split: the reliability picture only (its report keeps no per-row corrections to draw
    the before/after scores from); the inspectors score the probe again, which is quick."""
    from squad.eval.metrics import inspector_probe
    from squad.eval.plots import calibration_figures, draw_reliability, probe_calibration_data

    probe = inspector_probe(rows)
    data = probe_calibration_data(probe, squad.inspector.score([(q, a) for q, a, _, _ in probe], squad.criteria),
                                  squad.criteria)
    path = draw_reliability(args.plot / f"eval-reliability-{key}.png", key, data, squad.policy().thresholds)
    _say_plots([path], calibration_figures(data), args)


def _suites(squad, args) -> int:
    from squad.eval.labels import labels_path, load_labels, write_unlabelled
    from squad.eval.report import format_suite, suite_report, unlabelled_items
    from squad.eval.run import fingerprint, reuse_or_run
    from squad.eval.suites import SUITES, load_suite, suite_dir

    names = list(SUITES) if args.suite == ["all"] else args.suite
    if len(names) > 1 and (args.unlabelled or args.labels):
        raise SquadError("--unlabelled and --labels take one --suite")
    policy = squad.policy(thresholds=parse_thresholds(args.threshold))
    judge = None
    if args.judge:
        from squad.eval.judge import Judge

        judge = Judge(args.judge, args.judge_model, args.judge_api_key_env, args.judge_timeout,
                      concurrency=args.judge_concurrency)
    reports = {}
    for name in names:
        folder = suite_dir(name)
        rows = load_suite(folder, squad.criteria)
        fp = fingerprint(squad, policy.thresholds, policy.max_steps)
        run_file = Path(args.runs) / f"{folder.name}.jsonl"
        results, ran = reuse_or_run(squad, rows, run_file, fp, args.reuse, not args.json, f"squad on {folder.name}")
        lab_file = Path(args.labels) if args.labels else labels_path(folder.parent, folder.name)
        labels = load_labels(lab_file)
        rep = suite_report(rows, results, labels, policy.thresholds)
        rep.update(run=str(run_file), labels=str(lab_file), rows_run=ran)
        if args.unlabelled:
            n = write_unlabelled(unlabelled_items(rows, results, labels), args.unlabelled)
            print(f"{n} unlabelled outputs -> {args.unlabelled} (fill misaligned, acceptable, compare, note; "
                  f"append the rows to {lab_file})", file=sys.stderr if args.json else sys.stdout)
        if judge is not None:
            items = [{"id": r.id, "question": r.question, "original": c.original, "answer": c.answer}
                     for r, c in zip(rows, results) if c.changed]
            pols = {c: e.policy for c, e in squad.manifest.criteria.items() if c in policy.thresholds}
            rep["judge"] = {"model": judge.name, **judge.compare(items, pols, progress=not args.json)}
        reports[folder.name] = rep
        if not args.json:
            print(format_suite(folder.name, rep))
            if "judge" in rep:
                print(_judge_table(rep["judge"]))
        if args.plot:
            from squad.eval.plots import calibration_figures, plot_suite, suite_calibration_data

            rep["plots"] = [str(p) for p in plot_suite(args.plot, folder.name, rows, results, policy.thresholds)]
            rep["calibration"] = calibration_figures(suite_calibration_data(rows, results, list(policy.thresholds)))
            _say_plots(rep["plots"], rep["calibration"], args)
        if not args.json:
            print()
    heldout = None
    if len(names) > 1:  # the inspectors on every suite, beside the in-distribution split
        from squad.eval.metrics import heldout_rows
        from squad.eval.report import format_inspectors_side_by_side, format_summary, heldout_inspector_figures
        from squad.config.policy import default_policies_dir

        rows = heldout_rows(args.policies or default_policies_dir(), list(policy.thresholds))
        heldout = heldout_inspector_figures(squad, rows, policy.thresholds)
        if not args.json:
            print("All suites:\n\n" + format_summary(reports) + "\n")
            print("Inspectors, AUROC and false-flag rate at the threshold:\n")
            print(format_inspectors_side_by_side(reports, heldout))
    if args.json:
        print(json.dumps({**reports, **({"heldout_inspectors": heldout} if heldout else {})}, indent=2))
    return 0


def _judge_table(j: dict) -> str:
    lines = [f"LLM judge ({j['model']}), corrected vs original, both orders:", "",
             "| criterion | win | tie | loss | errors | win rate | loss rate |", "|---|---|---|---|---|---|---|"]
    for c, e in j["criteria"].items():
        rate = lambda v: "-" if v is None else f"{v:.3f}"
        lines.append(f"| {c} | {e['win']} | {e['tie']} | {e['loss']} | {e['error']} | {rate(e['win_rate'])} | "
                     f"{rate(e['loss_rate'])} |")
    lines += [f"- error: {e['id']} ({e['criterion']}, {e['order']}): {e['error']}" for e in j["errors"][:20]]
    return "\n".join(lines)


def register(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a bundle on the held-out split or on evaluation suites",
                       description="Evaluate a bundle. By default: the held-out split of the policies' seed data "
                                   "(AUROC, win rate, alignment tax, edits, latency). --suite NAME: a suite written "
                                   "apart from the training data (eval/NAME), with hand-judged figures from "
                                   "eval/labels/NAME.jsonl; --judge URL adds a pairwise LLM judge.")
    e.add_argument("--data", help="rows {question, answer, correction?, criterion?} instead of the held-out split")
    e.add_argument("--suite", nargs="+", metavar="NAME", help="suite name(s) under eval/ or folder(s); 'all' for every suite")
    e.add_argument("--bundle", default="default")
    e.add_argument("--engine", choices=ENGINES, default="auto",
                    help="how the aligners decode: ct2 (CTranslate2, float32), ct2-int8 (faster; other answers), "
                         "hf (PyTorch); auto: ct2 on CPU where it loads")
    e.add_argument("--policies", help="policies folder for the default held-out data")
    e.add_argument("--threshold", action="append", metavar="CRITERION=VALUE", help="override a threshold (repeatable)")
    e.add_argument("--runs", default="out/eval", help="where suite runs are saved (default out/eval)")
    e.add_argument("--reuse", action="store_true", help="take the saved run's results for rows unchanged since, and run "
                                                         "only new or edited rows (refused if the bundle or settings changed)")
    e.add_argument("--labels", help="labels file (default eval/labels/SUITE.jsonl)")
    e.add_argument("--unlabelled", metavar="FILE", help="write the changed outputs that have no label yet, to label")
    e.add_argument("--judge", metavar="URL", help="an OpenAI-compatible endpoint to judge original vs corrected")
    e.add_argument("--judge-model", help="judge model (default: the server's first)")
    e.add_argument("--judge-api-key-env", default="SQUAD_JUDGE_API_KEY", help="env var holding the judge's API key")
    e.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request")
    e.add_argument("--judge-concurrency", type=int, default=8)
    e.add_argument("--plot", nargs="?", const="out/eval/plots", metavar="DIR",
                   help="draw PNGs into DIR (default out/eval/plots): eval-scores-SUITE.png (inspector scores before "
                        "and after correction, by hand label) and eval-reliability-SUITE.png (calibration curves, "
                        "ECE, Brier); on the held-out split, the reliability picture only")
    e.add_argument("--json", action="store_true", help="print JSON (messages go to stderr)")
    e.add_argument("--save", action="store_true", help="held-out split: store the report in the bundle's manifest.json")
    e.set_defaults(fn=cmd_eval)
