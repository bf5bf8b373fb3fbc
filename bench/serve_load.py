"""Serve benchmark: the served default squad under load from a second process, on loopback.

Mixed workload from the held-out split (half already-good answers, half misaligned). For each
concurrency (1, 8, 32): throughput, p50/p99 latency and errors through HTTP. In the same run:
the same workload through the in-process SDK (so Serve's overhead is a ratio), inspectors-only
requests through HTTP, and the gated squad against always applying every aligner (the PKU
Aligner style), as a throughput ratio with the pass rate of each; and the 1-client latency with
the aligners on PyTorch (``aligner_engine: hf``) and on CTranslate2 int8 (``ct2-int8``) against the
default engine.

    python bench/serve_load.py [--requests 32] [--max-seconds 240]
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import p50, p99  # noqa: E402


def workload(n: int, seed: int = 0, references: bool = False) -> list[dict] | tuple[list[dict], list[str | None]]:
    """``n`` held-out pairs alternating good, misaligned; with ``references``, also each pair's
    reference correction (None for good pairs)."""
    from squad.data.rows import load_policy_data

    good, bad = [], []
    for c in ("ethics", "helpfulness", "honesty"):
        corr, g = load_policy_data(ROOT / "policies" / c).split("test")
        bad += [({"question": r.question, "answer": r.answer}, r.correction) for r in corr]
        good += [({"question": r.question, "answer": r.answer}, None) for r in g]
    rng = random.Random(seed)
    rng.shuffle(good), rng.shuffle(bad)
    half = n // 2
    mixed = [x for pair in zip(good[:half], bad[:half]) for x in pair]
    bodies = [b for b, _ in mixed]
    return (bodies, [r for _, r in mixed]) if references else bodies


def quality(squad, pairs: list[tuple[str, str]], refs: list[str | None], answers: list[str]) -> str:
    """Share passing every inspector; win rate against the references on misaligned pairs (as in
    ``squad eval``); alignment tax (share changed) on good pairs."""
    from squad.eval.metrics import Embedder, closer_to_reference

    scores = squad.inspector.score([(q, a) for (q, _), a in zip(pairs, answers)])
    passing = sum(all(s[c] >= 0.5 for c in s) for s in scores) / len(scores)
    bad = [k for k, r in enumerate(refs) if r]
    wins = sum(closer_to_reference(Embedder(), [pairs[k][1] for k in bad], [answers[k] for k in bad],
                                   [refs[k] for k in bad])) / len(bad)
    good = [k for k, r in enumerate(refs) if not r]
    tax = sum(answers[k] != pairs[k][1] for k in good) / len(good)
    return f"pass rate {passing:.2f}, win rate {wins:.2f}, alignment tax {tax:.2f}"


def load(url: str, bodies: list[dict], conc: int, n: int, max_s: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("\n".join(json.dumps(b) for b in bodies))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "loadgen.py"), url, f.name, str(conc), str(n),
                          str(max_s)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(name: str, r: dict) -> str:
    lat = r["latencies_ms"]
    thr = len(lat) / r["wall_s"] if r["wall_s"] else 0.0
    return (f"| {name} | {r['sent']} | {thr:.2f} | {p50(lat) if lat else float('nan'):.0f} | "
            f"{p99(lat) if lat else float('nan'):.0f} | {len(r['errors'])} |"), thr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-seconds", type=float, default=240)
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--gate-only", action="store_true",
                    help="only the in-process comparison: gated squad against always applying every aligner")
    ap.add_argument("--inspect-only", action="store_true",
                    help="only inspectors-only requests: over HTTP and in-process, in one run")
    args = ap.parse_args()
    bodies = workload(args.requests)
    print(f"workload: {len(bodies)} pairs, half already good, half misaligned (held-out split)\n")
    print("| path | requests | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    thr: dict = {}
    if not args.gate_only:
        serve_figures(bodies, args, thr)
        if args.inspect_only:
            return
    gate_figures(bodies, args, thr)


def serve_figures(bodies: list[dict], args, thr: dict) -> None:
    """The served squad over HTTP from a second process (fills ``thr``: req/s per setting)."""
    import ray
    from ray import serve

    from squad.serve.app import build_app

    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    url = f"http://127.0.0.1:{args.port}"
    no_upstream = {"base_url": "http://127.0.0.1:9/v1"}  # the chat proxy is not exercised here
    serve.run(build_app({"bundle": "default", "upstream": no_upstream}), name="squad")
    if args.inspect_only:
        return inspect_only(url, bodies, args)
    one_client = {}
    for conc in (1, 8, 32):
        r = load(url + "/v1/correct", bodies, conc, len(bodies), args.max_seconds)
        line, thr[conc] = row(f"HTTP /v1/correct, {conc} client{'s' if conc > 1 else ''}", r)
        one_client = one_client or r
        print(line, flush=True)
    good = [b for i, b in enumerate(bodies) if i % 2 == 0]
    line, _ = row("HTTP /v1/inspect (inspectors only), 1 client",
                  load(url + "/v1/inspect", good, 1, 4 * len(good), args.max_seconds))
    print(line, flush=True)
    # the other engines at one client, for the ratio (the default, auto, decodes on CTranslate2 float32 on CPU)
    for engine, what in (("hf", "PyTorch"), ("ct2-int8", "CTranslate2 int8")):
        serve.delete("squad")
        serve.run(build_app({"bundle": "default", "upstream": no_upstream, "aligner_engine": engine}), name="squad")
        r = load(url + "/v1/correct", bodies, 1, len(bodies), args.max_seconds)
        line, _ = row(f"HTTP /v1/correct, 1 client, aligner_engine: {engine} ({what})", r)
        print(line, flush=True)
        if one_client["latencies_ms"] and r["latencies_ms"]:
            print(f"1-client /v1/correct, {engine} / default engine: p50 "
                  f"{p50(r['latencies_ms']) / p50(one_client['latencies_ms']):.2f}x, p99 "
                  f"{p99(r['latencies_ms']) / p99(one_client['latencies_ms']):.2f}x", flush=True)
    serve.delete("squad")
    serve.run(build_app({"bundle": "default", "upstream": no_upstream, "aligner_layout": "per_criterion",
                         "aligner": {"num_cpus": 0.4}}), name="squad")
    line, thr["per_criterion"] = row("HTTP /v1/correct, 8 clients, one Aligner deployment per criterion",
                                     load(url + "/v1/correct", bodies, 8, len(bodies), args.max_seconds))
    print(line, flush=True)
    serve.shutdown()
    ray.shutdown()


def gate_figures(bodies: list[dict], args, thr: dict) -> None:
    """In-process: the SDK on the same workload, and the gate against always applying every aligner."""
    from squad import Squad

    squad = Squad.load("default")
    t0 = time.perf_counter()
    gated = squad.correct_batch([(b["question"], b["answer"]) for b in bodies])
    sdk_s = time.perf_counter() - t0
    print(f"| in-process SDK correct_batch | {len(bodies)} | {len(bodies) / sdk_s:.2f} | - | - | 0 |")
    t0 = time.perf_counter()
    pairs = [(b["question"], b["answer"]) for b in bodies]
    always = pairs
    for c in squad.criteria:  # the PKU Aligner style: every aligner on every answer, no gate
        always = list(zip([q for q, _ in pairs], squad.aligner.correct(c, always)))
    always_s = time.perf_counter() - t0
    print(f"| always apply every aligner (no inspectors) | {len(bodies)} | {len(bodies) / always_s:.2f} | - | - | 0 |")

    _, refs = workload(args.requests, references=True)
    if thr:
        print(f"\naligner layout at 8 clients: per-criterion / multiplexed throughput = {thr['per_criterion'] / thr[8]:.2f}x")
        print(f"Serve overhead: HTTP at 8 clients / in-process SDK throughput = {thr[8] / (len(bodies) / sdk_s):.2f}x")
    print(f"gated squad / always-apply throughput = {always_s / sdk_s:.2f}x")
    print(f"quality, gated: {quality(squad, pairs, refs, [c.answer for c in gated])}")
    print(f"quality, always-apply: {quality(squad, pairs, refs, [a for _, a in always])}")


def inspect_only(url: str, bodies: list[dict], args) -> None:
    """Inspectors-only latency over HTTP (1 client) against ``Squad.inspect`` in-process, one run."""
    import ray
    from ray import serve

    from squad import Squad

    good = [b for i, b in enumerate(bodies) if i % 2 == 0]
    r = load(url + "/v1/inspect", good, 1, 4 * len(good), args.max_seconds)
    line, _ = row("HTTP /v1/inspect (inspectors only), 1 client", r)
    print(line, flush=True)
    serve.shutdown()
    ray.shutdown()
    squad = Squad.load("default")
    lat = []
    for i in range(4 * len(good)):
        b = good[i % len(good)]
        t0 = time.perf_counter()
        squad.inspect(b["question"], b["answer"])
        lat.append((time.perf_counter() - t0) * 1000)
    lat = lat[3:]  # warm-up
    print(f"| in-process Squad.inspect ({squad.inspector.runtime}) | {len(lat)} | - | {p50(lat):.1f} | {p99(lat):.1f} | 0 |")
    print(f"\nServe overhead on inspectors-only requests, HTTP p50 / in-process p50: "
          f"{p50(r['latencies_ms']) / p50(lat):.2f}x")


if __name__ == "__main__":
    main()
