"""One call per round for every criterion (``align_many``), and ``advance_streaming`` (squad batch
layout=fused) against the round-by-round loop, with the fakes of tests/fakes.py."""
from __future__ import annotations

import pytest

from fakes import FakeAligner, FakeInspector, FakeManyAligner, FakeStream, crits, policy, run

# ---------------------------------------------------------------------------------------------
# align_many: a round's groups answered in one call


def test_align_many_serves_a_round_in_one_call_with_the_same_results():
    pairs = [("q1", "x [a=0.1]"), ("q2", "y [b=0.2]"), ("q3", "z [a=0.3][b=0.1]"), ("q4", "fine")]
    want, _, _ = run(pairs)
    al = FakeManyAligner()
    got, _, _ = run(pairs, aligner=al, align_many=al.many)
    assert [c.answer for c in got] == [c.answer for c in want]
    assert [crits(c) for c in got] == [crits(c) for c in want]
    assert len(al.many_calls) == 1 and set(al.many_calls[0]) == {"a", "b"}  # round 1: a and b together
    assert [c for c, _ in al.calls] == ["a"]  # round 2 has one group: the plain per-criterion call
    first = [c.steps[0] for c in got if c.steps]
    assert len({s.wall_ms for s in first}) == 1  # round 1's steps came from one shared call
    assert all(s.latency_ms == pytest.approx(s.wall_ms / 3) for s in first)  # three pairs shared it


def test_align_many_failure_is_recorded_on_every_group_of_the_round():
    al = FakeManyAligner(fail={"a": RuntimeError("engine down")})
    got, _, _ = run([("q1", "x [a=0.1]"), ("q2", "y [b=0.2]")], aligner=FakeAligner(), align_many=al.many)
    for c in got:
        assert c.steps[0].applied is False and "engine down" in c.steps[0].error


def test_align_many_with_a_wrong_count_is_an_error_not_a_shifted_answer():
    def short(groups):
        return {c: [] for c in groups}

    got, _, _ = run([("q1", "x [a=0.1]"), ("q2", "y [b=0.2]")], align_many=short)
    assert all(c.steps[0].applied is False and "0 answers for 1 pairs" in c.steps[0].error for c in got)


# ---------------------------------------------------------------------------------------------
# advance_streaming (squad batch layout=fused): no rounds, same steps per pair



def stream(pairs, al, pol=None, inspector=None):
    from squad.core.algorithm import PairState, advance_streaming

    states = [PairState(q, a, a, 0.0) for q, a in pairs]
    advance_streaming(states, inspector or FakeInspector(), al, pol or policy(), lambda: 0.0)
    return [st.result() for st in states]


PAIRS = [("q1", "x [a=0.1]"), ("q2", "y [b=0.2]"), ("q3", "z [a=0.3][b=0.1][c=0.2]"), ("q4", "fine"),
         ("q5", "w [c=0.4][a=0.45]")]


@pytest.mark.parametrize("per_call", [1, 2, 5])
def test_streaming_takes_the_same_steps_as_rounds(per_call):
    want, _, _ = run(PAIRS, pol=policy(max_steps=2))
    al = FakeStream(per_call=per_call)
    got = stream(PAIRS, al, pol=policy(max_steps=2))
    for g, w in zip(got, want):
        assert (g.answer, crits(g), g.scores, g.initial_scores) == (w.answer, crits(w), w.scores, w.initial_scores)
    assert len(al.runs) == 1  # every step, first or later, in one engine run
    assert len(al.runs[0]) == sum(len(w.steps) for w in want)


def test_streaming_splits_each_interval_among_the_jobs_in_flight():
    from squad.core.algorithm import PairState, advance_streaming

    t = [0.0]

    def engine(jobs, done):  # both jobs start at 0; one finishes at 100 ms, the other at 150 ms
        first, second = jobs
        t[0] = 0.1
        done([(first[0], first[3] + "<a>")])
        t[0] = 0.15
        done([(second[0], second[3] + "<a>")])

    states = [PairState(q, a, a, 0.0) for q, a in [("q1", "x [a=0.1]"), ("q2", "y [a=0.2]")]]
    advance_streaming(states, FakeInspector(), engine, policy(max_steps=1), lambda: t[0])
    s1, s2 = (st.steps[0] for st in states)
    assert (s1.wall_ms, s1.latency_ms) == (pytest.approx(100.0), pytest.approx(50.0))  # shared with the other job
    assert (s2.wall_ms, s2.latency_ms) == (pytest.approx(150.0), pytest.approx(100.0))  # 50 shared + 50 alone


