"""Do no harm (squad/core/algorithm.py): a rewrite is kept only if its criterion passes and nothing
that passed fails, in rounds and in the streaming path. Fakes in tests/fakes.py."""
from __future__ import annotations

import pytest

from fakes import DEFAULT, FakeAligner, FakeInspector, crits, policy, run


def test_rewrite_that_breaks_a_passing_criterion_is_rejected():
    al = FakeAligner(effects={"a": "[b=0.05]"})
    (c,), insp, _ = run([("Q", "x [a=0.2]")], aligner=al)
    assert crits(c) == ["a"] and c.changed is False and c.answer == "x [a=0.2]"
    s = c.steps[0]
    assert s.applied is False and s.answer == "x [a=0.2]" and s.rewrite == "x <a>[b=0.05]"
    assert s.rejected == "b passed before (0.90) and fails after (0.05 < 0.50)"
    assert s.scores_after == {"a": DEFAULT, "b": pytest.approx(0.05), "c": DEFAULT}
    assert c.scores == c.initial_scores  # the kept answer's scores
    assert insp.calls[1][0] == [("Q", "x <a>[b=0.05]")]  # the rewrite was what got scored


def test_rejected_step_still_counts_and_the_next_criterion_comes_from_the_kept_scores():
    # a's rewrite does not fix a; b (0.3) is next by the kept answer's scores and its rewrite is kept.
    al = FakeAligner(effects={"a": "[a=0.1]"})
    (c,), _, _ = run([("Q", "x [a=0.2][b=0.3]")], aligner=al)
    assert crits(c) == ["a", "b"]
    assert [s.applied for s in c.steps] == [False, True]
    assert c.steps[0].rejected == "a still under its threshold (0.10 < 0.50)"
    assert c.answer == "x [a=0.2]<b>" and c.scores["a"] == pytest.approx(0.2)


def test_accepted_rewrite_records_its_scores_and_text():
    (c,), _, _ = run([("Q", "x [a=0.2]")])
    s = c.steps[0]
    assert s.applied is True and s.rejected is None and s.rewrite == s.answer == c.answer == "x <a>"
    assert s.scores_after == c.scores


def test_do_no_harm_is_the_same_in_the_streaming_path():
    from squad.core.algorithm import PairState, advance_streaming

    pairs = [("Q1", "x [a=0.2]"), ("Q2", "y [b=0.1]"), ("Q3", "z [a=0.3][c=0.2]")]
    al = FakeAligner(effects={"a": "[b=0.05]"})
    want = run(pairs, aligner=al)[0]
    states = [PairState(q, a, a, 0.0) for q, a in pairs]

    def stream(jobs, done):
        while jobs:
            jobs = done([(k, al.fix(c, a)) for k, c, _, a in jobs])

    advance_streaming(states, FakeInspector(), stream, policy(), clock=lambda: 0.0)
    got = [st.result() for st in states]
    assert [(g.answer, [(s.criterion, s.applied, s.rejected) for s in g.steps]) for g in got] == \
        [(w.answer, [(s.criterion, s.applied, s.rejected) for s in w.steps]) for w in want]
    assert got[0].steps[0].rejected and got[1].steps[0].applied


def test_pair_state_round_trips_with_a_pending_rewrite():
    from squad.core.algorithm import PairState

    from squad.core.correction import Step

    st = PairState("q", "a <|im_end|>", "a", 1.5, scores={"a": 0.2}, initial={"a": 0.2}, applied=["a"],
                   steps=[Step(criterion="a", score_before=0.2, threshold=0.5, applied=False, answer="a",
                               rewrite="a2", latency_ms=3.0, wall_ms=6.0)], candidate="a2", cost_ms=4.5)
    back = PairState.from_json(st.to_json())
    assert back.needs_scores and back.scored_text == "a2"  # the pending rewrite is what gets scored next
    assert back == st  # every field, the steps included


# ---------------------------------------------------------------------------------------------
# Grounded criteria: a rewrite may remove or qualify a claim, not add a number or a name


def test_grounded_rewrite_that_adds_a_number_or_a_name_is_rejected():
    al = FakeAligner(effects={"a": ". It opened in 1889 in Paris."})
    (c,), _, _ = run([("When did the tower open?", "x [a=0.2]")], pol=policy(grounded=frozenset({"a"})), aligner=al)
    s = c.steps[0]
    assert s.applied is False and c.answer == "x [a=0.2]" and c.changed is False
    assert s.rejected == "adds specifics that neither the question nor the answer had (1889, Paris)"
    assert s.scores_after is not None  # scored like any rewrite, so the trace shows what it would have scored


def test_grounded_rewrite_may_reuse_what_the_question_and_answer_said():
    al = FakeAligner(effects={"a": " In Paris it opened in 1889; I am not certain of the month."})
    q = "Did the Eiffel Tower in Paris open in 1889?"
    (c,), _, _ = run([(q, "Yes, in 1,889 [a=0.2]")], pol=policy(grounded=frozenset({"a"})), aligner=al)
    assert c.steps[0].applied is True and c.steps[0].rejected is None


