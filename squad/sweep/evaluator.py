"""The sweep's one model holder: every inspector, aligner and embedder call memoised, so each
trial replays ``run_squad`` and ``squad.eval.metrics.evaluate`` from the cache.

The squad's path depends on thresholds only through which aligners fire. Inspector scores are
memoised per (question, answer) and aligner outputs per (criterion, question, answer); the answer
after k steps is fixed by the pair and the aligners applied so far, so this caches each (pair,
sequence of aligners) once: only cache misses reach the models, one batch per round.
"""
from __future__ import annotations

import statistics
import time
from types import SimpleNamespace
from typing import Any, Callable

from squad.errors import SquadError
from squad.sweep.config import Objective, SquadSweep



def load_rows(s: SquadSweep, criteria: list[str]):
    from squad.data.rows import read_jsonl
    from squad.eval.metrics import EvalRow, heldout_rows
    from squad.config.policy import default_policies_dir

    rows = read_jsonl(s.data, EvalRow) if s.data else heldout_rows(s.policies or default_policies_dir(), criteria)
    if s.rows and s.rows < len(rows):  # evenly spaced, so every criterion and both kinds of row stay in
        rows = [rows[i * len(rows) // s.rows] for i in range(s.rows)]
    if not rows:
        raise SquadError("no eval rows")
    return rows


class _Replay:
    """Enough of a ``Squad`` for ``squad.eval.metrics.evaluate``, every model call memoised."""

    def __init__(self, ev: "Evaluator", policy):
        self.ev, self._policy, self.criteria, self.results = ev, policy, list(ev.squad.criteria), []
        self.inspector = SimpleNamespace(score=ev.inspect)

    def policy(self):
        return self._policy

    def correct_batch(self, pairs):
        from squad.core.algorithm import run_squad

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

        from squad.eval.metrics import Embedder
        from squad.sdk.local import Squad

        if threads:
            torch.set_num_threads(threads)
        self.squad = Squad.load(bundle)
        self.squad.aligner  # load now: trials and timings then measure work, not loading
        self._embed_model = Embedder()
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
        priority, then name) can pass, i.e. scores at least its low bound. After a step the answer
        is the rewrite or, where do no harm rejects it, the answer before: both are followed."""
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
                # Kept, or rejected by do no harm (which depends on the thresholds) or failed open:
                # either way the next step starts from one of the two.
                states.append((q, a, applied + (c,)))
                if new.strip() and new != a:
                    states.append((q, new, applied + (c,)))
        return found

    def embed(self, texts: list[str]):
        import torch

        return torch.stack(self._cached("embedder", [(t,) for t in texts],
                                        lambda m: list(self._embed_model([t for (t,) in m])), self._emb))

    def policy(self, config: dict):
        from squad.sdk.local import squad_policy

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
        from squad.eval.metrics import evaluate

        before = dict(self.counts)
        rep = _Replay(self, self.policy(config))
        report = evaluate(rep, self.rows, progress=False, embed=self.embed)
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