def test_streaming_rescores_only_the_pairs_that_finished():
    want, _, _ = run(PAIRS)
    ins = FakeInspector()
    stream(PAIRS, FakeStream(per_call=2), inspector=ins)
    assert len(ins.calls[0][0]) == len(PAIRS)  # everyone scored once up front
    rescored = [len(pairs) for pairs, _ in ins.calls[1:]]
    assert rescored and all(n <= 2 for n in rescored)  # then only what just finished (2 per engine call)
    assert sum(rescored) == sum(len(w.steps) for w in want)  # each step's rewrite scored exactly once


def test_streaming_aligner_failure_is_recorded_and_the_pairs_go_on():
    want, _, _ = run(PAIRS, aligner=FakeAligner(fail={"a": RuntimeError("x"), "b": RuntimeError("x"),
                                                      "c": RuntimeError("x")}))
    got = stream(PAIRS, FakeStream(fail_after=0))
    for g, w in zip(got, want):  # a dead engine: every step fails, as in rounds
        assert crits(g) == crits(w) and g.answer == g.original
        assert all(not s.applied and "engine down" in s.error for s in g.steps)
    partly = stream(PAIRS, FakeStream(per_call=1, fail_after=2))
    done_ok = [s for c in partly for s in c.steps if s.applied]
    assert len(done_ok) >= 2 and all(s.error is None for s in done_ok)
    assert any("engine down" in (s.error or "") for c in partly for s in c.steps)


def test_streaming_engine_that_drops_jobs_is_an_error_in_the_trace():
    got = stream(PAIRS[:2], FakeStream(drop=True))
    assert all(c.steps[0].applied is False and "no answer for 2 pairs" in c.steps[0].error for c in got)


def test_streaming_inspector_failure_propagates():
    class Flaky(FakeInspector):
        def __call__(self, pairs, criteria):
            if self.calls:
                raise RuntimeError("inspector down")
            return super().__call__(pairs, criteria)

    with pytest.raises(RuntimeError, match="inspector down"):
        stream(PAIRS, FakeStream(), inspector=Flaky())


def test_aligner_correct_stream_without_a_streaming_engine_runs_rounds():
    """Engines without ``stream_mixed`` (e.g. full fine-tuned models) get correct_many rounds."""
    from squad.aligner.rewriter import Aligner
    from squad.config.policy import Policy

    class Engine:
        tokenizer = None

        def __init__(self):
            self.calls = []

        def generate(self, prompts, adapter, max_new_tokens):
            self.calls.append((adapter, len(prompts)))
            return [f"{adapter}:{p}" for p in prompts]

    eng = Engine()
    pols = {c: Policy(name=c, principle="p", misaligned="m", instruction="i", refusal="r") for c in ("a", "b")}
    al = Aligner(eng, pols)
    al.prompt = lambda c, q, a: a
    seen = []

    def done(finished):
        seen.append(finished)
        return [(10 + k, "b", "q", t) for k, t in finished if k < 2]

    al.correct_stream([(0, "a", "q", "x"), (1, "b", "q", "y")], done)
    assert seen[0] == [(0, "a:x"), (1, "b:y")] and seen[1] == [(10, "b:a:x"), (11, "b:b:y")]
    # Round 1: one generate call per criterion; round 2: both follow-up b jobs in one call.
    assert eng.calls == [("a", 1), ("b", 1), ("b", 2)]
    with pytest.raises(KeyError, match="no aligner for criterion 'zzz'"):
        al.correct_stream([(0, "zzz", "q", "x")], done)
    assert len(eng.calls) == 3  # nothing generated for an unknown criterion
