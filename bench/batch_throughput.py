"""Batch throughput: ``squad batch`` (Ray Data) against a sequential loop of ``Squad.correct``.

The same held-out rows (half already-good answers, half misaligned) go through both paths in one
run, on the shipped default squad. The Ray Data time includes the model loads of every actor pool
(one pool per pipeline stage), but not starting Ray; the loop's squad is loaded and
its aligner warmed before timing. Also printed: how many final answers the two paths agree on
(they run the same algorithm; batching may change greedy decoding by float noise only).

Both pipeline layouts run: ``staged`` (one actor pool per stage: the inspectors, then one per
round) and ``fused`` (one pool whose actors run every round); the line at the end says which one
the default, ``layout: auto``, picks on this machine.

    python bench/batch_throughput.py [--rows 96] [--bundle default] [--layouts staged,fused] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from serve_load import workload  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--layouts", default="staged,fused", help="comma-separated pipeline layouts to time")
    ap.add_argument("--bundle", default="default")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="batch config overrides (configs/batch.yaml)")
    args = ap.parse_args()

    import ray

    from squad import Squad
    from squad.batch.pipeline import ensure_ray, load_batch_config, resolve_layout, run_batch
    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.sdk.local import squad_policy

    rows = workload(args.rows)
    cfg = load_batch_config(None, ["progress=false", *args.overrides])
    tmp = Path(tempfile.mkdtemp(prefix="squad-batch-bench-"))
    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"workload: {len(rows)} rows, half already good, half misaligned (held-out split); bundle {args.bundle}")
    print(f"batch config: chunk_rows {cfg.chunk_rows}; inspector {cfg.inspector.model_dump()}; "
          f"aligner {cfg.aligner.model_dump()}\n")

    ensure_ray()
    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 0)
    auto = resolve_layout(cfg.model_copy(update={"layout": "auto"}),
                          squad_policy(read_manifest(resolve_bundle(args.bundle))), False, resources)
    runs = {}
    for layout in args.layouts.split(","):
        ensure_ray()
        s = run_batch(src, tmp / layout, bundle=args.bundle, cfg=cfg.model_copy(update={"layout": layout}))
        ray.shutdown()  # each layout starts from a fresh local Ray
        runs[layout] = (s, [json.loads(x) for p in sorted((tmp / layout).glob("part-*.jsonl"))
                            for x in p.read_text().splitlines()])

    squad = Squad.load(args.bundle)
    squad.aligner  # load before timing, like the pools' actors do before their first batch
    t0 = time.perf_counter()
    seq = [squad.correct(r["question"], r["answer"]) for r in rows]
    seq_s = time.perf_counter() - t0

    n = len(rows)
    steps = sum(len(c.steps) for c in seq)
    print("| path | rows | seconds | rows/s |")
    print("|---|---|---|---|")
    for layout, (s, _) in runs.items():
        what = f"{s['stages']} stage{'s' if s['stages'] > 1 else ''}"
        print(f"| squad batch (Ray Data, {layout}: {what}) | {s['rows_out']} | {s['seconds']:.1f} | {n / s['seconds']:.3f} |")
    print(f"| sequential Squad.correct loop | {n} | {seq_s:.1f} | {n / seq_s:.3f} |")
    print(f"\naligner runs: {steps} over {sum(bool(c.steps) for c in seq)} rows")
    for layout, (s, out) in runs.items():
        print(f"{layout}: rows in {s['rows_in']} = out {s['rows_out']} + errors {s['errors']}; same final answer as "
              f"the loop {sum(o['answer'] == c.answer for o, c in zip(out, seq))}/{n}; "
              f"throughput ratio, batch / sequential: {seq_s / s['seconds']:.2f}x")
    print(f"the default, layout=auto, picks {auto} on this Ray cluster ({cpus:g} CPUs)")


if __name__ == "__main__":
    main()
