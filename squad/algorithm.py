"""The squad algorithm: the one implementation that the SDK, Ray Serve and Ray Data all call.

Per pair: score every criterion; while some criterion not yet applied is under its threshold, run
the aligner of the lowest-scoring one (ties: lower policy priority first, then name), then re-score
every criterion on the new answer; stop after ``max_steps`` aligner runs.

It is pure: inspector and aligner calls are injected. Pairs advance in rounds, so a batch costs
one inspector call per round for every pending pair and one aligner call per criterion per round.
A single pair is a batch of one, so ``correct`` and ``correct_batch`` agree by construction.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from squad.correction import Correction, Step

InspectFn = Callable[[list[tuple[str, str]], list[str]], list[dict[str, float]]]
AlignFn = Callable[[str, list[tuple[str, str]]], list[str]]


@dataclass
class SquadPolicy:
    """What the algorithm needs to know about the criteria in play."""

    thresholds: dict[str, float]
    priorities: dict[str, int] = field(default_factory=dict)
    max_steps: int = 3
    fail_closed: dict[str, str] | None = None  # criterion -> refusal text; None = fail-open

    def pick(self, scores: dict[str, float], applied: Sequence[str]) -> str | None:
        """The criterion to apply next, or None when every remaining one passes."""
        below = [c for c, s in scores.items() if c in self.thresholds and c not in applied and s < self.thresholds[c]]
        if not below:
            return None
        return min(below, key=lambda c: (scores[c], self.priorities.get(c, 0), c))


@dataclass
class _State:
    question: str
    original: str
    answer: str
    started: float
    finished: float = 0.0
    initial: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    done: bool = False


def run_squad(pairs: Sequence[tuple[str, str]], inspect: InspectFn, align: AlignFn, policy: SquadPolicy,
              clock: Callable[[], float] = time.perf_counter) -> list[Correction]:
    """Correct every pair; returns one Correction per pair, in order."""
    criteria = list(policy.thresholds)
    start = clock()
    states = [_State(q, a, a, start) for q, a in pairs]
    pending = list(range(len(states)))
    first = True
    while pending:
        scored = list(inspect([(states[i].question, states[i].answer) for i in pending], criteria))
        if len(scored) != len(pending):
            raise RuntimeError(f"inspector returned {len(scored)} score sets for {len(pending)} pairs")
        missing = {c for s in scored for c in criteria if c not in s}
        if missing:
            raise RuntimeError(f"inspector returned no score for {sorted(missing)}")
        groups: dict[str, list[int]] = {}
        for i, s in zip(pending, scored):
            st = states[i]
            st.scores = dict(s)
            if first:
                st.initial = dict(s)
            nxt = None if len(st.applied) >= policy.max_steps else policy.pick(st.scores, st.applied)
            if nxt is None:
                st.done, st.finished = True, clock()
            else:
                groups.setdefault(nxt, []).append(i)
        first = False
        pending = []
        for crit, idx in groups.items():
            _apply(crit, [states[i] for i in idx], align, policy, clock)
            pending += idx  # every changed pair is re-scored on all criteria next round
        pending.sort()
    return [Correction(question=st.question, original=st.original, answer=st.answer,
                       changed=st.answer != st.original, initial_scores=st.initial, scores=st.scores,
                       steps=st.steps, latency_ms=(st.finished - st.started) * 1000.0) for st in states]


def _apply(crit: str, group: list[_State], align: AlignFn, policy: SquadPolicy, clock) -> None:
    t0 = clock()
    error: str | None = None
    try:
        outs = list(align(crit, [(st.question, st.answer) for st in group]))
        if len(outs) != len(group):
            raise RuntimeError(f"aligner returned {len(outs)} answers for {len(group)} pairs")
        bad = [type(o).__name__ for o in outs if not isinstance(o, str)]
        if bad:
            raise TypeError(f"aligner returned non-text answers ({', '.join(sorted(set(bad)))})")
    except Exception as e:  # fail-open (default) or fail-closed; the error goes into the trace
        error = f"{type(e).__name__}: {e}"
        outs = None
    ms = (clock() - t0) * 1000.0
    for k, st in enumerate(group):
        ok = outs is not None and bool(outs[k].strip())
        if ok:
            st.answer = outs[k]
        elif policy.fail_closed is not None:
            st.answer = policy.fail_closed.get(crit, st.answer)
        st.applied.append(crit)
        st.steps.append(Step(criterion=crit, score_before=st.scores[crit], threshold=policy.thresholds[crit],
                             applied=ok, answer=st.answer, latency_ms=ms,
                             error=error if outs is None else (None if ok else "aligner returned an empty answer")))
