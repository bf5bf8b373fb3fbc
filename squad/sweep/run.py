"""``squad sweep``: a W&B sweep YAML in; trials replayed from one cache (``squad.sweep.evaluator``)
on W&B or Ray Tune (``squad.sweep.backends``); trials table, Pareto front and plot out."""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from squad.errors import ConfigError
from squad.sweep.backends import choose_backend, run_agent, run_local
from squad.sweep.config import LATENCY_NOTE, METRICS, Param, SweepConfig
from squad.sweep.evaluator import Evaluator, load_rows
from squad.sweep.report import pareto_front, plot



@dataclass
class SweepResult:
    trials: list[dict]
    front: list[int]
    best: int
    backend: str
    output: Path
    stats: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def run_sweep(cfg: SweepConfig, trials: int | None = None, force_local: bool = False,
              log: Callable[[str], None] = print) -> SweepResult:
    """Run the sweep (W&B agent or local Ray Tune), then write the table, pareto.json and the plot."""
    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.sdk.local import squad_policy

    s = cfg.squad
    out = Path(s.output)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(resolve_bundle(s.bundle))
    crits = list(manifest.criteria)
    th_params = cfg.parameters.get("thresholds")
    unknown = sorted(set(th_params.parameters if th_params else {}) - set(crits))
    if unknown:
        raise ConfigError(f"parameters.thresholds: unknown criteria {unknown}; this squad has {crits}")
    rows = load_rows(s, crits)
    backend, why = choose_backend(force_local)
    log(f"[sweep] backend: {'W&B agent' if backend == 'wandb' else 'local Ray Tune, offline W&B runs'} ({why})")
    log(f"[sweep] {len(rows)} eval rows, bundle {s.bundle}")
    t0 = time.perf_counter()
    kwargs = dict(bundle=s.bundle, rows=rows, criteria=crits, reference=s.objective.reference_thresholds,
                  objective=s.objective)
    if backend == "local":
        import ray
        import torch

        own = not ray.is_initialized()
        if own:
            from squad.cluster import init_ray

            init_ray()
        ev = ray.remote(num_cpus=0)(Evaluator).remote(**kwargs, threads=torch.get_num_threads())
        try:
            ray.get(ev.ready.remote())
            t1 = time.perf_counter()
            ray.get(ev.prefetch.remote(*search_bounds(cfg, manifest)))
            results = run_local(cfg, ev, out, trials, log)
            stats = ray.get(ev.stats.remote())
        finally:
            ray.kill(ev)
            if own:
                ray.shutdown()
    else:
        ev = Evaluator(**kwargs)
        t1 = time.perf_counter()
        ev.prefetch(*search_bounds(cfg, manifest))
        results = run_agent(cfg, ev, trials, log)
        stats = ev.stats()
    for r in results:  # the full policy each trial ran (unswept criteria at the bundle's thresholds)
        pol = squad_policy(manifest, crits, r["config"].get("thresholds"), r["config"].get("max_steps"))
        r["thresholds"], r["max_steps"] = pol.thresholds, pol.max_steps
    xs, ys = [r["aligner_calls"] for r in results], [r["quality"] for r in results]
    front = pareto_front(xs, ys)
    sign = 1 if cfg.metric.goal == "maximize" else -1
    moved = [sum(abs(r["thresholds"][c] - manifest.criteria[c].policy.threshold) for c in crits)
             + abs(r["max_steps"] - manifest.max_steps) for r in results]  # ties: nearest the bundle's settings
    best = max(range(len(results)),
               key=lambda i: (sign * results[i][cfg.metric.name], -xs[i], -results[i]["latency_ms"], -moved[i]))
    for i, r in enumerate(results):
        r["pareto"], r["best"] = i in front, i == best
    _write_outputs(out, results, crits)
    (out / "pareto.json").write_text(json.dumps({
        "metric": cfg.metric.model_dump(), "objective": s.objective.model_dump(), "note": LATENCY_NOTE,
        "chosen": _public(results[best]), "front": [_public(results[i]) for i in sorted(front, key=lambda i: xs[i])],
        "cache": stats}, indent=2))
    plot(out / "quality_vs_calls.png", xs, ys, front, best)
    secs = {"setup": round(t1 - t0, 2), "sweep": round(time.perf_counter() - t1, 2)}
    return SweepResult(results, front, best, backend, out, stats, secs)


def search_bounds(cfg: SweepConfig, manifest) -> tuple[dict, dict, int, dict]:
    """Per criterion the lowest and highest threshold the search space can set, the largest
    max_steps, and the priorities: what ``Evaluator.prefetch`` needs."""
    def bounds(p: Param | None, default):
        if p is None:
            return default, default
        if p.value is not None:
            return p.value, p.value
        if p.values is not None:
            return min(p.values), max(p.values)
        return p.min, p.max

    th = cfg.parameters.get("thresholds")
    low, high = {}, {}
    for c, entry in manifest.criteria.items():
        low[c], high[c] = bounds((th.parameters or {}).get(c) if th else None, entry.policy.threshold)
    steps = bounds(cfg.parameters.get("max_steps"), manifest.max_steps)[1]
    return low, high, int(steps), {c: e.policy.priority for c, e in manifest.criteria.items()}


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "config"}


def _write_outputs(out: Path, results: list[dict], crits: list[str]) -> None:
    with open(out / "trials.jsonl", "w") as f:
        for r in results:
            f.write(json.dumps(_public(r)) + "\n")
    cols = ["trial", *(f"threshold.{c}" for c in crits), "max_steps", *METRICS, "aligner_misses",
            "inspector_misses", "pareto", "best", "wandb_run"]
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in results:
            flat = {**r, **{f"threshold.{c}": r["thresholds"][c] for c in crits}}
            w.writerow([flat.get(c) for c in cols])

