"""Deterministic fakes for the squad algorithm's tests (test_algorithm, test_do_no_harm, test_streaming).

The fake inspector reads markers in the answer text: ``[c=0.20]`` makes criterion ``c`` score 0.20;
a criterion without a marker scores ``DEFAULT`` (passing). The fake aligner for ``c`` removes every
``[c=...]`` marker and appends ``<c>``; tests can add extra per-criterion effects (e.g. fixing one
criterion breaks another) or make it fail.
"""
from __future__ import annotations

import re

from squad.core.algorithm import SquadPolicy, run_squad
from squad.core.correction import Correction

DEFAULT = 0.9
MARK = re.compile(r"\[(\w+)=([0-9.]+)\]")


class FakeInspector:
    def __init__(self):
        self.calls: list[tuple[list[tuple[str, str]], list[str]]] = []

    @staticmethod
    def score_one(answer: str, criteria: list[str]) -> dict[str, float]:
        found = {c: float(v) for c, v in MARK.findall(answer)}
        return {c: found.get(c, DEFAULT) for c in criteria}

    def __call__(self, pairs, criteria):
        self.calls.append((list(pairs), list(criteria)))
        return [self.score_one(a, criteria) for _, a in pairs]


class FakeAligner:
    def __init__(self, effects: dict[str, str] | None = None, fail: dict[str, Exception] | None = None):
        self.effects = effects or {}  # criterion -> text appended on top of the fix
        self.fail = fail or {}
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    def fix(self, criterion: str, answer: str) -> str:
        fixed = re.sub(r"\[" + re.escape(criterion) + r"=[0-9.]+\]", "", answer)
        return fixed + f"<{criterion}>" + self.effects.get(criterion, "")

    def __call__(self, criterion, pairs):
        self.calls.append((criterion, list(pairs)))
        if criterion in self.fail:
            raise self.fail[criterion]
        return [self.fix(criterion, a) for _, a in pairs]


def policy(thresholds=None, **kw) -> SquadPolicy:
    return SquadPolicy(thresholds=thresholds or {"a": 0.5, "b": 0.5, "c": 0.5}, **kw)


def run(pairs, pol=None, inspector=None, aligner=None, **kw):
    inspector = inspector or FakeInspector()
    aligner = aligner or FakeAligner()
    out = run_squad(pairs, inspector, aligner, pol or policy(), **kw)
    return out, inspector, aligner


def crits(c: Correction) -> list[str]:
    return [s.criterion for s in c.steps]


class FakeManyAligner(FakeAligner):
    """Also answers all of a round's groups in one call, as a LoRA engine's mixed batch does."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.many_calls: list[dict] = []

    def many(self, groups):
        self.many_calls.append({c: list(p) for c, p in groups.items()})
        for c in groups:
            if c in self.fail:
                raise self.fail[c]
        return {c: [self.fix(c, a) for _, a in pairs] for c, pairs in groups.items()}


class FakeStream(FakeAligner):
    """An engine that finishes jobs in a scripted order, a few at a time, and takes the jobs that
    ``done`` returns into the same run; ``fail_after`` makes it raise once that many jobs finished."""

    def __init__(self, per_call: int = 2, fail_after: int | None = None, drop: bool = False, **kw):
        super().__init__(**kw)
        self.per_call, self.fail_after, self.drop = per_call, fail_after, drop
        self.runs: list[list[tuple[int, str]]] = []  # per run: (key, criterion) in finishing order

    def __call__(self, jobs, done):
        queue, finished = list(jobs), []
        self.runs.append([])
        while queue:
            if self.fail_after is not None and len(finished) >= self.fail_after:
                raise RuntimeError("engine down")
            batch, queue = queue[:self.per_call], queue[self.per_call:]
            if self.drop:
                return  # a broken engine: returns without answering
            self.runs[-1] += [(k, c) for k, c, _, _ in batch]
            finished += batch
            queue += done([(k, self.fix(c, a)) for k, c, _, a in batch])

