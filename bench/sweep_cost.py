"""A 50-point threshold sweep against one evaluation pass, measured in one run.

The squad's path depends on thresholds only through which aligners fire, so the sweep caches every
inspector and aligner call per (pair, sequence of aligners) and replays the trials from that cache.
Timed here, on the same rows, with models already loaded in each case:

- one evaluation pass: `squad eval`'s `evaluate()` on the real squad (no cache);
- one cold trial: the sweep's own trial code at the bundle's thresholds, on an empty cache;
- the sweep: `squad sweep` locally (Ray Tune, one offline W&B run per trial), N points, one cache
  (prefetched: every aligner step the search space can reach, before the first trial).

Default rows: the whole held-out split, as `squad sweep` uses (about 6 minutes here); `--rows 24`
is a quick look, where the fixed cost of Tune and 50 W&B runs weighs more.

    python bench/sweep_cost.py [--bundle default] [--rows N] [--points 50] [--config configs/sweep.yaml]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--rows", type=int, default=None,
                    help="held-out rows, evenly spaced over every criterion (default: all, as `squad sweep`)")
    ap.add_argument("--points", type=int, default=50, help="sweep trials (random search over the config's space)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "sweep.yaml"))
    args = ap.parse_args()

    import torch

    from squad import Squad
    from squad.config.loading import load_config
    from squad.eval.metrics import evaluate
    from squad.sweep import SweepConfig, run_sweep
    from squad.sweep.evaluator import Evaluator, load_rows

    out = tempfile.mkdtemp(prefix="sweep_cost_")
    rows_opt = [f"squad.rows={args.rows}"] if args.rows else []
    cfg = load_config(args.config, SweepConfig, [f"squad.bundle={args.bundle}", *rows_opt,
                                                 f"squad.output={out}", "method=random"])
    squad = Squad.load(args.bundle)
    squad.aligner  # loaded before timing, as the sweep's evaluator is
    rows = load_rows(cfg.squad, squad.criteria)
    print(f"{len(rows)} held-out rows ({sum(1 for r in rows if r.correction)} misaligned), bundle {args.bundle}, "
          f"torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    evaluate(squad, rows, progress=False)
    t_eval = time.perf_counter() - t0
    del squad

    ev = Evaluator(args.bundle, rows)
    t0 = time.perf_counter()
    ev.trial({})
    t_trial = time.perf_counter() - t0
    cold = ev.stats()
    del ev

    res = run_sweep(cfg, trials=args.points, force_local=True, log=lambda m: None)
    t_sweep, s = res.seconds["sweep"], res.stats
    print("| run | seconds | real aligner pairs | real inspector pairs |")
    print("|---|---|---|---|")
    print(f"| one evaluation pass (`squad eval`, no cache) | {t_eval:.1f} | | |")
    print(f"| one cold trial (sweep code, empty cache) | {t_trial:.1f} | {cold['aligner_misses']} | {cold['inspector_misses']} |")
    print(f"| {len(res.trials)}-point sweep (Ray Tune + offline W&B runs, one cache) | {t_sweep:.1f} | "
          f"{s['aligner_misses']} | {s['inspector_misses']} |")
    print(f"\nsweep cost ratio, {len(res.trials)}-point sweep / one evaluation pass: {t_sweep / t_eval:.2f}x "
          f"(target <= 1.5x); / one cold trial: {t_sweep / t_trial:.2f}x")
    print(f"real aligner calls, sweep / one pass: {s['aligner_misses']} / {cold['aligner_misses']} = "
          f"{s['aligner_misses'] / max(cold['aligner_misses'], 1):.2f}x (the noise-free part of the cost)")
    print(f"model time inside the sweep: {s['model_s']:.1f}s; the rest is Tune, W&B and replay "
          f"({s['aligner_lookups']} aligner lookups served for {s['aligner_misses']} real aligner pairs)")
    print(f"outputs: {res.output}")


if __name__ == "__main__":
    main()
