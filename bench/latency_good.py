"""`correct()` latency on already-good answers (inspectors only), against always-apply in one run.

The squad gates aligners with inspectors, so a good answer costs one batched inspector pass. The
baseline, measured here in the same run, is the PKU Aligner style: always run an aligner on every
answer (here one aligner, the cheapest case of it). Published reference, not measured here: about
100 ms for a single llm-guard CPU toxicity scanner.

    python bench/latency_good.py [--bundle default] [--calls 50] [--baseline-calls 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import p50, p99, timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--baseline-calls", type=int, default=5)
    args = ap.parse_args()

    from squad import Squad
    from squad.data.rows import load_policy_data

    squad = Squad.load(args.bundle)
    # The bundle's hidden-state judge, if it has one, is timed against the inspectors alone.
    fast = Squad.load(args.bundle, probe=False) if squad.manifest.inspector.probe else None
    goods = [r for c in squad.criteria for r in load_policy_data(ROOT / "policies" / c).split("test")[1]]
    th = {c: e.policy.threshold for c, e in squad.manifest.criteria.items()}
    scores = squad.inspector.score([(r.question, r.answer) for r in goods])  # one batched pass
    passing = [r for r, s in zip(goods, scores) if all(s[c] >= th[c] for c in th)]
    print(f"held-out good answers: {len(goods)}, passing every inspector untouched: {len(passing)} "
          f"({len(passing) / len(goods):.0%})", flush=True)
    sample = passing or goods
    it = iter(range(10**9))

    def gated(sq=squad):
        r = sample[next(it) % len(sample)]
        sq.correct(r.question, r.answer)

    def always():
        r = sample[next(it) % len(sample)]
        squad.aligner.correct(squad.criteria[0], [(r.question, r.answer)])

    g = timed(gated, args.calls)
    f = timed(lambda: gated(fast), args.calls) if fast else None
    b = timed(always, args.baseline_calls, warmup=1)
    print(f"torch threads: {torch.get_num_threads()}")
    print("| path | calls | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    what = "3 inspectors and the hidden-state judge" if fast else "3 inspectors"
    print(f"| squad.correct, good answer ({what}, no aligner) | {len(g)} | {p50(g):.1f} | {p99(g):.1f} |")
    if fast:
        print(f"| squad.correct, good answer (3 inspectors alone: `probe=False`) | {len(f)} | {p50(f):.1f} | {p99(f):.1f} |")
    print(f"| always apply one aligner (PKU style baseline) | {len(b)} | {p50(b):.1f} | {p99(b):.1f} |")
    print(f"\nspeed-up on good answers, baseline/squad p50: {p50(b) / p50(g):.1f}x")
    if fast:
        print(f"the judge's cost on good answers, with/without p50: {p50(g) / p50(f):.1f}x")
    print(f"against the ~100 ms published for one llm-guard CPU scanner: {100.0 / p50(g):.1f}x (published figure, not measured here)")


if __name__ == "__main__":
    main()
