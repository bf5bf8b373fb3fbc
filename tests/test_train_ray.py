"""Ray Train end to end on tiny random models: bundle, load, correct, resume, CLI file mode."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from squad import Correction, Squad
from squad.models.bundle import read_manifest
from squad.config.loading import load_config
from squad.errors import ConfigError
from squad.train.config import TrainConfig

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent


def test_bundle_layout(tiny_bundle: Path):
    m = read_manifest(tiny_bundle)
    assert sorted(m.criteria) == ["ethics", "helpfulness", "honesty"]
    assert m.aligner.base == "tiny-causal-lm" and m.inspector.kind == "shared"
    for c, entry in m.criteria.items():
        assert (tiny_bundle / entry.aligner / "adapter_model.safetensors").is_file()
        assert entry.policy.threshold == 0.5
    assert (tiny_bundle / "inspector" / "heads.safetensors").is_file()
    assert set(m.data) == {f"{c}/{f}" for c in m.criteria
                           for f in ("corrections.jsonl", "good.jsonl", "inspector.jsonl", "rewrites.jsonl")} | {"ethics/keep.jsonl"}
    assert (tiny_bundle / m.inspector.probe.heads).is_file()
    assert "heldout" in m.metrics and "ethics" in m.metrics["heldout"]
    files = [p for p in tiny_bundle.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".pth")], "safetensors only"


def test_loaded_bundle_corrects(tiny_bundle: Path):
    squad = Squad.load(tiny_bundle)
    scores = squad.inspect("What is 2+2?", "4")
    assert set(scores) == {"ethics", "helpfulness", "honesty"} and all(0 <= v <= 1 for v in scores.values())
    forced = {c: 1.0 for c in squad.criteria}  # every criterion fails: each aligner runs once
    c = squad.correct("What is 2+2?", "5", thresholds=forced)
    assert isinstance(c, Correction)
    assert len(c.steps) == 3 and {s.criterion for s in c.steps} == set(squad.criteria)
    assert c.steps[0].score_before == min(c.initial_scores.values())  # lowest score first
    none = squad.correct("What is 2+2?", "5", thresholds={k: 0.0 for k in squad.criteria})
    assert not none.changed and none.steps == [] and none.answer == "5"


def test_correct_batch_matches_correct(tiny_bundle: Path):
    squad = Squad.load(tiny_bundle)
    pairs = [("What is 2+2?", "5"), ("Name a colour.", "Blue."), ("How do I boil an egg?", "Use water and heat it.")]
    th = {"ethics": 1.0, "helpfulness": 0.0, "honesty": 1.0}
    batch = squad.correct_batch(pairs, thresholds=th)
    for (q, a), b in zip(pairs, batch):
        one = squad.correct(q, a, thresholds=th)
        assert [s.criterion for s in one.steps] == [s.criterion for s in b.steps]
        assert one.answer == b.answer
        assert one.initial_scores == pytest.approx(b.initial_scores, abs=1e-5)


def test_resume_continues_from_checkpoint(tiny_bundle: Path, tmp_path: Path):
    from squad.config.loading import load_config
    from squad.train.config import TrainConfig
    from squad.train.launcher import latest_checkpoint, train_squad

    storage = tiny_bundle.parent / "runs"
    before = json.loads((latest_checkpoint(storage / "tiny-aligner-ethics") / "state.json").read_text())
    assert before["epoch"] == 2  # 1 warm-up + 1 correction epoch
    cfg = load_config(ROOT / "configs" / "train_tiny.yaml", TrainConfig,
                      [f"policies={ROOT / 'policies'}", f"output={tmp_path / 'b2'}", f"storage={storage}",
                       "aligner.epochs=2", "aligner.save_dtype=float16", "evaluate=false", "criteria=[ethics]"])
    out = train_squad(cfg, root=ROOT, log=lambda *_: None)
    after = json.loads((latest_checkpoint(storage / "tiny-aligner-ethics") / "state.json").read_text())
    assert after["epoch"] == 3 and after["step"] > before["step"], "resumed and ran only the missing epoch"
    # save_dtype shrinks the bundle's adapters only: the checkpoints stay float32 and resumable.
    from safetensors.torch import load_file
    saved = load_file(str(out / "aligner" / "ethics" / "adapter_model.safetensors"))
    ckpt = load_file(str(latest_checkpoint(storage / "tiny-aligner-ethics") / "adapter_model.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float16} and {v.dtype for v in ckpt.values()} == {torch.float32}
    loaded = Squad.load(out)
    assert loaded.inspect("q", "a") and loaded.correct("q", "a", thresholds={c: 1.0 for c in loaded.criteria}).steps


def test_finetuned_inspectors_make_a_bundle_that_loads(tiny_bundle: Path, tmp_path: Path):
    """inspector.kind=finetuned (the default squad's): one LoRA encoder per criterion in the bundle."""
    from squad.config.loading import load_config
    from squad.train.config import TrainConfig
    from squad.train.launcher import train_squad

    cfg = load_config(ROOT / "configs" / "train_tiny.yaml", TrainConfig,
                      [f"policies={ROOT / 'policies'}", f"output={tmp_path / 'ft'}",
                       f"storage={tiny_bundle.parent / 'runs'}",  # the aligners resume, already finished
                       "inspector.kind=finetuned", "inspector.finetune_epochs=1", "evaluate=false",
                       "criteria=[ethics,honesty]"])
    out = train_squad(cfg, root=ROOT, log=lambda *_: None)
    m = read_manifest(out)
    assert m.inspector.kind == "finetuned"
    for c, entry in m.criteria.items():
        names = sorted(p.name for p in (out / entry.inspector_adapter).iterdir())
        assert names == ["adapter_config.json", "adapter_model.safetensors"], names
    squad = Squad.load(out)
    assert squad.inspector.runtime == "onnx" and sorted(squad.inspector.encoders) == sorted(m.criteria)
    scores = squad.inspect("What is 2+2?", "4")
    assert set(scores) == set(m.criteria) and all(0 <= v <= 1 for v in scores.values())


def test_only_aligners_refits_the_named_aligners_and_keeps_the_rest(tiny_bundle: Path, tmp_path: Path):
    """only=aligners criteria=[ethics]: the ethics aligner is trained again (with its keep.jsonl pairs) and
    swapped in; every other file of the bundle stays byte for byte."""
    import shutil

    from squad.data.rows import load_policy_data
    from squad.train.launcher import aligner_jobs, train_squad

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    policies = shutil.copytree(ROOT / "policies", tmp_path / "policies")
    keep = [{"question": f"Keep question {i}?", "answer": f"Fine answer {i}."} for i in range(40)]
    (policies / "ethics" / "data" / "keep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    files = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    args = [f"policies={policies}", f"output={bundle}", f"storage={tmp_path / 'runs'}", "only=aligners",
            "criteria=[ethics]", "evaluate=false"]
    cfg = load_config(ROOT / "configs" / "train_tiny.yaml", TrainConfig, args)
    data = {"ethics": load_policy_data(policies / "ethics")}
    job = aligner_jobs(cfg, {"ethics": read_manifest(bundle).criteria["ethics"].policy}, data, {})[0]
    assert job[2]["keep"] and all(r["answer"].startswith("Fine answer") for r in job[2]["keep"])
    train_squad(cfg, root=ROOT, log=lambda *_: None)
    after = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    changed = sorted(str(p) for p in files if after.get(p) != files[p])
    assert "aligner/ethics/adapter_model.safetensors" in changed, changed
    assert all(p.startswith("aligner/ethics/") or p == "manifest.json" for p in changed), changed
    m = read_manifest(bundle)
    assert m.training["aligners"]["criteria"] == ["ethics"] and "ethics/keep.jsonl" in m.training["aligners"]["data"]
    assert Squad.load(bundle).correct("What is 2+2?", "5", thresholds={"ethics": 1.0}).steps
    other = load_config(ROOT / "configs" / "train_tiny.yaml", TrainConfig, args + ["aligner.mode=full"])
    with pytest.raises(ValueError, match="differ from the bundle's"):
        train_squad(other, root=ROOT, log=lambda *_: None)


def test_changed_job_trains_from_scratch(tmp_path: Path):
    from squad.train.launcher import resume_point, job_fingerprint

    conf = {"rows": [{"question": "q", "answer": "a"}], "spec": {"lr": 1e-3, "epochs": 2}, "progress_board": "a"}
    run = tmp_path / "run"
    assert resume_point(run, job_fingerprint("m.loop", conf), log=lambda *_: None) is None
    (run / "ckpt").mkdir()
    (run / "ckpt" / "state.json").write_text(json.dumps({"epoch": 1}))
    more_epochs = {**conf, "spec": {"lr": 1e-3, "epochs": 5}, "progress_board": "b"}
    assert resume_point(run, job_fingerprint("m.loop", more_epochs)) == run / "ckpt"
    new_rows = {**conf, "rows": [{"question": "q", "answer": "b"}]}
    messages = []
    assert resume_point(run, job_fingerprint("m.loop", new_rows), log=messages.append) is None
    assert "changed" in messages[0]
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("run.stale-")]
    assert len(stale) == 1 and (stale[0] / "ckpt" / "state.json").is_file(), "the old run is kept aside"


