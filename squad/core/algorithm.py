"""The squad algorithm: the one implementation that the SDK, Ray Serve and Ray Data all call.

Per pair: score every criterion; while some criterion not yet applied is under its threshold, run
the aligner of the lowest-scoring one (ties: lower policy priority first, then name), then re-score
every criterion on the new answer; stop after ``max_steps`` aligner runs.

It is pure: inspector and aligner calls are injected. Pairs advance in rounds, so a batch costs
one inspector call per round for every pending pair and one aligner call per criterion per round
(or, given ``align_many``, one call per round for all criteria's groups, which a LoRA engine
decodes as one mixed batch).
A single pair is a batch of one, so ``correct`` and ``correct_batch`` agree by construction.
``run_squad`` drives the per-pair steps (``score_pending``, ``apply_round``) in rounds; ``squad batch``
drives the same steps as streaming Ray Data stages.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from squad.core.correction import Correction, Step
from squad.core.grounding import new_specifics
from squad.core.structure import sanitise

InspectFn = Callable[[list[tuple[str, str]], list[str]], list[dict[str, float]]]
AlignFn = Callable[[str, list[tuple[str, str]]], list[str]]
AlignManyFn = Callable[[dict[str, list[tuple[str, str]]]], dict[str, list[str]]]
# align_stream(jobs, done): jobs are (key, criterion, question, answer); done([(key, corrected), ...])
# is called as jobs finish and returns further jobs for the same run (squad.aligner.rewriter.Aligner.correct_stream)
AlignStreamFn = Callable[[list[tuple[int, str, str, str]], Callable[[list[tuple[int, str]]], list]], None]


@dataclass
class SquadPolicy:
    """What the algorithm needs to know about the criteria in play."""

    thresholds: dict[str, float]
    priorities: dict[str, int] = field(default_factory=dict)
    max_steps: int = 3
    fail_closed: dict[str, str] | None = None  # criterion -> refusal text; None = fail-open
    do_no_harm: bool = True  # keep a rewrite only if its criterion passes and nothing that passed fails
    grounded: frozenset[str] = frozenset()  # criteria whose rewrites may add no new numbers or names
    flag_only: frozenset[str] = frozenset()  # criteria scored and guarded but never rewritten for
    may_lower: dict[str, frozenset[str]] = field(default_factory=dict)  # criterion -> criteria its rewrites may break

    def pick(self, scores: dict[str, float], applied: Sequence[str]) -> str | None:
        """The criterion to apply next, or None when every remaining one passes (or is flag-only)."""
        below = [c for c, s in scores.items() if c in self.thresholds and c not in applied and c not in self.flag_only
                 and s < self.thresholds[c]]
        if not below:
            return None
        return min(below, key=lambda c: (scores[c], self.priorities.get(c, 0), c))


@dataclass
class PairState:
    """One pair's progress through the squad; ``next`` is the criterion to apply, once scored."""

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
    next: str | None = None
    candidate: str | None = None  # the last step's rewrite, kept only if its scores pass ``rejection``
    cost_ms: float = 0.0  # this pair's share of every model call so far (Correction.latency_ms)
    sanitised: list[str] = field(default_factory=list)  # what ``sanitise`` removed from the answer

    @classmethod
    def start(cls, question: str, answer: str, now: float) -> "PairState":
        """A fresh pair. Untrusted structure (chat-template markup, role lines, text addressed to the
        system, hidden text, repeated payloads) is removed from the answer before anything scores it,
        so no final answer carries it, rewritten or not; ``original`` keeps the text as it came."""
        clean, found = sanitise(answer)
        return cls(question, answer, clean, now, sanitised=found)

    @property
    def needs_scores(self) -> bool:
        return not self.done and self.next is None

    @property
    def scored_text(self) -> str:
        """What the inspectors score next: the pending rewrite, else the current answer."""
        return self.answer if self.candidate is None else self.candidate

    def to_json(self) -> str:
        return json.dumps({**{k: getattr(self, k) for k in self.__dataclass_fields__ if k != "steps"},
                           "steps": [s.model_dump() for s in self.steps]}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "PairState":
        d = json.loads(text)
        return cls(**{**d, "steps": [Step(**s) for s in d["steps"]]})

    def result(self) -> Correction:
        return Correction(question=self.question, original=self.original, answer=self.answer,
                          changed=self.answer != self.original, initial_scores=self.initial, scores=self.scores,
                          steps=self.steps, latency_ms=self.cost_ms, wall_ms=(self.finished - self.started) * 1000.0,
                          sanitised=self.sanitised)


def check_scores(scored: list[dict[str, float]], n: int, criteria: list[str]) -> list[dict[str, float]]:
    scored = list(scored)
    if len(scored) != n:
        raise RuntimeError(f"inspector returned {len(scored)} score sets for {n} pairs")
    missing = {c for s in scored for c in criteria if c not in s}
    if missing:
        raise RuntimeError(f"inspector returned no score for {sorted(missing)}")
    return scored


def rejection(crit: str, before: dict[str, float], after: dict[str, float], policy: SquadPolicy,
              source: str = "", rewrite: str = "") -> str | None:
    """Do no harm: why a rewrite for ``crit`` must not replace the answer, or None to keep it. It is
    kept only if it adds no new specifics to ``source`` (the question and the replaced answer) where
    ``crit`` is grounded, ``crit`` now passes, and every criterion that passed before still passes
    (but those in ``crit``'s ``may_lower``)."""
    thresholds = policy.thresholds
    if crit in policy.grounded and (new := new_specifics(source, rewrite)):
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        return f"adds specifics that neither the question nor the answer had ({shown})"
    if after[crit] < thresholds[crit]:
        return f"{crit} still under its threshold ({after[crit]:.2f} < {thresholds[crit]:.2f})"
    spared = policy.may_lower.get(crit, frozenset())
    broken = [c for c, t in thresholds.items() if before.get(c, 0.0) >= t and after.get(c, 0.0) < t and c not in spared]
    if broken:
        return "; ".join(f"{c} passed before ({before[c]:.2f}) and fails after ({after[c]:.2f} < {thresholds[c]:.2f})"
                         for c in broken)
    return None


def observe(st: PairState, scores: dict[str, float], policy: SquadPolicy, now: float) -> None:
    """Record fresh scores (of the answer, or of the last step's rewrite, which is kept or rejected
    here); pick the next criterion, or finish the pair."""
    if st.candidate is not None:
        rewrite, st.candidate = st.candidate, None
        step = st.steps[-1]
        step.scores_after = dict(scores)
        step.rejected = (rejection(step.criterion, st.scores, scores, policy, f"{st.question}\n{st.answer}", rewrite)
                         if policy.do_no_harm else None)
        if step.rejected is None:
            st.answer, st.scores = rewrite, dict(scores)
            step.applied, step.answer = True, rewrite
    else:
        st.scores = dict(scores)
    if not st.initial:
        st.initial = dict(scores)
    st.next = None if len(st.applied) >= policy.max_steps else policy.pick(st.scores, st.applied)
    if st.next is None:
        st.done, st.finished = True, now


def group_by_next(states: Sequence[PairState]) -> dict[str, list[PairState]]:
    groups: dict[str, list[PairState]] = {}
    for st in states:
        if not st.done and st.next is not None:
            groups.setdefault(st.next, []).append(st)
    return groups


def run_squad(pairs: Sequence[tuple[str, str]], inspect: InspectFn, align: AlignFn, policy: SquadPolicy,
              clock: Callable[[], float] = time.perf_counter, align_many: AlignManyFn | None = None) -> list[Correction]:
    """Correct every pair; returns one Correction per pair, in order."""
    start = clock()
    states = [PairState.start(q, a, start) for q, a in pairs]
    advance(states, inspect, align, policy, clock, align_many)
    return [st.result() for st in states]


def advance(states: list[PairState], inspect: InspectFn, align: AlignFn, policy: SquadPolicy, clock,
            align_many: AlignManyFn | None = None) -> None:
    """Run rounds until every state is done: score the pending pairs, then one aligner round."""
    while pending := score_pending(states, inspect, policy, clock):  # changed pairs: re-scored on all criteria
        apply_round(group_by_next(pending), align, policy, clock, align_many)


def advance_streaming(states: list[PairState], inspect: InspectFn, align_stream: AlignStreamFn, policy: SquadPolicy,
                      clock) -> None:
    """``advance`` without rounds: a pair whose aligner step finishes is re-scored at once and, if it
    needs another criterion, its next step joins the aligner's running batch instead of waiting for
    the round's slowest pair. Every pair takes the same steps as in ``advance``; only the batching
    differs (the inspector scores the pairs that finished together). An aligner failure is recorded
    on the steps in flight, as ``apply_step`` does; an inspector failure propagates."""
    score_pending(states, inspect, policy, clock)
    while todo := [st for st in states if not st.done and st.next is not None]:
        inflight: dict[int, tuple[PairState, float]] = {}
        share: dict[int, float] = {}  # each job's share of the engine's time: intervals split among the jobs in flight
        last = [clock()]
        keys = itertools.count()

        def tick() -> float:
            now = clock()
            for k in inflight:
                share[k] += (now - last[0]) * 1000.0 / len(inflight)
            last[0] = now
            return now

        def submit(sts: list[PairState]) -> list[tuple[int, str, str, str]]:
            now, jobs = tick(), []
            for st in sts:
                if not st.done and st.next is not None:
                    k = next(keys)
                    inflight[k], share[k] = (st, now), 0.0
                    jobs.append((k, st.next, st.question, st.answer))
            return jobs

        def done(finished: list[tuple[int, str]]) -> list[tuple[int, str, str, str]]:
            now, sts = tick(), []
            for k, text in finished:
                st, t0 = inflight.pop(k)
                apply_step(st.next, [st], lambda _c, _p, t=text: [t], policy, clock,
                           wall_ms=(now - t0) * 1000.0, share_ms=share.pop(k))
                sts.append(st)
            try:
                score_pending(sts, inspect, policy, clock)
            except Exception as e:
                raise _InspectorFailed(e) from e
            return submit(sts)

        try:
            align_stream(submit(todo), done)
            if inflight:
                raise RuntimeError(f"aligner returned no answer for {len(inflight)} pairs")
        except _InspectorFailed as e:
            raise e.error from None
        except Exception as e:  # the steps in flight record the failure; their pairs are re-scored
            def fail(_c, _p, err=e):
                raise err

            for crit, group in group_by_next([st for st, _ in inflight.values()]).items():
                apply_step(crit, group, fail, policy, clock)
            score_pending(states, inspect, policy, clock)


class _InspectorFailed(Exception):
    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def score_pending(states: Sequence[PairState], inspect: InspectFn, policy: SquadPolicy, clock) -> list[PairState]:
    """Score every state waiting for scores in one inspector call, and pick each one's next
    criterion (``observe``); returns the states it scored."""
    pending = [st for st in states if st.needs_scores]
    if pending:
        criteria = list(policy.thresholds)
        t0 = clock()
        scored = check_scores(inspect([(st.question, st.scored_text) for st in pending], criteria), len(pending), criteria)
        now = clock()
        for st, s in zip(pending, scored):
            st.cost_ms += (now - t0) * 1000.0 / len(pending)
            observe(st, s, policy, now)
    return pending


def apply_round(groups: dict[str, list[PairState]], align: AlignFn, policy: SquadPolicy, clock,
                align_many: AlignManyFn | None = None) -> None:
    """Every group's aligner step of one round: one call per criterion, or one ``align_many`` call
    for all of them (each pair's share of it is then the call's time over every group's pairs)."""
    if align_many is None or len(groups) < 2:
        for crit, group in groups.items():
            apply_step(crit, group, align, policy, clock)
        return
    t0 = clock()
    try:
        outs = align_many({c: [(st.question, st.answer) for st in g] for c, g in groups.items()})
        failure = None
    except Exception as e:  # every group's step records it, as apply_step would
        outs, failure = {}, e
    ms = (clock() - t0) * 1000.0
    pairs = sum(len(g) for g in groups.values())

    def shared(crit, _pairs):
        if failure is not None:
            raise failure
        return outs.get(crit, [])

    for crit, group in groups.items():
        apply_step(crit, group, shared, policy, clock, wall_ms=ms, share_ms=ms / pairs)


def apply_step(crit: str, group: list[PairState], align: AlignFn, policy: SquadPolicy, clock,
               wall_ms: float | None = None, share_ms: float | None = None) -> None:
    """Run one criterion's aligner over ``group`` (one call); the pairs then wait for fresh scores.
    Each step records the call's wall time (``wall_ms``, measured here unless given) and the pair's
    share of it (``share_ms``; by default the wall time over the group's pairs)."""
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
    wall = (clock() - t0) * 1000.0 if wall_ms is None else wall_ms
    ms = wall / len(group) if share_ms is None else share_ms
    for k, st in enumerate(group):
        text = sanitise(outs[k])[0] if outs is not None else ""
        ok = bool(text.strip())
        if ok:  # a candidate: ``observe`` keeps or rejects it once it is scored
            st.candidate = text
        elif policy.fail_closed is not None:
            st.answer = policy.fail_closed.get(crit, st.answer)
        st.applied.append(crit)
        st.next = None
        st.cost_ms += ms
        st.steps.append(Step(criterion=crit, score_before=st.scores[crit], threshold=policy.thresholds[crit],
                             applied=False, answer=st.answer, rewrite=text if ok else None, latency_ms=ms, wall_ms=wall,
                             error=error if outs is None else (None if ok else "aligner returned an empty answer")))
