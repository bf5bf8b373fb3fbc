"""``squad data import`` (squad/data/importers.py, squad/cli/data.py): each public layout, bad records, the CLI.

The fixtures under tests/fixtures/importers/ were written for this project (invented text) in each
dataset's published file layout; each holds a few good records and a few that must go to the
errors file. Pure Python: no Ray, no models.
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import pytest

from squad.cli.main import main
from squad.data.rows import CorrectionRow, read_jsonl
from squad.errors import DataError, SquadError
from squad.data.importers import (FORMATS, ImportOptions, RecordError, convert_aligner, convert_hh_rlhf,
                             convert_pku_saferlhf, convert_ultrafeedback, import_dataset)

FIX = Path(__file__).resolve().parent / "fixtures" / "importers"
PKU = FIX / "pku-saferlhf"
HH = FIX / "hh-rlhf" / "helpful-base" / "train.jsonl.gz"
UF = FIX / "ultrafeedback"
UF_RAW = UF / "UltraFeedback" / "evol_instruct.jsonl"
UF_BIN = UF / "ultrafeedback_binarized" / "data" / "train_prefs-00000-of-00001.parquet"
ALIGNER = FIX / "aligner" / "aligner-20K" / "train.jsonl"


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def run(fmt, src, tmp_path, **kw):
    out = tmp_path / "out.jsonl"
    summary = import_dataset(fmt, src, out, **kw)
    errors = Path(summary.errors_file)
    return summary, lines(out), lines(errors)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def errs_by_record(errors: list[dict]) -> dict[int, tuple[str | None, str]]:
    return {e["record"]: (e["field"], e["error"]) for e in errors}


# ---------------------------------------------------------------------------------------------
# Per format, on the fixtures


def test_registry_names_the_four_formats():
    assert set(FORMATS) == {"pku-saferlhf", "hh-rlhf", "ultrafeedback", "aligner"}


def test_pku_saferlhf_safer_preference(tmp_path):
    s, rows, errors = run("pku-saferlhf", PKU, tmp_path)
    assert (s.records, s.written, s.errors) == (5, 2, 3)
    assert rows[0]["question"].startswith("How can I read my roommate's")
    assert rows[0]["correction"].startswith("Reading someone's private messages without consent")
    assert rows[0]["answer"].startswith("Wait until they leave")
    # Record 2: better_response_id=0 but safer_response_id=1: the safer one is the correction.
    assert rows[1]["correction"].startswith("Some cleaning products")
    assert rows[1]["source_file"] == "data/Alpaca-7B/train.jsonl" and rows[1]["source_record"] == 2
    e = errs_by_record(errors)
    assert e[3][0] == "is_response_0_safe" and "labelled unsafe" in e[3][1] and "--allow-unsafe" in e[3][1]
    assert e[4] == ("safer_response_id", "field 'safer_response_id': must be 0 or 1, got 2")
    assert e[5] == ("response_0", "field 'response_0': empty text")
    assert all(err["source_file"] == "data/Alpaca-7B/train.jsonl" for err in errors)


def test_pku_saferlhf_better_preference_and_allow_unsafe(tmp_path):
    s, rows, errors = run("pku-saferlhf", PKU, tmp_path,
                          options=ImportOptions(preference="better", allow_unsafe=True))
    by = {r["source_record"]: r for r in rows}
    assert by[2]["correction"].startswith("Never mix bleach")           # better_response_id = 0
    assert by[2]["answer"].startswith("Some cleaning products")
    assert by[3]["correction"].startswith("Try the default router")     # kept with --allow-unsafe
    assert by[4]["correction"].startswith("No: a parked car")           # better id 1 is valid
    assert errs_by_record(errors) == {5: ("response_0", "field 'response_0': empty text")}


def test_pku_missing_id_names_the_field():
    rec = {"prompt": "q", "response_0": "a", "response_1": "b", "better_response_id": 0}
    with pytest.raises(RecordError, match="field 'safer_response_id': missing"):
        convert_pku_saferlhf(rec, ImportOptions())
    assert convert_pku_saferlhf(rec, ImportOptions(preference="better")).correction == "a"
    with pytest.raises(RecordError, match="must be 0 or 1, got True"):
        convert_pku_saferlhf({**rec, "safer_response_id": True}, ImportOptions())


def test_hh_rlhf_gzip(tmp_path):
    s, rows, errors = run("hh-rlhf", HH, tmp_path)
    assert (s.records, s.written, s.errors) == (5, 2, 3)
    assert rows[0] == {"question": "How long should I boil an egg for a firm yolk?",
                       "answer": "Eggs are laid by hens.",
                       "correction": "About ten minutes in boiling water, then cool it in cold water.",
                       "source": "hh-rlhf", "source_file": "train.jsonl.gz", "source_record": 1}
    # Multi-turn: the whole dialogue before the final answer, rendered plainly.
    assert rows[1]["question"] == ("Human: I want to start running.\n\n"
                                   "Assistant: Great! How often can you run each week?\n\n"
                                   "Human: Three times, but my knees hurt after.")
    assert rows[1]["correction"].startswith("Start with short, slow runs")
    assert rows[1]["answer"].startswith("Pain is weakness")
    e = errs_by_record(errors)
    assert e[3][0] == "rejected" and "differs from 'chosen'" in e[3][1]
    assert e[4][0] == "chosen" and "identical to 'rejected'" in e[4][1]
    assert e[5][0] == "rejected" and "no '\\n\\nAssistant:' turn" in e[5][1]


def test_hh_rlhf_last_turn_context(tmp_path):
    _, rows, _ = run("hh-rlhf", HH, tmp_path, options=ImportOptions(context="last-turn"))
    assert rows[1]["question"] == "Three times, but my knees hurt after."


@pytest.mark.parametrize("chosen, rejected, field, needle", [
    ("\n\nHuman: q\n\nAssistant: a\n\nHuman: more?", "\n\nHuman: q\n\nAssistant: b", "chosen", "ends with a human turn"),
    ("\n\nHuman: q\n\nAssistant:   ", "\n\nHuman: q\n\nAssistant: b", "chosen", "final assistant turn is empty"),
    ("Intro\n\nAssistant: a", "Intro\n\nAssistant: b", "chosen", "does not start with a 'Human:' turn"),
    ("\n\nHuman: \n\nAssistant: a", "\n\nHuman: \n\nAssistant: b", "chosen", "last human turn is empty"),
    (None, "\n\nHuman: q\n\nAssistant: b", "chosen", "missing"),
    ("\n\nHuman: q\n\nAssistant: a", 5, "rejected", "must be a string, got int"),
])
def test_hh_rlhf_malformed(chosen, rejected, field, needle):
    rec = {"chosen": chosen, "rejected": rejected}
    with pytest.raises(RecordError) as ei:
        convert_hh_rlhf(rec, ImportOptions())
    assert ei.value.field == field and needle in str(ei.value)


def test_ultrafeedback_raw_and_binarized_folder(tmp_path):
    s, rows, errors = run("ultrafeedback", UF, tmp_path)
    # Folder mode: both files, sorted ('UltraFeedback/...' before 'ultrafeedback_binarized/...').
    assert s.files == ["UltraFeedback/evol_instruct.jsonl",
                       "ultrafeedback_binarized/data/train_prefs-00000-of-00001.parquet"]
    assert (s.records, s.written, s.errors) == (7, 2, 5)
    raw, binarized = rows
    assert raw["question"] == "Write a haiku about autumn leaves."
    assert raw["correction"].startswith("Red leaves drift")                      # overall_score 8.5
    assert raw["answer"] == "Autumn is a season that comes after summer."         # overall_score 3.0
    assert binarized["question"] == "Why is the sky blue?"
    assert binarized["correction"].startswith("Air molecules scatter")
    assert binarized["answer"] == "Because it reflects the ocean."
    got = {(e["source_file"].split("/")[0], e["record"]): (e["field"], e["error"]) for e in errors}
    assert got[("UltraFeedback", 2)][0] == "completions" and "tie" in got[("UltraFeedback", 2)][1]
    assert "1 of 2 completions" in got[("UltraFeedback", 3)][1]
    assert got[("UltraFeedback", 4)] == ("instruction", "field 'instruction': missing")
    assert got[("ultrafeedback_binarized", 2)][0] == "score_chosen" and "tie" in got[("ultrafeedback_binarized", 2)][1]
    assert got[("ultrafeedback_binarized", 3)] == ("rejected", "field 'rejected': no assistant message")


def test_ultrafeedback_single_parquet_file(tmp_path):
    s, rows, _ = run("ultrafeedback", UF_BIN, tmp_path)
    assert s.files == [UF_BIN.name] and s.written == 1 and rows[0]["source_record"] == 1


def test_ultrafeedback_ties_at_the_top_pick_the_first_and_skip_bad_completions():
    rec = {"instruction": "q", "completions": [
        {"response": "first best", "overall_score": 9},
        {"response": "second best", "overall_score": 9},
        {"response": "", "overall_score": 1},            # empty: not usable
        {"response": "nan score", "overall_score": float("nan")},
        {"response": "worst", "overall_score": 2.5},
    ]}
    t = convert_ultrafeedback(rec, ImportOptions())
    assert (t.correction, t.answer) == ("first best", "worst")


@pytest.mark.parametrize("rec, field, needle", [
    ({"instruction": "q", "completions": "x"}, "completions", "must be a list"),
    ({"prompt": "q"}, "completions", "expected 'instruction' + 'completions'"),
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}]}, "rejected", "missing"),
    ({"prompt": "q", "chosen": "text", "rejected": []}, "chosen", "expected a list of {role, content} messages"),
    ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": []}, "prompt", "missing"),
])
def test_ultrafeedback_malformed(rec, field, needle):
    with pytest.raises(RecordError) as ei:
        convert_ultrafeedback(rec, ImportOptions())
    assert ei.value.field == field and needle in str(ei.value)


def test_ultrafeedback_binarized_prompt_from_messages():
    rec = {"chosen": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "good"}],
           "rejected": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "bad"}]}
    t = convert_ultrafeedback(rec, ImportOptions())
    assert (t.question, t.answer, t.correction) == ("q?", "bad", "good")


def test_aligner_format_and_untrusted_text_is_data(tmp_path):
    s, rows, errors = run("aligner", ALIGNER.parent, tmp_path)
    assert (s.records, s.written, s.errors) == (5, 3, 2)
    # Special tokens and template braces are copied verbatim: nothing is formatted or evaluated.
    assert rows[2]["question"] == "What does <|im_end|> mean in {question}?"
    e = errs_by_record(errors)
    assert e[4][0] == "correction" and "identical to 'answer'" in e[4][1]
    assert e[5][0] is None and e[5][1].startswith("invalid JSON")


@pytest.mark.parametrize("rec, field", [
    ({"answer": "a", "correction": "c"}, "question"),
    ({"question": "q", "answer": "  ", "correction": "c"}, "answer"),
    ({"question": "q", "answer": "a", "correction": ["c"]}, "correction"),
])
def test_aligner_malformed(rec, field):
    with pytest.raises(RecordError) as ei:
        convert_aligner(rec, ImportOptions())
    assert ei.value.field == field


# ---------------------------------------------------------------------------------------------
# Output contract


@pytest.mark.parametrize("fmt, src", [("pku-saferlhf", PKU), ("hh-rlhf", HH), ("ultrafeedback", UF),
                                      ("aligner", ALIGNER)])
def test_output_loads_as_correction_rows(fmt, src, tmp_path):
    s, rows, _ = run(fmt, src, tmp_path)
    loaded = read_jsonl(tmp_path / "out.jsonl", CorrectionRow)   # strict loader: every row valid
    assert len(loaded) == s.written > 0
    for r, raw in zip(loaded, rows):
        assert (r.question, r.answer, r.correction) == (raw["question"], raw["answer"], raw["correction"])
        assert r.answer != r.correction
        assert raw["source"] == fmt and isinstance(raw["source_record"], int)


def test_every_record_is_accounted_for(tmp_path):
    for fmt, src in (("pku-saferlhf", PKU), ("hh-rlhf", HH), ("ultrafeedback", UF), ("aligner", ALIGNER)):
        s, rows, errors = run(fmt, src, tmp_path)
        assert s.records == s.written + s.errors == len(rows) + len(errors)
        assert sum(s.error_fields.values()) == s.errors


def test_limit_and_errors_path(tmp_path):
    errs = tmp_path / "sub" / "bad.jsonl"
    s, rows, errors = run("pku-saferlhf", PKU, tmp_path, limit=3, errors=errs)
    assert (s.records, s.written, s.errors) == (3, 2, 1)
    assert s.errors_file == str(errs) and errs.is_file()
    with pytest.raises(SquadError, match="--limit 0"):
        import_dataset("aligner", ALIGNER, tmp_path / "o.jsonl", limit=0)


def test_limit_spans_files(tmp_path):
    s, rows, errors = run("ultrafeedback", UF, tmp_path, limit=5)
    assert s.records == 5 and len(s.files) == 2
    assert rows[-1]["source_file"].startswith("ultrafeedback_binarized")


# ---------------------------------------------------------------------------------------------
# File layouts and file-level errors


GOOD = {"question": "q", "answer": "a", "correction": "c"}


@pytest.mark.parametrize("suffix, opener", [(".jsonl.gz", gzip.open), (".jsonl.xz", lzma.open),
                                            (".json.bz2", bz2.open)])
def test_compressed_json_lines(suffix, opener, tmp_path):
    p = tmp_path / f"train{suffix}"
    with opener(p, "wb") as f:
        f.write((json.dumps(GOOD) + "\n").encode())
    s, rows, _ = run("aligner", p, tmp_path)
    assert s.written == 1 and rows[0]["source_file"] == p.name


def test_json_array_file(tmp_path):
    p = tmp_path / "data.json"
    p.write_text("\ufeff  " + json.dumps([GOOD, 3, {**GOOD, "answer": "other"}]), encoding="utf-8")
    s, rows, errors = run("aligner", p, tmp_path)
    assert [r["source_record"] for r in rows] == [1, 3]
    assert errors == [{"source_file": "data.json", "record": 2, "field": None,
                       "error": "expected a JSON object, got int"}]


def test_json_file_holding_json_lines(tmp_path):
    p = write_jsonl(tmp_path / "train.json", [GOOD, GOOD])
    s, _, _ = run("aligner", p, tmp_path)
    assert s.written == 2


def test_bad_lines_are_reported_with_their_line_number(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_bytes(b'{"question": "q", "answer": "a", "correction": "c"}\n\n[1, 2]\n\xff\xfe\n{"question": \n')
    s, rows, errors = run("aligner", p, tmp_path)
    assert s.written == 1 and s.records == 4  # the blank line is not a record
    e = errs_by_record(errors)
    assert e[3] == (None, "expected a JSON object, got list")
    assert e[4][1].startswith("not valid UTF-8")
    assert e[5][1].startswith("invalid JSON")
    assert s.error_fields == {"<record>": 3}


def test_truncated_gzip_is_an_error_row_not_a_crash(tmp_path):
    p = tmp_path / "train.jsonl.gz"
    data = gzip.compress(("".join(json.dumps({**GOOD, "answer": f"a{i}"}) + "\n" for i in range(200))).encode())
    p.write_bytes(data[: len(data) // 2])
    s, rows, errors = run("aligner", p, tmp_path)
    assert s.errors == 1 and "cannot read the file past this point" in errors[0]["error"]
    assert s.written == len(rows) and errors[0]["record"] == s.written + 1


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        import_dataset("aligner", tmp_path / "nope.jsonl", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_unknown_format_is_a_clear_error(tmp_path):
    with pytest.raises(SquadError, match="unknown format 'shp': expected one of pku-saferlhf, hh-rlhf"):
        import_dataset("shp", ALIGNER, tmp_path / "out.jsonl")


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(SquadError, match="--preference 'kinder'"):
        import_dataset("pku-saferlhf", PKU, tmp_path / "o.jsonl", options=ImportOptions(preference="kinder"))
    with pytest.raises(SquadError, match="--context 'all'"):
        import_dataset("hh-rlhf", HH, tmp_path / "o.jsonl", options=ImportOptions(context="all"))


def test_unsupported_file_and_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        import_dataset("aligner", tmp_path / "notes.txt", tmp_path / "o.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data files in this folder"):
        import_dataset("aligner", tmp_path / "empty", tmp_path / "o.jsonl")


def test_git_lfs_pointer_and_fake_compressed_files_fail_before_writing(tmp_path):
    p = tmp_path / "train.jsonl.gz"
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(DataError, match="Git LFS pointer"):
        import_dataset("hh-rlhf", p, tmp_path / "o.jsonl")
    p.write_text("not gzip at all")
    with pytest.raises(DataError, match="not a valid gz file"):
        import_dataset("hh-rlhf", p, tmp_path / "o.jsonl")
    q = tmp_path / "x.parquet"
    q.write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        import_dataset("ultrafeedback", q, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_refuses_to_overwrite_an_input(tmp_path):
    p = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    with pytest.raises(SquadError, match="would overwrite an input file"):
        import_dataset("aligner", p, p)
    with pytest.raises(SquadError, match="would overwrite an input file"):
        import_dataset("aligner", tmp_path, tmp_path / "out.jsonl", errors=p)
    assert lines(p) == [GOOD]


# ---------------------------------------------------------------------------------------------
# The CLI, through squad.cli.main as `squad data ...` runs it


def cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse (--help, usage errors)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_help(capsys):
    code, out, _ = cli(["data", "--help"], capsys)
    assert code == 0 and out.startswith("usage: squad data") and "import" in out
    code, out, _ = cli(["data", "import", "--help"], capsys)
    assert code == 0 and out.startswith("usage: squad data import")
    for needle in ("--format", "--output", "--errors", "--limit", "--preference", "--allow-unsafe", "--context",
                   "--strict", "--json", "pku-saferlhf", "hh-rlhf", "ultrafeedback", "aligner", "exit status"):
        assert needle in out, needle


def test_cli_usage_errors(capsys):
    assert cli(["data"], capsys)[0] == 2
    code, _, err = cli(["data", "import", str(ALIGNER)], capsys)
    assert code == 2 and "--format" in err and "--output" in err


def test_cli_import_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "hh.jsonl"
    code, stdout, _ = cli(["data", "import", "--format", "hh-rlhf", str(HH), "--output", str(out)], capsys)
    assert code == 0
    assert f"hh-rlhf: 5 records read from 1 file(s): 2 rows -> {out}, 3 in errors -> {out}.errors.jsonl" in stdout
    assert "errors by field: rejected 2, chosen 1" in stdout
    assert len(lines(out)) == 2 and len(lines(Path(f"{out}.errors.jsonl"))) == 3


def test_cli_options_and_json_summary(tmp_path, capsys):
    out, errs = tmp_path / "pku.jsonl", tmp_path / "pku.bad.jsonl"
    code, stdout, _ = cli(["data", "import", "-f", "pku-saferlhf", str(PKU), "-o", str(out), "--errors", str(errs),
                           "--preference", "better", "--allow-unsafe", "--limit", "4", "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["records"] == 4 and summary["written"] == 4 and summary["errors"] == 0
    assert summary["errors_file"] == str(errs) and errs.read_text() == ""


def test_cli_strict_and_nothing_converted_exit_3(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert cli(["data", "import", "-f", "aligner", str(ALIGNER), "-o", str(out)], capsys)[0] == 0
    assert cli(["data", "import", "-f", "aligner", str(ALIGNER), "-o", str(out), "--strict"], capsys)[0] == 3
    # The wrong format: every record fails, nothing is written, and the message says what to check.
    code, stdout, _ = cli(["data", "import", "-f", "aligner", str(HH), "-o", str(out)], capsys)
    assert code == 3 and "is --format aligner right" in stdout
    assert lines(out) == [] and len(lines(Path(f"{out}.errors.jsonl"))) == 5


def test_cli_clear_errors(tmp_path, capsys):
    code, out, err = cli(["data", "import", "-f", "shp", str(ALIGNER), "-o", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and err.startswith("squad data: error: unknown format 'shp'") and out == ""
    assert not (tmp_path / "o.jsonl").exists()
    code, _, err = cli(["data", "import", "-f", "aligner", str(tmp_path / "missing"), "-o", str(tmp_path / "o.jsonl")],
                       capsys)
    assert code == 2 and err.startswith("squad data: error: ") and "no such file or folder" in err
