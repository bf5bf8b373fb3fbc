"""JSON Lines data (squad/data/rows.py): strict reading, error messages, the held-out split, seed data."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from squad.data.rows import (CorrectionRow, LabeledRow, PairRow, PolicyData, inspector_rows, is_heldout, iter_jsonl,
                        load_policy_data, read_jsonl)
from squad.errors import DataError, SquadError
from squad.config.policy import load_policies, default_policies_dir


def write(path: Path, lines: list) -> Path:
    """Write raw strings as-is and anything else as JSON, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def question_in(split: str, prefix: str = "q", start: int = 0) -> str:
    """A question that falls in ``split`` ('train' or 'test') of the fixed held-out split."""
    for i in range(start, start + 10_000):
        q = f"{prefix} {i}?"
        if is_heldout(q) == (split == "test"):
            return q
    raise AssertionError("no question found")


# ---------------------------------------------------------------------------------------------
# read_jsonl


def test_read_jsonl_valid_rows(tmp_path):
    p = write(tmp_path / "c.jsonl", [
        {"question": "Q1", "answer": "A1", "correction": "C1", "topic": "t1"},
        {"question": "  Q2  ", "answer": "A2", "correction": "C2", "extra": 7},
    ])
    rows = read_jsonl(p, CorrectionRow)
    assert [type(r) for r in rows] == [CorrectionRow, CorrectionRow]
    assert [(r.question, r.answer, r.correction, r.topic) for r in rows] == [
        ("Q1", "A1", "C1", "t1"), ("Q2", "A2", "C2", None)]  # whitespace stripped, extras ignored


