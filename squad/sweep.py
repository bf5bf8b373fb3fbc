"""Threshold sweeps: a W&B sweep YAML in; trials replayed from one cache; a Pareto front out.

The squad's path depends on thresholds only through which aligners fire. Inspector scores are
memoised per (question, answer) and aligner outputs per (criterion, question, answer); the answer
after k steps is fixed by the pair and the aligners applied so far, so this caches each (pair,
sequence of aligners) once. A trial is ``squad.evaluate.evaluate`` over ``run_squad`` with a policy
from ``squad_policy`` and those memoised calls: only cache misses reach the models, one batch per
round. One ``Evaluator`` holds the models and every cache for all trials: in local mode a Ray actor
(0 CPUs, one call at a time) that Tune's function trials (``tune.with_parameters`` passes its handle,
``max_concurrent_trials`` 1 by default, actors reused) call in turn, so no trial recomputes another's
calls; in W&B agent mode an in-process object.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import json
import os
import re
import statistics
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from squad.errors import ConfigError, SquadError

METRICS = ("objective", "quality", "win_rate", "pass_rate", "aligner_calls", "latency_ms", "alignment_tax",
           "pass_rate_own")
LATENCY_NOTE = ("latency_ms is estimated: the per-item cost of each inspector and aligner call on a sample's "
                "path, as measured (batched) when that call filled the cache")


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


class Param(_Strict):
    """One W&B sweep parameter: ``value``, ``values``, a ``min``/``max`` distribution, or nested ``parameters``."""

    value: Any = None
    values: list[Any] | None = None
    min: int | float | None = None
    max: int | float | None = None
    distribution: Literal["constant", "categorical", "int_uniform", "uniform", "q_uniform",
                          "log_uniform_values"] | None = None
    q: float | None = Field(None, gt=0, description="Step of q_uniform.")
    parameters: dict[str, "Param"] | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [self.value is not None, self.values is not None, self.min is not None or self.max is not None,
                 self.parameters is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of value, values, min/max or parameters")
        if kinds[2] and (self.min is None or self.max is None or self.min > self.max):
            raise ValueError("min and max must both be set, with min <= max")
        return self

    @property
    def dist(self) -> str:
        if self.distribution:
            return self.distribution
        if self.values is not None:
            return "categorical"
        return "int_uniform" if isinstance(self.min, int) and isinstance(self.max, int) else "uniform"


class Metric(_Strict):
    name: str = Field("objective", description=f"One of {', '.join(METRICS)}.")
    goal: Literal["maximize", "minimize"] = "maximize"

    @model_validator(mode="after")
    def _known(self):
        if self.name not in METRICS:
            raise ValueError(f"metric.name must be one of {list(METRICS)}, got {self.name!r}")
        return self


class Objective(_Strict):
    """objective = win_rate*w + pass_rate*w - aligner_calls*w - latency_s*w (per sample)."""

    win_rate: float = Field(1.0, ge=0, description="Weight of the win rate against the references (misaligned rows).")
    pass_rate: float = Field(1.0, ge=0, description="Weight of the share of rows passing every inspector at the reference thresholds.")
    aligner_calls: float = Field(0.1, ge=0, description="Penalty per aligner call per sample.")
    latency_s: float = Field(0.0, ge=0, description="Penalty per estimated second per sample.")
    reference_thresholds: dict[str, float] | None = Field(
        None, description="'Passing every inspector' is judged at these (default: the bundle's), not at the trial's own.")


class SquadSweep(_Strict):
    """The ``squad:`` section: our settings, stripped before the config goes to W&B."""

    bundle: str = Field("default", description="'default' or a bundle directory.")
    data: str | None = Field(None, description="Eval rows {question, answer, correction?, criterion?}; default: the held-out split.")
    policies: str | None = Field(None, description="Policies folder for the held-out split (default: the repo's).")
    rows: int | None = Field(None, ge=1, description="Use this many rows, evenly spaced over the data.")
    output: str = Field("out/sweep", description="Trials table, pareto.json, plot, W&B runs, Tune storage.")
    objective: Objective = Field(default_factory=Objective)
    max_concurrent_trials: int = Field(1, ge=1, description="Tune trials at once (the evaluator runs one at a time).")
    seed: int = 0


class SweepConfig(BaseModel):
    """A W&B sweep configuration (method, metric, parameters, run_cap, ...) plus a ``squad:`` section."""

    model_config = {"extra": "allow"}  # other W&B keys (program, command, entity, early_terminate) pass through
    name: str = "squad-thresholds"
    project: str = "aligner-squad"
    method: Literal["grid", "random", "bayes"]
    metric: Metric = Field(default_factory=Metric)
    parameters: dict[str, Param]
    run_cap: int | None = Field(None, ge=1)
    squad: SquadSweep = Field(default_factory=SquadSweep)

    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, Param]) -> dict[str, Param]:
        unknown = set(v) - {"thresholds", "max_steps"}
        if unknown:
            raise ValueError(f"unknown {sorted(unknown)}; use thresholds (nested, one per criterion) and max_steps")
        if "thresholds" in v and v["thresholds"].parameters is None:
            raise ValueError("thresholds needs nested `parameters:` with one entry per criterion")
        checks = [(f"thresholds.{c}", p, 0, 1) for c, p in (v["thresholds"].parameters.items() if "thresholds" in v else [])]
        for name, p, lo, hi in checks + ([("max_steps", v["max_steps"], 1, 99)] if "max_steps" in v else []):
            vals = p.values if p.values is not None else [p.value] if p.value is not None else [p.min, p.max]
            if p.parameters is not None or not all(isinstance(x, (int, float)) and lo <= x <= hi for x in vals):
                raise ValueError(f"{name}: every value must be a number in [{lo}, {hi}]")
        return v

    def wandb_dict(self) -> dict:
        d = self.model_dump(exclude={"squad"}, exclude_none=True)
        d["parameters"] = {k: v.model_dump(exclude_none=True) for k, v in self.parameters.items()}
        return d


# ---------------------------------------------------------------------------------------------
# Search space: W&B parameters -> Ray Tune


def _grid_values(name: str, p: Param) -> list:
    if p.values is not None:
        return list(p.values)
    if p.dist == "int_uniform":
        return list(range(int(p.min), int(p.max) + 1))
    if p.dist == "q_uniform" and p.q:
        n = int(round((p.max - p.min) / p.q))
        return [round(p.min + i * p.q, 10) for i in range(n + 1)]
    raise ConfigError(f"parameter {name}: grid search needs values (or int_uniform / q_uniform), not {p.dist}")


def tune_space(params: dict[str, Param], method: str) -> dict:
    """The Tune param_space of a W&B ``parameters`` block (nesting kept)."""
    from ray import tune

    def one(name: str, p: Param):
        if p.parameters is not None:
            return {k: one(f"{name}.{k}", v) for k, v in p.parameters.items()}
        if p.value is not None:
            return p.value
        if method == "grid":
            return tune.grid_search(_grid_values(name, p))
        if p.values is not None:
            return tune.choice(list(p.values))
        lo, hi = p.min, p.max
        return {"uniform": lambda: tune.uniform(lo, hi), "int_uniform": lambda: tune.randint(int(lo), int(hi) + 1),
                "q_uniform": lambda: tune.quniform(lo, hi, p.q or 0.01),
                "log_uniform_values": lambda: tune.loguniform(lo, hi)}[p.dist]()

    return {k: one(k, v) for k, v in params.items()}


def grid_size(params: dict[str, Param]) -> int:
    n = 1
    for name, p in params.items():
        if p.parameters is not None:
            n *= grid_size(p.parameters)
        elif p.value is None:
            n *= len(_grid_values(name, p))
    return n


# ---------------------------------------------------------------------------------------------
# The cache and the trial


def load_rows(s: SquadSweep, criteria: list[str]):
    from squad.data import read_jsonl
    from squad.evaluate import EvalRow, heldout_rows
    from squad.policy import repo_policies_dir

    rows = read_jsonl(s.data, EvalRow) if s.data else heldout_rows(s.policies or repo_policies_dir(), criteria)
    if s.rows and s.rows < len(rows):  # evenly spaced, so every criterion and both kinds of row stay in
        rows = [rows[i * len(rows) // s.rows] for i in range(s.rows)]
    if not rows:
        raise SquadError("no eval rows")
    return rows


@contextlib.contextmanager
def _embedder(fn):
    """Make ``squad.evaluate.evaluate`` use the cached embedder (it builds ``_Embedder()`` per call)."""
    import squad.evaluate as ev

    old = ev._Embedder
    ev._Embedder = lambda: fn
    try:
        yield
    finally:
        ev._Embedder = old


class _Replay:
    """Enough of a ``Squad`` for ``squad.evaluate.evaluate``, every model call memoised."""

    def __init__(self, ev: "Evaluator", policy):
        self.ev, self._policy, self.criteria, self.results = ev, policy, list(ev.squad.criteria), []
        self.inspector = SimpleNamespace(score=ev.inspect)

    def policy(self):
        return self._policy

    def correct_batch(self, pairs):
        from squad.algorithm import run_squad

        out = run_squad([tuple(p) for p in pairs], self.ev.inspect, self.ev.align, self._policy,
                        align_many=self.ev.align_many)
        self.results += out
        return out


class Evaluator:
    """The squad, the eval rows and every cache; ``trial(config)`` scores one point of the search space."""

    def __init__(self, bundle: str, rows: list, criteria: list[str] | None = None,
                 reference: dict[str, float] | None = None, objective: Objective | None = None,
                 threads: int | None = None):
        import torch

        from squad.evaluate import _Embedder
        from squad.sdk import Squad

        if threads:
            torch.set_num_threads(threads)
        self.squad = Squad.load(bundle)
        self.squad.aligner  # load now: trials and timings then measure work, not loading
        self._embed_model = _Embedder()
        self.rows, self.criteria = rows, criteria or self.squad.criteria
        self.reference = reference or {c: self.squad.manifest.criteria[c].policy.threshold for c in self.criteria}
        self.objective = objective or Objective()
        self._scores: dict[tuple, dict] = {}
        self._aligned: dict[tuple, str] = {}
        self._emb: dict[tuple, Any] = {}
        self._ms: dict[tuple, float] = {}  # per-item cost of the real call that filled each entry
        self.counts = {f"{k}_{n}": 0 for k in ("inspector", "aligner", "embedder") for n in ("misses", "batches", "lookups")}
        self.model_s = 0.0

    def ready(self) -> bool:
        return True

    def stats(self) -> dict:
        return {**self.counts, "model_s": round(self.model_s, 3)}

    def _cached(self, kind: str, keys: list[tuple], compute: Callable[[list], Any], store: dict) -> list:
        """Values for ``keys``; the misses go to ``compute`` as one batch, timed per item."""
        misses = list(dict.fromkeys(k for k in keys if k not in store))
        self.counts[f"{kind}_lookups"] += len(keys)
        if misses:
            t0 = time.perf_counter()
            outs = compute(misses)
            dt = time.perf_counter() - t0
            self.model_s += dt
            self.counts[f"{kind}_misses"] += len(misses)
            self.counts[f"{kind}_batches"] += 1
            for k, o in zip(misses, outs):
                store[k] = o
                self._ms[(kind, *k)] = dt * 1000.0 / len(misses)
        return [store[k] for k in keys]

    def inspect(self, pairs: list[tuple[str, str]], criteria: list[str]) -> list[dict[str, float]]:
        every = self.squad.criteria  # score every criterion once; callers get the ones they ask for
        got = self._cached("inspector", [tuple(p) for p in pairs], lambda m: self.squad.inspector.score(m, every),
                           self._scores)
        return [{c: s[c] for c in criteria} for s in got]

    def align(self, criterion: str, pairs: list[tuple[str, str]]) -> list[str]:
        return self.align_many({criterion: pairs})[criterion]

    def align_many(self, groups: dict[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
        """A round's groups through the cache; the misses of every criterion decode as one batch."""
        def compute(misses):
            by: dict[str, list[tuple[str, str]]] = {}
            for c, q, a in misses:
                by.setdefault(c, []).append((q, a))
            outs = {c: iter(v) for c, v in self.squad.aligner.correct_many(by).items()}
            return [next(outs[c]) for c, _, _ in misses]

        keys = [(c, q, a) for c, pairs in groups.items() for q, a in pairs]
        got = iter(self._cached("aligner", keys, compute, self._aligned))
        return {c: [next(got) for _ in pairs] for c, pairs in groups.items()}

    def prefetch(self, low: dict[str, float], high: dict[str, float], max_steps: int,
                 priorities: dict[str, int] | None = None) -> int:
        """Fill the cache with every aligner step some point of the search space can reach, level by
        level, each level one inspector batch and one mixed aligner batch; returns the steps found.

        Thresholds range over [low[c], high[c]]. At a state, criterion c can be picked only if its
        score is under high[c] and every criterion the pick rule puts before it (lower score, then
        priority, then name) can pass, i.e. scores at least its low bound."""
        prio = priorities or {}
        states = [(r.question, r.answer, ()) for r in self.rows]
        found = 0
        for _ in range(max_steps):
            scores = self.inspect([(q, a) for q, a, _ in states], self.criteria)
            groups: dict[str, list[tuple[str, str]]] = {}
            steps = []
            for (q, a, applied), sc in zip(states, scores):
                below = sorted((c for c in self.criteria if c not in applied and sc[c] < high[c]),
                               key=lambda c: (sc[c], prio.get(c, 0), c))
                for c in below:
                    groups.setdefault(c, []).append((q, a))
                    steps.append((q, a, applied, c))
                    if sc[c] < low[c]:  # always flagged once reached: nothing after it can be picked
                        break
            if not steps:
                break
            found += len(steps)
            outs = self.align_many(groups)
            pos = {c: iter(v) for c, v in outs.items()}
            states = []
            for q, a, applied, c in steps:
                new = next(pos[c])
                states.append((q, new if new.strip() else a, applied + (c,)))  # fail-open keeps the answer
        return found

    def embed(self, texts: list[str]):
        import torch

        return torch.stack(self._cached("embedder", [(t,) for t in texts],
                                        lambda m: list(self._embed_model([t for (t,) in m])), self._emb))

    def policy(self, config: dict):
        from squad.sdk import squad_policy

        return squad_policy(self.squad.manifest, self.criteria, config.get("thresholds"), config.get("max_steps"))

    def corrections(self, config: dict) -> list:
        """The replayed Corrections of every row under ``config`` (what ``correct_batch`` would return)."""
        rep = _Replay(self, self.policy(config))
        return rep.correct_batch([(r.question, r.answer) for r in self.rows])

    def _path_ms(self, c) -> float:
        path = [c.original] + [s.answer for s in c.steps]
        ms = sum(self._ms.get(("inspector", c.question, a), 0.0) for a in path)  # scored once per round
        return ms + sum(self._ms.get(("aligner", s.criterion, c.question, prev), 0.0) for s, prev in zip(c.steps, path))

    def trial(self, config: dict) -> dict:
        from squad.evaluate import evaluate

        before = dict(self.counts)
        rep = _Replay(self, self.policy(config))
        with _embedder(self.embed):
            report = evaluate(rep, self.rows, progress=False)
        g = report.get("overall") or next(iter(report.values()))
        res, o = rep.results, self.objective
        m = {"win_rate": g["win_rate"] or 0.0, "aligner_calls": g["aligner_calls_per_item"],
             "pass_rate": statistics.fmean(all(c.scores[k] >= v for k, v in self.reference.items()) for c in res),
             "pass_rate_own": g["pass_rate_after"], "alignment_tax": g["alignment_tax"] or 0.0,
             "latency_ms": statistics.fmean(self._path_ms(c) for c in res)}
        m["quality"] = o.win_rate * m["win_rate"] + o.pass_rate * m["pass_rate"]
        m["objective"] = m["quality"] - o.aligner_calls * m["aligner_calls"] - o.latency_s * m["latency_ms"] / 1000.0
        for k in ("aligner_misses", "inspector_misses"):  # real model calls this trial made
            m[k] = self.counts[k] - before[k]
        return m


