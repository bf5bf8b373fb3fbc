"""The ``squad`` command line (squad/cli/main.py): help, argument errors, and correct on a fake squad."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from squad.cli.main import build_parser, main
from squad.core.correction import Correction

ROOT = Path(__file__).resolve().parent.parent


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse (--help, usage errors)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def subcommands() -> list[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


# ---------------------------------------------------------------------------------------------
# Help


def test_top_level_help(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    assert out.startswith("usage: squad")
    for cmd in subcommands():
        assert cmd in out


def test_known_subcommands_present():
    assert {"correct", "train", "eval"} <= set(subcommands())


@pytest.mark.parametrize("cmd", subcommands())
def test_subcommand_help(cmd, capsys):
    code, out, _ = run_cli([cmd, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: squad {cmd}")


def test_correct_help_lists_the_interface(capsys):
    _, out, _ = run_cli(["correct", "--help"], capsys)
    for flag in ("--question", "--answer", "--input", "--output", "--bundle", "--threshold", "--json"):
        assert flag in out


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run_cli([], capsys)
    assert code == 2 and "usage: squad" in err


def test_unknown_command_is_a_usage_error(capsys):
    code, _, err = run_cli(["frobnicate"], capsys)
    assert code == 2 and "invalid choice" in err


# ---------------------------------------------------------------------------------------------
# A fake squad: the real Squad class and policies, fake inspector/aligner (markers in the text)

MARK = re.compile(r"\[(\w+)=([0-9.]+)\]")


class FakeInspector:
    def score(self, pairs, criteria):
        out = []
        for _, a in pairs:
            found = {c: float(v) for c, v in MARK.findall(a)}
            out.append({c: found.get(c, 0.9) for c in criteria})
        return out


class FakeAligner:
    def correct(self, criterion, pairs):
        return [re.sub(r"\[" + criterion + r"=[0-9.]+\]", "", a) + f"<{criterion}>" for _, a in pairs]


@pytest.fixture
def fake_squad(monkeypatch):
    from squad.models.bundle import AlignerSpec, CriterionEntry, InspectorSpec, Manifest
    from squad.config.policy import load_policies
    from squad.sdk.local import Squad

    policies = load_policies(ROOT / "policies")  # every criterion rewriting, as in the tiny test bundle
    manifest = Manifest(criteria={c: CriterionEntry(policy=p.model_copy(update={"rewrite": True}), aligner=f"aligner/{c}")
                                  for c, p in policies.items()},
                        aligner=AlignerSpec(base="none"), inspector=InspectorSpec(base="none"))
    loads = []

    def load(bundle="default", device="cpu", fail_closed=False, engine="auto"):
        loads.append(bundle)
        return Squad(Path("."), manifest, FakeInspector(), aligner=FakeAligner())

    monkeypatch.setattr(Squad, "load", staticmethod(load))
    return loads


# ---------------------------------------------------------------------------------------------
# squad correct: argument errors


@pytest.mark.parametrize("bad", ["ethics", "ethics=", "ethics=high", "ethics:0.4", "=", "ethics=0.4=0.5"])
def test_bad_threshold_format(bad, fake_squad, capsys):
    code, out, err = run_cli(["correct", "-q", "Q", "-a", "A", "--threshold", bad], capsys)
    assert code == 2
    assert f"--threshold {bad!r}" in err and "CRITERION=VALUE" in err
    assert err.startswith("squad correct: error:")
    assert out == ""


def test_threshold_out_of_range(fake_squad, capsys):
    code, _, err = run_cli(["correct", "-q", "Q", "-a", "A", "--threshold", "ethics=1.5"], capsys)
    assert code == 2 and "must be in [0, 1]" in err


def test_threshold_unknown_criterion(fake_squad, capsys):
    code, _, err = run_cli(["correct", "-q", "Q", "-a", "A", "--threshold", "toxicity=0.5"], capsys)
    assert code == 2 and "unknown criterion 'toxicity'" in err


def test_bad_threshold_reported_before_loading_a_bundle(tmp_path, capsys):
    # Argument errors come first: a bad --threshold must be reported as such, without first
    # loading (or failing to find) the bundle.
    code, _, err = run_cli(["correct", "-q", "Q", "-a", "A", "--bundle", str(tmp_path / "no_bundle"),
                            "--threshold", "ethics"], capsys)
    assert code == 2
    assert "--threshold 'ethics'" in err, err


@pytest.mark.parametrize("argv, needle", [
    (["correct"], "give --question and --answer"),
    (["correct", "--question", "Q"], "give --question and --answer"),
    (["correct", "--answer", "A"], "give --question and --answer"),
    (["correct", "-q", "Q", "-a", "A", "--input", "in.jsonl"], "not both"),
])
def test_correct_needs_a_pair_or_a_file(argv, needle, fake_squad, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert needle in err and err.startswith("squad correct: error:")
    assert fake_squad == []  # rejected before any bundle is loaded


def test_correct_with_neither_pair_nor_file_without_a_bundle(capsys):
    code, _, err = run_cli(["correct", "--bundle", "/nonexistent/bundle"], capsys)
    assert code == 2 and "give --question and --answer" in err


def test_input_without_output(fake_squad, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"question": "q", "answer": "a"}\n')
    code, _, err = run_cli(["correct", "--input", str(src)], capsys)
    assert code == 2 and "--input needs --output" in err


def test_missing_bundle_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(["correct", "-q", "Q", "-a", "A", "--bundle", str(tmp_path)], capsys)
    assert code == 2 and "not a squad bundle" in err and str(tmp_path) in err


# ---------------------------------------------------------------------------------------------
# squad correct: results


def test_correct_pair_json(fake_squad, capsys):
    code, out, err = run_cli(["correct", "-q", "Is it safe?", "-a", "Sure [ethics=0.2]", "--json"], capsys)
    assert code == 0, err
    c = Correction.model_validate_json(out)
    assert c.original == "Sure [ethics=0.2]" and c.answer == "Sure <ethics>"
    assert [s.criterion for s in c.steps] == ["ethics"]
    assert fake_squad == ["default"]


def test_correct_pair_threshold_override(fake_squad, capsys):
    # 0.3 is under the policy threshold (0.5) but not under 0.2: no correction.
    code, out, _ = run_cli(["correct", "-q", "Q", "-a", "A [ethics=0.3]", "--threshold", "ethics=0.2", "--json"], capsys)
    assert code == 0
    c = Correction.model_validate_json(out)
    assert c.steps == [] and c.changed is False


def test_correct_pair_criteria_subset(fake_squad, capsys):
    code, out, _ = run_cli(["correct", "-q", "Q", "-a", "A [ethics=0.1][honesty=0.1]", "--criteria", "honesty",
                            "--json"], capsys)
    assert code == 0
    c = Correction.model_validate_json(out)
    assert [s.criterion for s in c.steps] == ["honesty"] and set(c.scores) == {"honesty"}


def test_correct_pair_human_output(fake_squad, capsys):
    code, out, _ = run_cli(["correct", "-q", "Q", "-a", "A [honesty=0.1]"], capsys)
    assert code == 0
    assert "answer   : A <honesty>" in out
    assert re.search(r"step   : honesty score 0\.10 < 0\.50: rewrite kept", out)


def test_correct_file_with_bad_rows(fake_squad, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"question": "q1", "answer": "fine", "id": 7}\n'
                   '{"question": "q2"}\n'
                   '\n'
                   '{"question": "q3", "answer": "bad [ethics=0.1]"}\n')
    dst = tmp_path / "out" / "res.jsonl"
    code, out, _ = run_cli(["correct", "--input", str(src), "--output", str(dst), "--json"], capsys)
    assert code == 3  # some rows were bad
    summary = json.loads(out)
    assert summary["rows_in"] == 3 and summary["rows_out"] == 2 and summary["errors"] == 1
    rows = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [(r["line"], r["answer"]) for r in rows] == [(1, "fine"), (4, "bad <ethics>")]
    assert rows[0]["id"] == 7  # extra input fields are carried through
    errs = [json.loads(x) for x in Path(summary["errors_file"]).read_text().splitlines()]
    assert len(errs) == 1 and errs[0]["line"] == 2 and "field 'answer'" in errs[0]["error"]


# ---------------------------------------------------------------------------------------------
# squad train / eval: errors


def test_train_bad_override_exit_2(capsys):
    code, _, err = run_cli(["train", str(ROOT / "configs" / "train.yaml"), "aligner.epochs=0"], capsys)
    assert code == 2
    assert "train.yaml" in err and "field 'aligner.epochs'" in err


def test_train_malformed_override_exit_2(capsys):
    code, _, err = run_cli(["train", str(ROOT / "configs" / "train.yaml"), "aligner.epochs"], capsys)
    assert code == 2 and "is not key=value" in err


def test_train_missing_config_exit_2(tmp_path, capsys):
    code, _, err = run_cli(["train", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "not found" in err


def test_eval_bad_data_exit_2(fake_squad, tmp_path, capsys):
    data = tmp_path / "eval.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n{"question": 5, "answer": "a"}\n')
    code, _, err = run_cli(["eval", "--data", str(data)], capsys)
    assert code == 2 and f"{data}:2: field 'question'" in err


def test_eval_reports_routing_accuracy(fake_squad, tmp_path, capsys):
    # Two ethics items: one where ethics scores lowest (routed to the ethics aligner), one where
    # helpfulness scores lower (routed elsewhere first); one good item that nothing touches.
    rows = [{"question": "q1", "answer": "bad [ethics=0.1]", "correction": "fixed", "criterion": "ethics"},
            {"question": "q2", "answer": "bad [ethics=0.2][helpfulness=0.1]", "correction": "fixed",
             "criterion": "ethics"},
            {"question": "q3", "answer": "fine", "criterion": "ethics"}]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(["eval", "--data", str(data), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["ethics"]["routing_accuracy"] == 0.5
    assert report["ethics"]["alignment_tax"] == 0.0
    assert report["ethics"]["aligner_calls_per_item"] == 1.0  # 1 + 2 steps + 0 over 3 items