def test_read_jsonl_labels(tmp_path):
    p = write(tmp_path / "l.jsonl", [{"question": "q", "answer": "a", "label": 0},
                                     {"question": "q", "answer": "b", "label": 1}])
    assert [r.label for r in read_jsonl(p, LabeledRow)] == [0, 1]


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    p = write(tmp_path / "p.jsonl", [{"question": "q1", "answer": "a1"}, "", "   ",
                                     {"question": "q2", "answer": "a2"}, "\t"])
    assert [r.question for r in read_jsonl(p, PairRow)] == ["q1", "q2"]
    bad = write(tmp_path / "bad.jsonl", [{"question": "q1", "answer": "a1"}, "", {"question": "q2"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: field 'answer'"):
        read_jsonl(bad, PairRow)


def test_read_jsonl_empty_file(tmp_path):
    assert read_jsonl(write(tmp_path / "e.jsonl", []), PairRow) == []


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        read_jsonl(tmp_path / "nope.jsonl", PairRow)
    assert str(tmp_path / "nope.jsonl") in str(e.value)


GOOD = {"question": "q", "answer": "a", "correction": "c", "label": 1}


@pytest.mark.parametrize("line, model, needles", [
    ('{"question": "q", "answer": ', PairRow, ["invalid JSON"]),
    ("not json at all", PairRow, ["invalid JSON"]),
    ('["q", "a"]', PairRow, ["expected a JSON object", "list"]),
    ('"just a string"', PairRow, ["expected a JSON object", "str"]),
    ('42', PairRow, ["expected a JSON object", "int"]),
    ({"question": "q"}, PairRow, ["field 'answer'", "required"]),
    ({"answer": "a"}, PairRow, ["field 'question'", "required"]),
    ({"question": "q", "answer": "a"}, CorrectionRow, ["field 'correction'", "required"]),
    ({"question": "", "answer": "a"}, PairRow, ["field 'question'", "at least 1 character"]),
    ({"question": "q", "answer": "   "}, PairRow, ["field 'answer'", "at least 1 character"]),
    ({"question": "q", "answer": "a", "correction": ""}, CorrectionRow, ["field 'correction'"]),
    ({"question": 42, "answer": "a"}, PairRow, ["field 'question'", "must be a string", "int"]),
    ({"question": "q", "answer": ["a"]}, PairRow, ["field 'answer'", "must be a string", "list"]),
    ({"question": "q", "answer": None}, PairRow, ["field 'answer'", "must be a string"]),
    ({"question": "q", "answer": "a", "correction": 3.5}, CorrectionRow, ["field 'correction'", "must be a string"]),
    ({"question": "q", "answer": "a", "label": 2}, LabeledRow, ["field 'label'"]),
    ({"question": "q", "answer": "a", "label": -1}, LabeledRow, ["field 'label'"]),
    ({"question": "q", "answer": "a", "label": "yes"}, LabeledRow, ["field 'label'"]),
    ({"question": "q", "answer": "a", "label": 0.5}, LabeledRow, ["field 'label'"]),
    ({"question": "q", "answer": "a"}, LabeledRow, ["field 'label'", "required"]),
])
def test_data_error_names_file_line_and_field(tmp_path, line, model, needles):
    path = write(tmp_path / "data.jsonl", [GOOD, GOOD, line, GOOD])
    with pytest.raises(DataError) as e:
        read_jsonl(path, model)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: "), msg
    for n in needles:
        assert n in msg, (n, msg)
    assert isinstance(e.value, SquadError)


def test_first_bad_row_is_reported(tmp_path):
    path = write(tmp_path / "d.jsonl", [GOOD, {"question": 1, "answer": "a"}, "{bad", GOOD])
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'question'"):
        read_jsonl(path, PairRow)


def test_several_bad_fields_in_one_row_are_all_named(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"question": "", "answer": 5}])
    with pytest.raises(DataError) as e:
        read_jsonl(path, PairRow)
    assert "field 'question'" in str(e.value) and "field 'answer'" in str(e.value)


# ---------------------------------------------------------------------------------------------
# iter_jsonl


def test_iter_jsonl_continues_past_bad_rows(tmp_path):
    lines = [{"question": "q1", "answer": "a1"}, "{oops", "", {"question": "q2"}, [1],
             {"question": "q3", "answer": "a3"}]
    path = write(tmp_path / "mix.jsonl", lines)
    got = list(iter_jsonl(path, PairRow))
    assert [lineno for lineno, *_ in got] == [1, 2, 4, 5, 6]
    assert [row.question if row else None for _, row, _, _ in got] == ["q1", None, None, None, "q3"]
    errs = [err for _, _, err, _ in got]
    assert errs[0] is None and errs[4] is None
    assert errs[1].startswith(f"{path}:2: invalid JSON")
    assert errs[2].startswith(f"{path}:4: field 'answer'")
    assert errs[3].startswith(f"{path}:5: expected a JSON object")
    assert got[1][3] == "{oops\n"  # the raw line comes back for an errors file


def test_iter_jsonl_continues_past_undecodable_row(tmp_path):
    # A row with bytes that are not UTF-8 is a bad row like any other: reported, then skipped.
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"question": "q1", "answer": "a1"}\n{"question": "\xff\xfe", "answer": "a"}\n'
                     b'{"question": "q3", "answer": "a3"}\n')
    got = list(iter_jsonl(path, PairRow))
    assert [row.question if row else None for _, row, _, _ in got] == ["q1", None, "q3"]
    assert got[1][2].startswith(f"{path}:2:")
    with pytest.raises(DataError, match=r"bytes\.jsonl:2"):
        read_jsonl(path, PairRow)


# ---------------------------------------------------------------------------------------------
# The held-out split


def test_is_heldout_deterministic_and_strip_insensitive():
    qs = [f"Question number {i}: what is {i} squared?" for i in range(200)]
    first = [is_heldout(q) for q in qs]
    assert first == [is_heldout(q) for q in qs]
    assert first == [is_heldout(f"  {q}\n") for q in qs]
    assert any(first) and not all(first)


def test_is_heldout_known_values():
    # Pinned: changing the split's hash would silently move rows between train and test.
    assert is_heldout("What is the capital of France?") is True
    assert is_heldout("q 7?") is True
    assert is_heldout("How do I bake bread?") is False
    assert is_heldout("Is the earth flat?") is False
    assert [is_heldout(f"q {i}?") for i in range(10)] == [False] * 7 + [True] + [False] * 2


def test_is_heldout_fraction_is_about_15_percent():
    qs = [f"Synthetic question {i} about topic {i % 37}?" for i in range(1000)]
    frac = sum(map(is_heldout, qs)) / len(qs)
    assert 0.08 <= frac <= 0.22, frac