# ---------------------------------------------------------------------------------------------
# Backends: W&B agent (online, logged in, reachable) or Ray Tune locally with offline W&B runs


def wandb_reachable(timeout: float = 3.0) -> bool:
    import httpx

    try:
        httpx.get(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"), timeout=timeout)
        return True
    except httpx.HTTPError:
        return False


def choose_backend(force_local: bool = False) -> tuple[str, str]:
    from squad.tracking import logged_in

    mode = os.environ.get("WANDB_MODE")
    if force_local:
        return "local", "--local given"
    if mode in ("offline", "disabled", "dryrun"):
        return "local", f"WANDB_MODE={mode}"
    if not logged_in():
        return "local", "not logged in to W&B (no WANDB_API_KEY or netrc entry)"
    if not wandb_reachable():
        return "local", "W&B is not reachable"
    return "wandb", "logged in and W&B reachable"


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _tune_trial(config: dict, evaluator, project: str, group: str, wandb_dir: str, wandb_mode: str) -> None:
    import ray
    from ray import tune

    from squad.tracking import init_run

    metrics = ray.get(evaluator.trial.remote(config))
    os.environ["WANDB_MODE"] = wandb_mode  # local mode never goes online
    run = init_run(project, tune.get_context().get_trial_name(), wandb_mode, _flat(config), wandb_dir, group)
    if run is not None:
        run.log(metrics)
        run.finish()
    tune.report({**metrics, "wandb_run": run.id if run is not None else None})


def _bayes(seed: int):
    """Tune's Optuna or HyperOpt searcher when either library is installed, else None."""
    import importlib.util

    if importlib.util.find_spec("optuna"):
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=seed)
    if importlib.util.find_spec("hyperopt"):
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=seed)
    return None


