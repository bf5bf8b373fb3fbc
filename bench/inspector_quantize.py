"""A bundle's inspectors with float and int8 encoders on ONNX Runtime: quality and latency, one run.

Quality on the held-out split, scored the way `squad eval` scores inspectors (misaligned answers
are negatives, their reference corrections and the good answers positives): AUROC, accuracy at the
threshold, and how many pass/fail decisions at the threshold differ between the two. Latency: one
already-good pair, every criterion, alternating the two inspectors call by call.

    python bench/inspector_quantize.py [--bundle default] [--calls 60]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import p50, p99  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--calls", type=int, default=60)
    args = ap.parse_args()

    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.eval.metrics import auroc, heldout_rows
    from squad.sdk.local import load_inspector

    path = resolve_bundle(args.bundle)
    manifest = read_manifest(path)
    crits = list(manifest.criteria)
    th = {c: e.policy.threshold for c, e in manifest.criteria.items()}
    inspectors = {}
    for q in ("none", "int8"):
        manifest.inspector.quantize = q
        inspectors[q] = load_inspector(path, manifest, probe=False)  # the encoders alone
    rows = heldout_rows(ROOT / "policies", crits)
    probe = [(r.question, r.answer, 0 if r.correction else 1, r.criterion) for r in rows]
    probe += [(r.question, r.correction, 1, r.criterion) for r in rows if r.correction]
    scores = {q: insp.score([(p[0], p[1]) for p in probe]) for q, insp in inspectors.items()}

    print(f"held-out probe pairs: {len(probe)}")
    print("| criterion | AUROC float | AUROC int8 | acc@th float | acc@th int8 | decisions that differ | max abs score diff |")
    print("|---|---|---|---|---|---|---|")
    for c in crits:
        idx = [k for k, p in enumerate(probe) if p[3] == c]
        labels = [probe[k][2] for k in idx]
        f = [scores["none"][k][c] for k in idx]
        q = [scores["int8"][k][c] for k in idx]
        acc = [sum((v >= th[c]) == bool(y) for v, y in zip(s, labels)) / len(idx) for s in (f, q)]
        flips = sum((a >= th[c]) != (b >= th[c]) for a, b in zip(f, q))
        diff = max(abs(a - b) for a, b in zip(f, q))
        print(f"| {c} | {auroc(labels, f):.3f} | {auroc(labels, q):.3f} | {acc[0]:.3f} | {acc[1]:.3f} | "
              f"{flips} of {len(idx)} | {diff:.3f} |")

    goods = [(r.question, r.answer) for r in rows if not r.correction]
    times: dict[str, list[float]] = {q: [] for q in inspectors}
    for q, insp in inspectors.items():  # warm-up
        for pair in goods[:3]:
            insp.score([pair])
    for i in range(args.calls):
        for q, insp in inspectors.items():
            t0 = time.perf_counter()
            insp.score([goods[i % len(goods)]])
            times[q].append((time.perf_counter() - t0) * 1000.0)
    print(f"\n| encoders | calls | p50 ms, 1 pair x {len(crits)} criteria | p99 ms |")
    print("|---|---|---|---|")
    for q, ts in times.items():
        print(f"| {'float32' if q == 'none' else q} | {len(ts)} | {p50(ts):.1f} | {p99(ts):.1f} |")
    print(f"\nint8 speed-up, float p50 / int8 p50: {p50(times['none']) / p50(times['int8']):.2f}x")


if __name__ == "__main__":
    main()