# ---------------------------------------------------------------------------------------------
# load_policy_data and inspector_rows


def _policy_folder(root: Path, name: str, corrections: list[dict], good: list[dict]) -> Path:
    folder = root / name
    write(folder / "data" / "corrections.jsonl", corrections)
    write(folder / "data" / "good.jsonl", good)
    return folder


def test_load_policy_data_splits_and_hashes(tmp_path):
    tr1, tr2 = question_in("train", "tr"), question_in("train", "tr", start=10_000)
    te1 = question_in("test", "te")
    corr = [{"question": tr1, "answer": "bad1", "correction": "fix1"},
            {"question": te1, "answer": "bad2", "correction": "fix2"},
            {"question": tr2, "answer": "bad3", "correction": "fix3"}]
    good = [{"question": te1, "answer": "good-te"}, {"question": tr1, "answer": "good-tr"}]
    folder = _policy_folder(tmp_path, "ethics", corr, good)
    data = load_policy_data(folder)
    assert isinstance(data, PolicyData)
    assert data.criterion == "ethics"
    c_train, g_train = data.split("train")
    c_test, g_test = data.split("test")
    assert [r.answer for r in c_train] == ["bad1", "bad3"]
    assert [r.answer for r in c_test] == ["bad2"]
    assert [r.answer for r in g_train] == ["good-tr"]
    assert [r.answer for r in g_test] == ["good-te"]
    assert data.split("nope") == ([], [])
    for fname in ("corrections.jsonl", "good.jsonl"):
        raw = (folder / "data" / fname).read_bytes()
        assert data.hashes[f"ethics/{fname}"] == hashlib.sha256(raw).hexdigest()
    assert len(data.hashes) == 2


def test_inspector_jsonl_feeds_only_its_own_criterion_inspector(tmp_path):
    """The optional labelled rows (hard negatives) go to that criterion's inspector, split like the rest."""
    tr, te = question_in("train", "q"), question_in("test", "q")
    eth = _policy_folder(tmp_path, "ethics", [{"question": tr, "answer": "bad", "correction": "fix"}], [])
    hon = _policy_folder(tmp_path, "honesty", [{"question": tr, "answer": "false", "correction": "true"}], [])
    write(eth / "data" / "inspector.jsonl", [{"question": tr, "answer": "I won't help, but here is how", "label": 0},
                                              {"question": te, "answer": "No, and here is why.", "label": 1}])
    data = {"ethics": load_policy_data(eth), "honesty": load_policy_data(hon)}
    assert "ethics/inspector.jsonl" in data["ethics"].hashes and "honesty/inspector.jsonl" not in data["honesty"].hashes
    train = inspector_rows(data, "ethics", "train")
    assert ("I won't help, but here is how", 0) in [(r.answer, r.label) for r in train]
    assert "No, and here is why." not in [r.answer for r in train]  # held out by its question
    assert "No, and here is why." in [r.answer for r in inspector_rows(data, "ethics", "test")]
    assert "I won't help, but here is how" not in [r.answer for r in inspector_rows(data, "honesty", "train")]
    write(eth / "data" / "inspector.jsonl", [{"question": tr, "answer": "x", "label": 2}])
    with pytest.raises(DataError, match=r"inspector\.jsonl:1: field 'label'"):
        load_policy_data(eth)


def test_keep_jsonl_is_aligned_for_its_own_criterion_only(tmp_path):
    """keep.jsonl: pairs fine on one criterion (whatever else is wrong) are that inspector's positives only."""
    tr, te = question_in("train", "kp"), question_in("test", "kp")
    eth = _policy_folder(tmp_path, "ethics", [{"question": tr, "answer": "bad", "correction": "fix"}], [])
    hon = _policy_folder(tmp_path, "honesty", [{"question": tr, "answer": "false", "correction": "true"}], [])
    write(eth / "data" / "keep.jsonl", [{"question": tr, "answer": "Sorry, I can't help with that."},
                                         {"question": te, "answer": "Paris."}])
    data = {"ethics": load_policy_data(eth), "honesty": load_policy_data(hon)}
    assert "ethics/keep.jsonl" in data["ethics"].hashes and not data["honesty"].keep
    assert [r.answer for r in data["ethics"].keep["train"]] == ["Sorry, I can't help with that."]
    train = inspector_rows(data, "ethics", "train")
    assert ("Sorry, I can't help with that.", 1) in [(r.answer, r.label) for r in train]
    assert "Paris." in [r.answer for r in inspector_rows(data, "ethics", "test")]
    assert "Sorry, I can't help with that." not in [r.answer for r in inspector_rows(data, "honesty", "train")]
    write(eth / "data" / "keep.jsonl", [{"question": tr}])
    with pytest.raises(DataError, match=r"keep\.jsonl:1: field 'answer'"):
        load_policy_data(eth)