def run_local(cfg: SweepConfig, evaluator, out: Path, trials: int | None, log: Callable) -> list[dict]:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search.basic_variant import BasicVariantGenerator

    method, alg = cfg.method, None
    if method == "bayes":
        alg = _bayes(cfg.squad.seed)
        log(f"[sweep] bayes: {type(alg).__name__} through Ray Tune" if alg else
            "[sweep] bayes: neither optuna nor hyperopt is installed, so locally this is random search "
            "(W&B's Bayesian search runs on its server; `pip install optuna` for TPE here)")
    limit = cfg.squad.max_concurrent_trials
    if alg is None:  # grid and random: Tune's own generator, which takes the concurrency limit itself
        alg, limit = BasicVariantGenerator(max_concurrent=limit, random_state=cfg.squad.seed), None
    n = 1 if method == "grid" else trials or cfg.run_cap or 20
    log(f"[sweep] {grid_size(cfg.parameters) if method == 'grid' else n} trials, {method} search")

    class _Progress(tune.Callback):
        def __init__(self, metric: str):
            self.metric = metric

        def __reduce__(self):  # Tune pickles its callbacks: a plain one stands in, the log stays here
            return (tune.Callback, ())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            log(f"[sweep] {trial.trial_id}: {json.dumps(_flat(trial.config))} -> {self.metric} "
                f"{result[self.metric]:.4f}, calls {result['aligner_calls']:.2f}, "
                f"aligner cache misses {result['aligner_misses']}")

    wmode = "disabled" if os.environ.get("WANDB_MODE") == "disabled" else "offline"
    fn = tune.with_parameters(_tune_trial, evaluator=evaluator, project=cfg.project, group=cfg.name,
                              wandb_dir=str((out / "wandb").resolve()), wandb_mode=wmode)
    tuner = tune.Tuner(
        tune.with_resources(fn, {"cpu": 0.01}),  # trials only wait on the evaluator actor
        param_space=tune_space(cfg.parameters, method),
        tune_config=tune.TuneConfig(metric=cfg.metric.name, mode=cfg.metric.goal[:3], num_samples=n,
                                    search_alg=alg, max_concurrent_trials=limit,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=cfg.name, storage_path=str((out / "tune").resolve()), verbose=0,
                                  callbacks=[_Progress(cfg.metric.name), JsonLoggerCallback()]))
    old = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # JSON only: the CSV/TensorBoard ones cost ~0.3 s a trial
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Tune's banner would break `--json` on stdout
            grid = tuner.fit()
    finally:
        if old is None:
            os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
        else:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = old
    if grid.errors:
        raise SquadError(f"{len(grid.errors)} sweep trial(s) failed; first: {grid.errors[0]}")
    return [{"trial": r.metrics["trial_id"], "config": r.config,
             **{k: r.metrics[k] for k in (*METRICS, "aligner_misses", "inspector_misses", "wandb_run")}}
            for r in grid]