def test_cli_file_mode_reports_bad_lines(tiny_bundle: Path, tmp_path: Path):
    from squad.cli.main import main

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([
        json.dumps({"question": "What is 2+2?", "answer": "4", "id": 1}),
        "{not json",
        json.dumps({"question": "Hi", "answer": 7}),
        json.dumps({"question": "Name a planet.", "answer": "Mars."}),
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    rc = main(["correct", "--input", str(src), "--output", str(out), "--bundle", str(tiny_bundle), "--json"])
    assert rc == 3  # some rows failed
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    errs = [json.loads(x) for x in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 4] and rows[0]["id"] == 1 and "steps" in rows[0]
    assert [e["line"] for e in errs] == [2, 3]
    assert "in.jsonl:3" in errs[1]["error"] and "answer" in errs[1]["error"]


def test_deepspeed_on_cpu_says_why():
    import torch

    from squad.train.aligner_loop import deepspeed_engine

    if torch.cuda.is_available():
        pytest.skip("this check is about machines without a GPU")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        deepspeed_engine(torch.nn.Linear(2, 2), [], {"deepspeed": str(ROOT / "configs" / "deepspeed_zero2.json")})


def test_gpu_jobs_ask_ray_for_their_share_of_a_gpu():
    """use_gpu jobs reserve gpus_per_worker (fractions let several models share one GPU); CPU jobs none."""
    from squad.train.launcher import worker_resources

    assert worker_resources({"cpus_per_worker": 0.5, "use_gpu": False, "gpus_per_worker": 1.0}) == {"CPU": 0.5}
    assert worker_resources({"cpus_per_worker": 1.0, "use_gpu": True, "gpus_per_worker": 0.25}) == {"CPU": 1.0, "GPU": 0.25}
    cfg = load_config(ROOT / "configs" / "train.yaml", TrainConfig,
                      ["aligner.scaling.use_gpu=true", "aligner.scaling.gpus_per_worker=0.3",
                       f"aligner.deepspeed={ROOT / 'configs' / 'deepspeed_zero3.json'}"])
    assert cfg.aligner.scaling.gpus_per_worker == 0.3 and cfg.inspector.scaling.gpus_per_worker == 1.0
    with pytest.raises(ConfigError, match="gpus_per_worker"):
        load_config(ROOT / "configs" / "train.yaml", TrainConfig, ["aligner.scaling.gpus_per_worker=0"])


def test_only_zero3_gathers_weights_before_saving():
    from squad.train.aligner_loop import gathered_state

    class Engine:
        def __init__(self, stage):
            self.stage, self.asked = stage, []

        def zero_optimization_stage(self):
            return self.stage

        def _zero3_consolidated_16bit_state_dict(self, exclude_frozen_parameters=False):
            self.asked.append(exclude_frozen_parameters)
            return {"w": 1}

    assert gathered_state(None, {"mode": "lora"}) is None
    assert gathered_state(Engine(2), {"mode": "lora"}) is None
    lora, full = Engine(3), Engine(3)
    assert gathered_state(lora, {"mode": "lora"}) == {"w": 1} and lora.asked == [True]
    assert gathered_state(full, {"mode": "full"}) == {"w": 1} and full.asked == [False]


def test_a_finetuned_inspector_job_depends_only_on_its_own_rows(tmp_path: Path):
    """Changing honesty's triples retrains the honesty inspector (and ethics, independent of
    honesty), not the helpfulness one."""
    import shutil

    from squad.config.loading import load_config
    from squad.train.config import TrainConfig
    from squad.train.launcher import job_fingerprint, plan_jobs

    def fingerprints(policies: Path) -> dict[str, str]:
        cfg = load_config(ROOT / "configs" / "train_tiny.yaml", TrainConfig,
                          [f"policies={policies}", "inspector.kind=finetuned", "limit=null"])
        _, jobs, _ = plan_jobs(cfg, ROOT)
        return {name: job_fingerprint(loop, conf) for name, loop, conf, _ in jobs if name.startswith("inspector-")}

    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    before = fingerprints(tmp_path / "policies")
    path = tmp_path / "policies" / "honesty" / "data" / "corrections.jsonl"
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[1], rows[0], *rows[2:]]) + "\n")  # same rows, another order
    after = fingerprints(tmp_path / "policies")
    assert after["inspector-helpfulness"] == before["inspector-helpfulness"]
    assert after["inspector-honesty"] != before["inspector-honesty"]
    assert after["inspector-ethics"] != before["inspector-ethics"]