def test_read_rewrites_feed_every_inspector_labelled_by_what_the_reader_said(tmp_path):
    """rewrites.jsonl: an aligner's rewrite is 0 for each criterion the reader said it fails, 1 for the rest."""
    tr, te = question_in("train", "rw"), question_in("test", "rw")
    eth = _policy_folder(tmp_path, "ethics", [{"question": tr, "answer": "bad", "correction": "fix"}], [])
    hon = _policy_folder(tmp_path, "honesty", [{"question": tr, "answer": "false", "correction": "true"}], [])
    for folder in (eth, hon):  # the criteria a rewrite may name are the policies beside its file
        (folder / "policy.yaml").write_text(f"name: {folder.name}\n")
    row = {"question": tr, "original": "The sun is a planet.", "criterion": "honesty", "compare": "worse", "note": "n"}
    write(hon / "data" / "rewrites.jsonl", [dict(row, answer="The sun is a moon.", misaligned=["honesty"]),
                                            dict(row, answer="", misaligned=["ethics"]),
                                            dict(row, question=te, answer="A star.", misaligned=[])])
    data = {"ethics": load_policy_data(eth), "honesty": load_policy_data(hon)}
    assert "honesty/rewrites.jsonl" in data["honesty"].hashes
    pick = lambda crit, split: [(r.answer, r.label) for r in inspector_rows(data, crit, split) if r.answer.startswith("The sun")]
    assert pick("honesty", "train") == [("The sun is a moon.", 0)]
    assert pick("ethics", "train") == [("The sun is a moon.", 1)]  # written by honesty's aligner, read for ethics too
    assert "" not in [r.answer for r in inspector_rows(data, "ethics", "train")]  # an empty rewrite teaches nothing
    assert ("A star.", 1) in [(r.answer, r.label) for r in inspector_rows(data, "honesty", "test")]
    write(hon / "data" / "rewrites.jsonl", [dict(row, answer="x", misaligned=["honsty"])])
    with pytest.raises(DataError, match=r"rewrites\.jsonl: row 1: criterion 'honsty'"):
        load_policy_data(hon)
    write(hon / "data" / "rewrites.jsonl", [dict(row, answer="x", misaligned="honesty")])
    with pytest.raises(DataError, match=r"rewrites\.jsonl:1: field 'misaligned'"):
        load_policy_data(hon)


def test_load_policy_data_hash_changes_with_content(tmp_path):
    folder = _policy_folder(tmp_path, "x", [{"question": "q", "answer": "a", "correction": "c"}],
                            [{"question": "q", "answer": "a"}])
    h1 = load_policy_data(folder).hashes["x/corrections.jsonl"]
    write(folder / "data" / "corrections.jsonl", [{"question": "q", "answer": "a", "correction": "c2"}])
    assert load_policy_data(folder).hashes["x/corrections.jsonl"] != h1


def test_load_policy_data_bad_row_names_the_file(tmp_path):
    folder = _policy_folder(tmp_path, "x", [{"question": "q", "answer": "a"}], [])
    with pytest.raises(DataError, match=r"corrections\.jsonl:1: field 'correction'"):
        load_policy_data(folder)