def run_agent(cfg: SweepConfig, ev: Evaluator, trials: int | None, log: Callable) -> list[dict]:
    import wandb

    sweep_id = wandb.sweep(cfg.wandb_dict(), project=cfg.project)
    log(f"[sweep] W&B sweep {sweep_id}: running its agent here")
    rows: list[dict] = []

    def one() -> None:
        with wandb.init(project=cfg.project) as run:
            config = copy.deepcopy(dict(run.config))
            m = ev.trial(config)
            run.log(m)
            rows.append({"trial": run.name, "config": config, **m, "wandb_run": run.id})

    wandb.agent(sweep_id, function=one, project=cfg.project, count=trials or cfg.run_cap)
    return rows


# ---------------------------------------------------------------------------------------------
# Results: Pareto front, table, plot


def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices not dominated when minimising x (aligner calls) and maximising y (quality); of equal
    points, the first stands for the rest."""
    pts = list(zip(xs, ys))
    return [i for i, (x, y) in enumerate(pts) if pts.index((x, y)) == i
            and not any(a <= x and b >= y and (a < x or b > y) for a, b in pts)]


def markdown_table(trials: list[dict], criteria: list[str]) -> str:
    head = ["trial", *criteria, "steps", "win", "pass", "calls", "est ms", "objective", "misses", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in trials:
        mark = ("best " if t.get("best") else "") + ("pareto" if t.get("pareto") else "")
        cells = [t["trial"], *(f"{t['thresholds'][c]:.3f}" for c in criteria), str(t["max_steps"]),
                 f"{t['win_rate']:.3f}", f"{t['pass_rate']:.3f}", f"{t['aligner_calls']:.2f}",
                 f"{t['latency_ms']:.0f}", f"{t['objective']:.4f}", str(t["aligner_misses"]), mark.strip()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: Path, xs: list[float], ys: list[float], front: list[int], best: int) -> str:
    """Quality against aligner calls per sample, the Pareto front highlighted; returns the renderer."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _png_plot(path, xs, ys, front, best)
        return "built-in PNG writer; matplotlib draws a fuller plot when installed"
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    ax.scatter(xs, ys, c="0.6", s=25, label="trial")
    f = sorted(front, key=lambda i: xs[i])
    ax.plot([xs[i] for i in f], [ys[i] for i in f], "o-", c="tab:red", label="Pareto front")
    ax.scatter([xs[best]], [ys[best]], marker="*", s=200, c="gold", edgecolors="k", zorder=3, label="chosen")
    ax.set(xlabel="aligner calls per sample", ylabel="quality (weighted win rate + pass rate)",
           title="Threshold sweep: quality against aligner calls")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