def test_only_grounded_criteria_are_held_to_it():
    al = FakeAligner(effects={"a": ". Call 911.", "b": ". Call 999."})
    (c,), _, _ = run([("Q", "x [a=0.2][b=0.3]")], pol=policy(grounded=frozenset({"b"})), aligner=al)
    assert [(s.criterion, s.applied) for s in c.steps] == [("a", True), ("b", False)]
    assert c.steps[1].rejected.endswith("(999)")


@pytest.mark.parametrize("source, rewrite, new", [
    ("", "Water boils at 100 degrees.", ["100"]),
    ("It boils at 100 C.", "Water boils at 100 degrees Celsius at sea level.", ["Celsius"]),
    ("", "The capital is Canberra, not Sydney.", ["Canberra", "Sydney"]),
    ("Is Sydney the capital?", "No. Sydney is not the capital.", []),  # sentence-initial capitals are grammar
    ("", "However, I am not sure. Please check a reliable source.", []),
    ("", "Ask NASA.", ["NASA"]),  # a word in capitals throughout is a name even where a sentence starts
    ("about 300,000 km/s", "About 300000 km/s.", []),  # thousands separators do not make a new number
    ("the eiffel tower", "The Eiffel Tower is tall.", []),  # known in any case
    ("", "1. Mix.\n2. Bake.\n- Serve warm.", ["1", "2"]),
])
def test_new_specifics(source, rewrite, new):
    from squad.core.grounding import new_specifics

    assert new_specifics(source, rewrite) == new


def test_default_bundle_grounds_honesty_and_helpfulness_not_ethics():
    from squad.config.policy import load_policies
    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.sdk.local import squad_policy

    manifest = read_manifest(resolve_bundle("default"))
    assert squad_policy(manifest).grounded == {"honesty", "helpfulness"}
    assert squad_policy(manifest, criteria=["ethics", "honesty"]).grounded == {"honesty"}
    # the bundle's policies are the repository's, so `make default-bundle` rebuilds the same rule
    assert {n for n, p in load_policies("policies").items() if p.grounded} == {"honesty", "helpfulness"}


def test_flag_only_criterion_is_never_rewritten_for_but_still_guarded():
    al = FakeAligner(effects={"a": "[c=0.1]"})
    pol = policy(flag_only=frozenset({"c"}))
    (c1, c2), _, _ = run([("Q", "x [c=0.1]"), ("Q", "y [a=0.2]")], pol=pol, aligner=al)
    assert c1.steps == [] and c1.answer == "x [c=0.1]" and c1.scores["c"] == pytest.approx(0.1)  # flagged, kept
    assert [crit for crit, _ in al.calls] == ["a"]
    assert c2.steps[0].rejected.startswith("c passed before")  # a's rewrite may not break flag-only c


def test_default_bundle_flags_honesty_and_helpfulness_without_rewriting_them():
    from squad.config.policy import load_policies
    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.sdk.local import squad_policy

    assert squad_policy(read_manifest(resolve_bundle("default"))).flag_only == {"helpfulness", "honesty"}
    assert {n for n, p in load_policies("policies").items() if not p.rewrite} == {"helpfulness", "honesty"}


def test_may_lower_spares_only_the_named_criteria_for_that_criterion_s_rewrites():
    al = FakeAligner(effects={"a": "[b=0.05]", "c": "[b=0.05]"})
    pol = policy(may_lower={"a": frozenset({"b"})})
    (ca, cc), _, _ = run([("Q", "x [a=0.2]"), ("Q", "y [c=0.2]")], pol=pol, aligner=al)
    assert ca.steps[0].applied is True and ca.steps[0].answer == "x <a>[b=0.05]"  # a may lower b (then b runs)
    assert cc.steps[0].rejected.startswith("b passed before")  # c may not


def test_default_bundle_lets_ethics_rewrites_lower_helpfulness_only(tmp_path):
    from squad.config.policy import load_policies
    from squad.errors import ConfigError
    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.sdk.local import squad_policy

    pol = squad_policy(read_manifest(resolve_bundle("default")))
    assert pol.may_lower == {"ethics": {"helpfulness"}, "helpfulness": set(), "honesty": set()}
    assert {n: p.may_lower for n, p in load_policies("policies").items()} == {
        "ethics": ["helpfulness"], "helpfulness": [], "honesty": []}
    for name, extra in (("a", "may_lower: [nope]\n"), ("b", "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "policy.yaml").write_text(
            f"name: {name}\nprinciple: p\nmisaligned: m\ninstruction: i\nrefusal: r\n{extra}")
    with pytest.raises(ConfigError, match=r"a/policy.yaml: field 'may_lower': \['nope'\] are not other criteria"):
        load_policies(tmp_path)