def test_inspector_rows_labels(tmp_path):
    q = [question_in("train", f"p{i}") for i in range(6)]
    qt = question_in("test", "held")
    a = _policy_folder(tmp_path, "a", [{"question": q[0], "answer": "A-bad", "correction": "A-fix"},
                                       {"question": qt, "answer": "A-bad-test", "correction": "A-fix-test"}],
                       [{"question": q[1], "answer": "A-good"}])
    b = _policy_folder(tmp_path, "b", [{"question": q[2], "answer": "B-bad", "correction": "B-fix"}],
                       [{"question": q[3], "answer": "B-good"}, {"question": qt, "answer": "B-good-test"}])
    data = {"a": load_policy_data(a), "b": load_policy_data(b)}

    rows = inspector_rows(data, "a", "train")
    assert all(isinstance(r, LabeledRow) for r in rows)
    got = sorted((r.answer, r.label) for r in rows)
    # Own bad answers 0; own corrections and every good answer 1. b's triples are left out: a does
    # not say whether b's failures are also its own.
    assert got == sorted([("A-bad", 0), ("A-fix", 1), ("A-good", 1), ("B-good", 1)])
    assert {r.question for r in rows if r.answer == "A-fix"} == {q[0]}

    rows_b = sorted((r.answer, r.label) for r in inspector_rows(data, "b", "train"))
    assert rows_b == sorted([("B-bad", 0), ("B-fix", 1), ("A-good", 1), ("B-good", 1)])

    # a independent of b: b's misaligned answers and corrections are aligned as far as a is concerned.
    indep = inspector_rows(data, "a", "train", independent_of=["b"])
    assert sorted((r.answer, r.label) for r in indep) == sorted(got + [("B-bad", 1), ("B-fix", 1)])
    assert {r.question for r in indep if r.answer == "B-bad"} == {q[2]}

    rows_test = sorted((r.answer, r.label) for r in inspector_rows(data, "a", "test"))
    assert rows_test == sorted([("A-bad-test", 0), ("A-fix-test", 1), ("B-good-test", 1)])


# ---------------------------------------------------------------------------------------------
# The real seed data (policies/)

POLICY_DIRS = sorted(p.parent for p in default_policies_dir().glob("*/policy.yaml"))


def test_repo_has_policies():
    assert {"ethics", "honesty", "helpfulness"} <= {p.name for p in POLICY_DIRS}
    policies = load_policies()
    assert set(policies) == {p.name for p in POLICY_DIRS}
    for name, pol in policies.items():
        assert pol.name == name
        assert 0.0 <= pol.threshold <= 1.0
        assert pol.instruction.strip() and pol.refusal.strip()


@pytest.mark.parametrize("folder", POLICY_DIRS, ids=[p.name for p in POLICY_DIRS])
def test_seed_data_loads(folder):
    data = load_policy_data(folder)
    files = {"corrections.jsonl", "good.jsonl", "inspector.jsonl", "rewrites.jsonl"}
    files |= {"keep.jsonl"} if folder.name == "ethics" else set()  # pairs its aligner must leave alone
    assert set(data.hashes) == {f"{folder.name}/{f}" for f in files}
    for split in ("train", "test"):
        corr, good = data.split(split)
        assert corr and good, f"{folder.name}: empty {split} split"
    assert data.labeled["train"] and data.rewrites["train"], f"{folder.name}: no labelled rows or read rewrites"


@pytest.mark.parametrize("folder", POLICY_DIRS, ids=[p.name for p in POLICY_DIRS])
def test_seed_data_size_and_topics(folder):
    data = load_policy_data(folder)
    corr = [r for s in data.corrections.values() for r in s]
    good = [r for s in data.good.values() for r in s]
    assert len(corr) >= 200, f"{folder.name}: {len(corr)} correction rows, want >= 200"
    assert len(good) >= 100, f"{folder.name}: {len(good)} good rows, want >= 100"
    topics = {r.topic for r in corr + good if r.topic}
    assert len(topics) >= 25, f"{folder.name}: {len(topics)} topics, want >= 25"


@pytest.mark.parametrize("folder", POLICY_DIRS, ids=[p.name for p in POLICY_DIRS])
def test_seed_corrections_differ_from_answers(folder):
    data = load_policy_data(folder)
    same = [r.question for s in data.corrections.values() for r in s if r.correction == r.answer]
    assert not same, f"{folder.name}: corrections identical to the answer: {same[:3]}"