_GLYPHS = {"0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
           "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
           "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
           " ": "0" * 15, "A": "010101111101101", "C": "011100100100011", "E": "111100110100111",
           "G": "011100101101011", "I": "111010010010111", "L": "100100100100111", "M": "101111111101101",
           "N": "110101101101101", "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
           "S": "011100010001110", "T": "111010010010010", "U": "101101101101111", "Y": "101101010010010"}


def _png_plot(path: Path, xs: list[float], ys: list[float], front: list[int], best: int,
              w: int = 640, h: int = 480) -> None:
    """A scatter plot as a PNG from numpy and zlib alone: axes, numeric ticks, front in red, best in blue."""
    import numpy as np

    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 24, 56

    def span(v):
        lo, hi = min(v), max(v)
        pad = (hi - lo) * 0.08 or 0.5
        return lo - pad, hi + pad

    (x0, x1), (y0, y1) = span(xs), span(ys)
    px = lambda x: int(left + (x - x0) / (x1 - x0) * (w - left - right))  # noqa: E731
    py = lambda y: int(h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))  # noqa: E731

    def dot(x, y, r, col):
        yy, xx = np.ogrid[:h, :w]
        img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = col

    def text(s, x, y, scale=2):
        for k, ch in enumerate(s):
            bits = _GLYPHS.get(ch, "0" * 15)
            for b, on in enumerate(bits):
                if on == "1":
                    cx, cy = x + (k * 4 + b % 3) * scale, y + (b // 3) * scale
                    img[max(cy, 0):cy + scale, max(cx, 0):cx + scale] = 0

    img[h - bottom, left:w - right] = 0
    img[top:h - bottom + 1, left] = 0
    text("ALIGNER CALLS PER SAMPLE", (w - 24 * 8) // 2, h - 18)
    text("QUALITY", 8, 4)
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * (i + 0.5) / 5, y0 + (y1 - y0) * (i + 0.5) / 5
        img[h - bottom:h - bottom + 6, px(xv)] = 0
        text(f"{xv:.2f}", px(xv) - 18, h - bottom + 10)
        img[py(yv), left - 6:left] = 0
        text(f"{yv:.2f}", 8, py(yv) - 5)
    for x, y in zip(xs, ys):
        dot(px(x), py(y), 4, (150, 150, 150))
    f = sorted(front, key=lambda i: xs[i])
    for a, b in zip(f, f[1:]):
        (ax, ay), (bx, by) = (px(xs[a]), py(ys[a])), (px(xs[b]), py(ys[b]))
        for t in np.linspace(0, 1, 2 * max(abs(bx - ax), abs(by - ay)) + 2):
            img[int(ay + t * (by - ay)), int(ax + t * (bx - ax))] = (220, 40, 40)
    for i in f:
        dot(px(xs[i]), py(ys[i]), 6, (220, 40, 40))
    dot(px(xs[best]), py(ys[best]), 4, (30, 80, 220))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))
    title = b"Title\x00quality (y) against aligner calls per sample (x); red: Pareto front; blue: chosen"
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                           + chunk(b"tEXt", title) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------
# Write-back into squad.yaml (a text edit: comments and layout stay)

