"""``squad batch`` (squad/batch/pipeline.py): Ray Data batch correction on the tiny bundle.

One 200-row JSON Lines job with malformed rows runs once for the module (through the CLI); the
tests check its accounting, its error rows and that its results equal ``Squad.correct_batch``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest

from squad.cli.batch import register
from squad.errors import ConfigError, SquadError

pytestmark = pytest.mark.ray

# max_steps 1 with ethics and honesty forced: each row takes the lower-scoring of the two (one aligner
# pass per criterion chosen), then the re-scoring pass.
TH = {"ethics": 1.0, "helpfulness": 0.0, "honesty": 1.0}
BAD = {  # line -> (text, field the error must name)
    5: ("{not json", "invalid JSON"),
    23: (json.dumps({"question": "Q?"}), "answer"),
    41: (json.dumps({"question": "Q?", "answer": ""}), "answer"),
    60: (json.dumps({"question": "Q?", "answer": 7}), "answer"),
    77: (json.dumps({"answer": "A."}), "question"),
    99: (json.dumps({"question": ["Q?"], "answer": "A."}), "question"),
    120: (json.dumps(["not", "an", "object"]), "object"),
    141: (json.dumps({"question": "   ", "answer": "A."}), "question"),
    166: ('{"question": "Q?", "answer": "A."', "invalid JSON"),
    190: (json.dumps({"question": None, "answer": "A."}), "question"),
}


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="squad")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.fn(args)


def _row(i: int) -> dict:
    return {"question": f"Question number {i}: what is {i} plus {i}?", "answer": f"It is {i * 3}.", "id": i}


@pytest.fixture(scope="module")
def job(tiny_bundle: Path, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("batch")
    lines = [BAD[n][0] if n in BAD else json.dumps(_row(n)) for n in range(1, 201)]
    src = tmp / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp / "out"
    argv = ["batch", "--input", str(src), "--output", str(out), "--bundle", str(tiny_bundle), "--max-steps", "1",
            "--json", "progress=false", "layout=staged"]
    for c, v in TH.items():
        argv += ["--threshold", f"{c}={v}"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = cli(argv)
    return {"rc": rc, "out": out, "summary": json.loads(printed.getvalue().strip().splitlines()[-1])}


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rows_in_equal_rows_out_plus_errors(job):
    assert job["rc"] == 3  # some rows failed validation
    summary = job["summary"]
    assert summary["rows_in"] == 200 and summary["errors"] == len(BAD) and summary["rows_out"] == 200 - len(BAD)
    assert summary["balanced"] and summary["parts"] == 1
    rows = [r for p in sorted(job["out"].glob("part-*.jsonl")) for r in _read(p)]
    crits = {s["criterion"] for r in rows for s in r["steps"]}
    assert crits <= {"ethics", "honesty"} and all(len(r["steps"]) == 1 for r in rows)
    assert summary["layout"] == "staged" and summary["stages"] == 2  # inspectors, one round (aligners, re-scoring)
    assert [r["line"] for r in rows] == [n for n in range(1, 201) if n not in BAD]  # input order kept
    assert all(r["id"] == r["line"] for r in rows)  # extra input fields are kept


def test_every_error_names_line_and_field(job):
    errs = _read(job["out"] / "errors" / "errors.jsonl")
    assert [e["line"] for e in errs] == sorted(BAD)
    for e in errs:
        assert f"in.jsonl:{e['line']}:" in e["error"] and BAD[e["line"]][1] in e["error"]
        assert e["raw"] == BAD[e["line"]][0]


def test_results_equal_the_sdk(job, tiny_bundle: Path):
    from squad import Squad

    rows = [r for p in sorted(job["out"].glob("part-*.jsonl")) for r in _read(p)]
    squad = Squad.load(tiny_bundle)
    squad.manifest = squad.manifest.model_copy(update={"max_steps": 1})  # as --max-steps 1
    ref = squad.correct_batch([(r["question"], r["original"]) for r in rows], thresholds=TH)
    for r, c in zip(rows, ref):
        assert r["answer"] == c.answer
        assert [s["criterion"] for s in r["steps"]] == [s.criterion for s in c.steps] and len(c.steps) == 1
        assert r["initial_scores"] == pytest.approx(c.initial_scores, abs=1e-4)
        assert r["scores"] == pytest.approx(c.scores, abs=1e-4)


def test_fused_layout_equals_the_staged_pipeline_and_the_sdk(tmp_path: Path, tiny_bundle: Path):
    """layout=fused runs every round in one actor pool; up to 3 rounds, rows with and without work."""
    from squad import Squad
    from squad.batch.pipeline import load_batch_config, run_batch

    th = {"ethics": 1.0, "helpfulness": 1.0, "honesty": 0.0}  # two forced rounds, then max_steps
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(_row(i)) + "\n" for i in range(24)))
    got = {}
    for layout in ("fused", "staged"):
        cfg = load_batch_config(None, ["progress=false", f"layout={layout}", "aligner.batch_size=10"])
        s = run_batch(src, tmp_path / layout, bundle=tiny_bundle, cfg=cfg, thresholds=th)
        assert (s["rows_in"], s["rows_out"], s["errors"]) == (24, 24, 0)
        got[layout] = _read(tmp_path / layout / "part-00000.jsonl")
    ref = Squad.load(tiny_bundle).correct_batch([(r["question"], r["answer"]) for r in map(_row, range(24))],
                                                 thresholds=th)
    for f, st, c in zip(got["fused"], got["staged"], ref):
        assert f["answer"] == st["answer"] == c.answer
        assert [x["criterion"] for x in f["steps"]] == [x["criterion"] for x in st["steps"]] == [x.criterion for x in c.steps]
        assert len(c.steps) == 2
    assert [r["line"] for r in got["fused"]] == list(range(1, 25))


def test_parquet_round_trip(tiny_bundle: Path, tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from squad.batch.pipeline import load_batch_config, run_batch

    rows = [_row(i) for i in range(12)]
    rows[4] = {"question": "Q?", "answer": "", "id": 4}
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "out"
    s = run_batch(src, out, bundle=tiny_bundle, fmt="parquet", cfg=load_batch_config(None, ["progress=false"]),
                  thresholds={"ethics": 1.0, "helpfulness": 0.0, "honesty": 0.0})
    assert (s["rows_in"], s["rows_out"], s["errors"]) == (12, 11, 1)
    got = pq.read_table(out / "part-00000.parquet").to_pylist()
    assert [r["row"] for r in got] == [i + 1 for i in range(12) if i != 4] and [r["id"] for r in got][:4] == [0, 1, 2, 3]
    assert all(len(r["steps"]) == 1 and r["steps"][0]["criterion"] == "ethics" for r in got)
    assert set(got[0]["scores"]) == {"ethics", "helpfulness", "honesty"}
    (err,) = _read(out / "errors" / "errors.jsonl")
    assert err["row"] == 5 and "field 'answer'" in err["error"] and err["raw"]["id"] == 4


def test_chunks_bound_memory_and_keep_order(tmp_path: Path, tiny_bundle: Path):
    """Chunking and output order, with the pipeline replaced by the in-process run_squad (no Ray Data work)."""
    from squad.core.algorithm import run_squad
    from squad.batch.pipeline import load_batch_config, run_batch

    sizes = []

    def stream(states, bundle, cfg, policy):
        sizes.append(len(states))
        inspect = lambda pairs, crits: [{c: (0.9 if a.isupper() else 0.1) for c in crits} for _, a in pairs]  # noqa: E731
        for c in run_squad([(s.question, s.answer) for s in states], inspect,
                           lambda c, pairs: [a.upper() for _, a in pairs], policy):
            yield type("Done", (), {"result": lambda self, c=c: c})()

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(_row(i)) for i in range(10)) + "\n\n")  # a blank line is skipped
    s = run_batch(src, tmp_path / "out", bundle=tiny_bundle, cfg=load_batch_config(None, ["progress=false", "chunk_rows=4"]),
                  stream=stream)
    assert (s["rows_in"], s["rows_out"], s["errors"], s["parts"]) == (10, 10, 0, 3)
    assert sizes == [4, 4, 2]
    rows = [r for p in sorted((tmp_path / "out").glob("part-*.jsonl")) for r in _read(p)]
    assert [r["id"] for r in rows] == list(range(10)) and all(r["answer"] == r["original"].upper() for r in rows)


def test_clear_errors_before_any_work(tmp_path: Path, tiny_bundle: Path):
    from squad.batch.pipeline import load_batch_config, run_batch

    cfg = load_batch_config(None, ["progress=false"])
    with pytest.raises(SquadError, match="input not found"):
        run_batch(tmp_path / "missing.jsonl", tmp_path / "o", bundle=tiny_bundle, cfg=cfg)
    (tmp_path / "in.txt").write_text("{}\n")
    with pytest.raises(SquadError, match="input format"):
        run_batch(tmp_path / "in.txt", tmp_path / "o", bundle=tiny_bundle, cfg=cfg)
    (tmp_path / "in.jsonl").write_text("{}\n")
    with pytest.raises(SquadError, match="output format"):
        run_batch(tmp_path / "in.jsonl", tmp_path / "o", bundle=tiny_bundle, fmt="csv", cfg=cfg)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(SquadError, match="--overwrite"):
        run_batch(tmp_path / "in.jsonl", tmp_path / "full", bundle=tiny_bundle, cfg=cfg)
    with pytest.raises(SquadError, match="unknown criterion"):
        run_batch(tmp_path / "in.jsonl", tmp_path / "o2", bundle=tiny_bundle, cfg=cfg, thresholds={"nope": 0.5})
    with pytest.raises(SquadError, match="aligner.num_cpus"):
        load_batch_config(None, ["aligner.num_cpus=-1"])
    with pytest.raises(SquadError, match="chunk_rws"):
        load_batch_config(None, ["chunk_rws=3"])


def test_help_lists_the_interface(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["batch", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: squad batch")
    for flag in ("--input", "--output", "--bundle", "--format", "--threshold", "RAY_ADDRESS"):
        assert flag in out


def test_stages_step_like_run_squad_and_skip_rows_without_work(tiny_bundle: Path):
    """The pipeline's stage UDFs, called in-process: same results as run_squad; idle stages load
    nothing, unless they preload."""
    import numpy as np

    from squad import Squad
    from squad.core.algorithm import PairState
    from squad.batch.stages import InspectStage, RoundStage
    from squad.sdk.local import squad_policy

    squad = Squad.load(tiny_bundle)
    policy = squad_policy(squad.manifest, thresholds=TH, max_steps=1)
    pairs = [(r["question"], r["answer"]) for r in map(_row, range(5))]
    batch = {"idx": np.arange(5), "state": np.array([PairState(q, a, a, 0.0).to_json() for q, a in pairs], dtype=object)}
    for stage in (InspectStage(str(tiny_bundle), policy), RoundStage(str(tiny_bundle), policy)):
        batch = stage(batch)
    got = [PairState.from_json(s).result() for s in batch["state"]]
    squad.manifest = squad.manifest.model_copy(update={"max_steps": 1})
    ref = squad.correct_batch(pairs, thresholds=TH)
    for g, r in zip(got, ref):
        assert (g.answer, [s.criterion for s in g.steps]) == (r.answer, [s.criterion for s in r.steps])
        assert g.scores == pytest.approx(r.scores, abs=1e-4)
    idle = RoundStage(str(tiny_bundle), policy)
    assert idle(batch)["state"].tolist() == batch["state"].tolist() and idle._model is None  # all done: no model load
    eager = RoundStage(str(tiny_bundle), policy, preload=True)  # loads in the background before any batch
    eager.preloading.join(120)
    inspector, aligner = eager._model
    assert set(inspector.heads) == set(TH) and set(aligner.policies) == set(TH)


@pytest.mark.parametrize("layout,cpus,gpus,overrides,want", [
    ("auto", 2, 0, [], "fused"),          # 1 + 3 rounds x 2 threads = 7 threads > 2 cores
    ("auto", 7, 0, [], "staged"),
    ("auto", 4, 1, ["aligner.num_gpus=0.25"], "staged"),  # aligners on GPU: 1 inspector thread, 3 x 0.25 GPU
    ("auto", 4, 0.5, ["aligner.num_gpus=0.25"], "fused"),
    ("staged", 2, 0, [], "staged"),
    ("fused", 64, 8, [], "fused"),
    ("auto", 7, 0, ["aligner.memory_gb=8"], "staged"),      # 0.75 + 3 x 8 GiB fit the 64 GiB below
    ("auto", 7, 0, ["aligner.memory_gb=24"], "fused"),      # 0.75 + 3 x 24 GiB do not
])
def test_auto_layout_stages_only_when_every_stage_can_run_at_once(layout, cpus, gpus, overrides, want):
    from squad.core.algorithm import SquadPolicy
    from squad.batch.pipeline import load_batch_config, resolve_layout

    cfg = load_batch_config(None, [f"layout={layout}", *overrides])
    policy = SquadPolicy(thresholds=dict.fromkeys(TH, 0.5), max_steps=3)
    assert resolve_layout(cfg, policy, False, {"CPU": cpus, "GPU": gpus, "memory": 64 * 2**30}) == want
    assert resolve_layout(cfg.model_copy(update={"layout": "auto"}), policy, True, {"CPU": 2}) == "staged"  # vLLM


def test_stage_resources_become_ray_actor_requests():
    from squad.batch.pipeline import load_batch_config

    cfg = load_batch_config(None, ["aligner.num_gpus=0.5", "inspector.memory_gb=0"])
    assert cfg.aligner.ray_args() == {"num_cpus": 0.3, "num_gpus": 0.5, "memory": int(3.5 * 2**30)}
    assert cfg.inspector.ray_args() == {"num_cpus": 0.25}  # no GPU, no memory reservation
    with pytest.raises(ConfigError, match=r"aligner\.memory_gb\n\s*Input should be greater than or equal to 0"):
        load_batch_config(None, ["aligner.memory_gb=-1"])


def test_vllm_round_wiring_against_the_installed_ray_data_llm(tiny_bundle: Path):
    """vLLM cannot run here (no GPU, not installed), so this checks everything up to the engine: the
    round builds against this Ray's ``ray.data.llm`` config and stages, rows name the criterion's
    adapter folder (a LoRA request) or the base (none), and the engine's text lands in the states."""
    import numpy as np
    import ray

    from squad.core.algorithm import PairState
    from squad.batch.pipeline import load_batch_config
    from squad.batch.stages import VllmApply, VllmPrompts, vllm_round
    from squad.models.bundle import read_manifest
    from squad.models.registry import resolve
    from squad.sdk.local import squad_policy

    manifest = read_manifest(tiny_bundle)
    policy = squad_policy(manifest, thresholds=TH, max_steps=1)
    cfg = load_batch_config(None, ["aligner.num_gpus=1", "aligner.engine=vllm"])
    ds = vllm_round(ray.data.from_items([{"idx": 0, "state": "{}"}]), str(tiny_bundle), tiny_bundle, manifest,
                    policy, cfg.aligner)
    assert "vLLMEngineStageUDF" in str(ds) and "VllmApply" in str(ds)  # built, not run

    base = str(resolve(manifest.aligner.base))
    work = PairState("Q?", "A.", "A.", 0.0, scores={"ethics": 0.1}, next="ethics")
    idle = PairState("Q?", "A.", "A.", 0.0, done=True)
    prompts = VllmPrompts(str(tiny_bundle), base, manifest.aligner.max_new_tokens)
    row = prompts({"idx": 0, "state": work.to_json()})
    assert Path(row["model"]) == tiny_bundle / manifest.criteria["ethics"].aligner
    assert (Path(row["model"]) / "adapter_config.json").is_file() and row["max_tokens"] == manifest.aligner.max_new_tokens
    assert "Q?" in row["prompt"] and "A." in row["prompt"]
    assert prompts({"idx": 1, "state": idle.to_json()})["model"] == base  # no LoRA request, one token

    out = VllmApply(policy)({"idx": np.arange(2), "state": np.array([work.to_json(), idle.to_json()], dtype=object),
                             "generated": np.array(["  Fixed answer. ", ""], dtype=object),
                             "llm_s": np.array([0.42, 0.001])})
    fixed, untouched = (PairState.from_json(s) for s in out["state"])
    # the rewrite waits for its scores (do no harm) before it can replace the answer
    assert fixed.candidate == "Fixed answer." and fixed.answer == "A." and fixed.applied == ["ethics"]
    assert fixed.needs_scores and fixed.steps[-1].rewrite == "Fixed answer."
    assert fixed.steps[-1].latency_ms == pytest.approx(420.0)  # the engine's own time for this request
    assert untouched.to_json() == idle.to_json()
