"""``squad sweep CONFIG``: the threshold sweep command (wired into ``squad.cli.main`` by ``register``)."""
from __future__ import annotations

import argparse
import json
import sys


def cmd_sweep(args) -> int:
    from squad.config.loading import load_config
    from squad.errors import SquadError
    from squad.sweep.config import LATENCY_NOTE, SweepConfig
    from squad.sweep.report import markdown_table
    from squad.sweep.run import run_sweep
    from squad.sweep.write_back import write_back

    if args.trials is not None and args.trials < 1:
        raise SquadError(f"--trials must be at least 1, got {args.trials}")

    flags = {"bundle": args.bundle, "data": args.data, "rows": args.rows, "output": args.output}
    overrides = list(args.overrides) + [f"squad.{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(args.config, SweepConfig, overrides)
    out = sys.stdout  # Tune's own output goes to stderr during the run
    res = run_sweep(cfg, trials=args.trials, force_local=args.local,
                    log=lambda m: None if args.json else print(m, file=out, flush=True))
    best = res.trials[res.best]
    crits = list(best["thresholds"])
    if args.write_back:
        write_back(args.write_back, best["thresholds"], best["max_steps"])
    if args.json:
        print(json.dumps({"backend": res.backend, "output": str(res.output), "chosen": _short(best),
                          "front": [_short(res.trials[i]) for i in res.front], "cache": res.stats,
                          "seconds": res.seconds, "written_back": args.write_back}, indent=2))
        return 0
    front = sorted(res.front, key=lambda i: res.trials[i]["aligner_calls"])
    print("\n" + markdown_table(res.trials, crits))
    print("\nPareto front (fewer aligner calls, higher quality):\n" + markdown_table([res.trials[i] for i in front], crits))
    s = res.stats
    print(f"\nchosen ({cfg.metric.goal} {cfg.metric.name}): trial {best['trial']}, thresholds "
          f"{json.dumps(best['thresholds'])}, max_steps {best['max_steps']}")
    print(f"real model calls for {len(res.trials)} trials (cache misses): {s['aligner_misses']} aligner pairs in "
          f"{s['aligner_batches']} batches, {s['inspector_misses']} inspector pairs, {s['embedder_misses']} embedded "
          f"texts; {s['aligner_lookups']} aligner lookups in all; model time {s['model_s']:.1f}s, "
          f"sweep {res.seconds['sweep']:.1f}s after {res.seconds['setup']:.1f}s loading")
    print(f"note: {LATENCY_NOTE}")
    print(f"wrote {res.output}/trials.csv, trials.jsonl, pareto.json, quality_vs_calls.png"
          + (f", W&B runs under {res.output}/wandb" if res.backend == "local" else ""))
    if args.write_back:
        print(f"wrote thresholds and max_steps into {args.write_back}")
    return 0


def _short(t: dict) -> dict:
    keys = ("trial", "thresholds", "max_steps", "objective", "quality", "win_rate", "pass_rate", "aligner_calls",
            "latency_ms")
    return {k: t[k] for k in keys}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="sweep thresholds and max_steps; Pareto front of quality against aligner calls",
        description="Run a W&B-format sweep config (method grid|random|bayes, metric, parameters: thresholds per "
                    "criterion and max_steps). With W&B online and logged in a W&B agent runs it; otherwise Ray Tune "
                    "runs the same space locally, each trial logged to an offline W&B run. Trials replay one cache "
                    "of inspector and aligner calls. Writes trials.csv/jsonl, pareto.json and quality_vs_calls.png.",
        epilog="example: squad sweep configs/sweep.yaml --rows 48 --trials 30 --write-back")
    p.add_argument("config", help="sweep YAML, e.g. configs/sweep.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. run_cap=20 squad.objective.aligner_calls=0.2")
    p.add_argument("--trials", type=int, help="trials for random/bayes (default: run_cap)")
    p.add_argument("--bundle", help="'default' or a bundle directory (squad.bundle)")
    p.add_argument("--data", help="eval rows JSON Lines (default: the held-out split)")
    p.add_argument("--rows", type=int, help="use this many eval rows, evenly spaced")
    p.add_argument("--output", "-o", help="output folder (default out/sweep)")
    p.add_argument("--local", action="store_true", help="run locally with Ray Tune even when W&B is online")
    p.add_argument("--write-back", nargs="?", const="squad.yaml", metavar="SQUAD_YAML",
                   help="put the chosen thresholds and max_steps into SquadIngress's user_config (default squad.yaml); "
                        "give it after CONFIG")
    p.add_argument("--json", action="store_true", help="print a JSON summary only")
    p.set_defaults(fn=cmd_sweep)