_KEY = re.compile(r"^(?P<ind>\s*)(?P<key>[A-Za-z_][\w-]*):(?P<val>[^#]*?)(?P<com>\s+#.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _block_end(lines: list[str], at: int, ind: int) -> int:
    """End (exclusive) of the lines after ``at`` indented deeper than ``ind``, trailing comments left out."""
    end = next((i for i in range(at + 1, len(lines)) if _content(lines[i]) and _indent(lines[i]) <= ind), len(lines))
    while end > at + 1 and not _content(lines[end - 1]):
        end -= 1
    return end


def _set_key(lines: list[str], deployment: str, key: str, value: str) -> None:
    start = next((i for i, ln in enumerate(lines)
                  if re.match(rf"^\s*-\s+name:\s*['\"]?{deployment}['\"]?\s*(#.*)?$", ln)), None)
    if start is None:
        raise SquadError(f"no deployment named {deployment}")
    ind = lines[start].index("name:")
    end = _block_end(lines, start, ind - 1)
    uc = next((i for i in range(start + 1, end) if re.match(rf"^ {{{ind}}}user_config:", lines[i])), None)
    if uc is not None and not re.match(r"^\s*user_config:\s*(#.*)?$", lines[uc]):
        raise SquadError(f"{deployment}'s user_config is written inline; make it a block mapping to write back")
    if uc is None:
        lines.insert(end, " " * ind + "user_config:")
        uc = end
    kids = [i for i in range(uc + 1, _block_end(lines, uc, ind)) if _content(lines[i])]
    child = min((_indent(lines[i]) for i in kids), default=ind + 2)
    at = next((i for i in kids if _indent(lines[i]) == child and (m := _KEY.match(lines[i])) and m["key"] == key), None)
    if at is None:
        lines.insert(uc + 1, " " * child + f"{key}: {value}")
        return
    m = _KEY.match(lines[at])
    if not m["val"].strip():  # a block mapping under the key: replaced by one flow-style line
        del lines[at + 1:_block_end(lines, at, child)]
    lines[at] = f"{m['ind']}{key}: {value}{m['com'] or ''}"


def write_back(path: str | Path, thresholds: dict[str, float], max_steps: int, deployment: str = "SquadIngress") -> str:
    """Set ``thresholds`` and ``max_steps`` in that deployment's user_config (a text edit: comments and
    layout stay); the result must parse to the old config with only those two fields changed."""
    import yaml

    path = Path(path)
    text = path.read_text()
    lines = text.splitlines()
    th = {c: round(float(v), 4) for c, v in thresholds.items()}
    try:
        _set_key(lines, deployment, "thresholds", "{" + ", ".join(f"{c}: {v!r}" for c, v in th.items()) + "}")
        _set_key(lines, deployment, "max_steps", str(int(max_steps)))
    except SquadError as e:
        raise SquadError(f"{path}: {e}") from None
    new = "\n".join(lines) + ("\n" if text.endswith("\n") else "")
    expect = copy.deepcopy(yaml.safe_load(text))
    for app in expect.get("applications") or []:
        dep = next((d for d in app.get("deployments") or [] if d.get("name") == deployment), None)
        if dep is not None:
            dep["user_config"] = {**(dep.get("user_config") or {}), "thresholds": th, "max_steps": int(max_steps)}
            break
    if yaml.safe_load(new) != expect:
        raise SquadError(f"{path}: the edit would change more than {deployment}'s thresholds and max_steps; left as is")
    path.write_text(new)
    return new


# ---------------------------------------------------------------------------------------------
# The whole sweep


@dataclass
class SweepResult:
    trials: list[dict]
    front: list[int]
    best: int
    backend: str
    output: Path
    stats: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    renderer: str = ""


def run_sweep(cfg: SweepConfig, trials: int | None = None, force_local: bool = False,
              log: Callable[[str], None] = print) -> SweepResult:
    """Run the sweep (W&B agent or local Ray Tune), then write the table, pareto.json and the plot."""
    from squad.bundle import read_manifest, resolve_bundle
    from squad.sdk import squad_policy

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
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
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
    renderer = plot(out / "quality_vs_calls.png", xs, ys, front, best)
    secs = {"setup": round(t1 - t0, 2), "sweep": round(time.perf_counter() - t1, 2)}
    return SweepResult(results, front, best, backend, out, stats, secs, renderer)


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