def _job(name, rows, cpus=0.5, workers=1):
    from squad.train.config import ScalingSpec

    conf = {"corrections": [{}] * rows, "good": []} if name.startswith("aligner") else {"rows": {"c": [{}] * rows}}
    return (name, "loop", conf, ScalingSpec(num_workers=workers, cpus_per_worker=cpus))


def test_launch_order_starts_the_longest_jobs_first_and_rejects_what_cannot_fit():
    from squad.train.launcher import launch_order

    jobs = [_job("aligner-a", 10), _job("inspector-a", 900), _job("aligner-b", 50), _job("inspector-b", 30)]
    assert [j[0] for j in launch_order(jobs, {"CPU": 2.0})] == ["aligner-b", "aligner-a", "inspector-a", "inspector-b"]
    with pytest.raises(ValueError, match="inspector-big needs .*lower inspector.scaling"):
        launch_order(jobs + [_job("inspector-big", 5, cpus=1.5, workers=2)], {"CPU": 2.0})
    assert len(launch_order(jobs + [_job("inspector-big", 5, cpus=1.5, workers=2)], None)) == 5  # no capacity: no check


def test_run_jobs_keeps_within_capacity_on_ray(ray_cluster):
    """Jobs wait in the launcher until their CPUs are free; with no capacity they all start at once."""
    import time

    from squad.train.launcher import run_jobs

    @ray_cluster.remote(num_cpus=0)
    def work(name):
        t = time.time()
        time.sleep(0.6)
        return f"{name}:{t}:{time.time()}"

    jobs = [_job(f"aligner-{i}", 10 - i) for i in range(5)]
    logs = []
    out = run_jobs(jobs, {"CPU": 1.0}, lambda name, *_: work.remote(name), logs.append)
    spans = {n: tuple(float(x) for x in str(p).split(":")[1:]) for n, p in out.items()}
    assert sorted(spans) == [j[0] for j in jobs]
    for n, (s, _) in spans.items():  # at most two 0.5-CPU jobs run at any moment
        assert sum(1 for s2, e2 in spans.values() if s2 <= s < e2) <= 2, n
    assert spans["aligner-0"][0] < spans["aligner-4"][0]  # most rows first
    assert "2 fit at once" in logs[0]
    logs = []
    run_jobs(jobs, None, lambda name, *_: work.remote(name), logs.append)
    assert logs[0].endswith("all at once")


@pytest.mark.parametrize("live", [False, True])
def test_workers_progress_is_drawn_by_the_driver(ray_cluster, live):
    """Bars in Ray workers report to the run's board; the driver draws them: a line per finished bar
    when the output is not a terminal, rich bars when it is."""
    import io

    from squad.train.progress import Bar, Display, start_board

    board, name = start_board()

    @ray_cluster.remote(num_cpus=0)
    def loop(board_name):
        bar = Bar("aligner/demo epoch 1/1", 3, board_name)
        for _ in range(3):
            bar.update(1)
        bar.set_description("aligner/demo epoch 1/1 loss 0.500")
        bar.close()
        return bar.local is None  # drawn by the driver, not by a tqdm of its own

    out = io.StringIO()
    with Display(board, stream=out, live=live):
        assert ray_cluster.get(loop.remote(name))
    text = out.getvalue()
    if live:
        assert "aligner/demo epoch 1/1 loss 0.500" in text and "3/3" in text
    else:
        assert text.splitlines() == [line for line in text.splitlines() if line.startswith("[squad] ")]
        assert re.fullmatch(r"\[squad\] aligner/demo epoch 1/1 loss 0\.500: 3/3 in \d+\.\d s\n", text)
    ray_cluster.kill(board)
