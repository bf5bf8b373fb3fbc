"""Threshold sweeps (squad/sweep/run.py): a tiny grid through `squad sweep`, the replay cache, write-back."""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from squad.config.loading import load_config
from squad.sweep.config import SweepConfig, grid_size, tune_space
from squad.sweep.report import pareto_front
from squad.sweep.write_back import write_back

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent
TINY_GRID = """
name: tiny
method: grid
metric: {name: objective, goal: maximize}
parameters:
  thresholds:
    parameters:
      ethics: {values: [0.3, 0.7]}
      helpfulness: {value: 0.95}
      honesty: {value: 0.95}
  max_steps: {values: [1, 3]}
squad: {rows: 6}
"""


def sweep_cli(argv: list[str]) -> int:
    from squad.cli.sweep import register

    p = argparse.ArgumentParser(prog="squad")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.fn(args)


def test_shipped_config_translates_to_tune():
    cfg = load_config(ROOT / "configs" / "sweep.yaml", SweepConfig)
    space = tune_space(cfg.parameters, cfg.method)
    assert set(space["thresholds"]) == {"ethics", "helpfulness", "honesty"} and "max_steps" in space
    assert "squad" not in cfg.wandb_dict() and cfg.wandb_dict()["method"] == cfg.method


def test_pareto_front():
    xs, ys = [0.0, 1.0, 1.0, 2.0, 0.5], [0.2, 0.8, 0.5, 0.8, 0.1]
    assert pareto_front(xs, ys) == [0, 1]
    assert pareto_front([1.0, 1.0, 2.0], [0.5, 0.5, 0.4]) == [0]  # equal points: the first stands for them


@pytest.fixture(scope="module")
def swept(ray_cluster, tiny_bundle, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("WANDB_MODE", "offline")
    work = tmp_path_factory.mktemp("sweep")
    (work / "grid.yaml").write_text(TINY_GRID)
    squad_yaml = work / "squad.yaml"
    shutil.copy(ROOT / "squad.yaml", squad_yaml)
    code = sweep_cli(["sweep", str(work / "grid.yaml"), "--bundle", str(tiny_bundle), "--output", str(work / "out"),
                      "--write-back", str(squad_yaml)])
    assert code == 0
    return work


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_tiny_grid_outputs(swept: Path):
    out = swept / "out"
    trials = list(csv.DictReader(open(out / "trials.csv")))
    assert len(trials) == 4 == grid_size(SweepConfig.model_validate(yaml.safe_load(TINY_GRID)).parameters)
    assert {(t["threshold.ethics"], t["max_steps"]) for t in trials} == {("0.3", "1"), ("0.3", "3"), ("0.7", "1"), ("0.7", "3")}
    assert sum(t["best"] == "True" for t in trials) == 1 and any(t["pareto"] == "True" for t in trials)
    runs = list((out / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 4, "one offline W&B run per trial"
    png = (out / "quality_vs_calls.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["front"] and pareto["chosen"]["thresholds"]["helpfulness"] == 0.95
    # The cache: a max_steps=1 path is a prefix of the max_steps=3 path with the same thresholds, so the real
    # aligner calls are bounded by the max_steps=3 trials' steps, and every trial after the first few is free.
    rows = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    steps_at_3 = sum(round(r["aligner_calls"] * 6) for r in rows if r["max_steps"] == 3)
    real = pareto["cache"]["aligner_misses"]
    assert 0 < real <= steps_at_3 < sum(round(r["aligner_calls"] * 6) for r in rows)
    assert pareto["cache"]["aligner_lookups"] > real
    assert pareto["cache"]["inspector_misses"] < pareto["cache"]["inspector_lookups"]


def test_write_back_changes_only_thresholds(swept: Path):
    old_text, new_text = (ROOT / "squad.yaml").read_text(), (swept / "squad.yaml").read_text()
    chosen = json.loads((swept / "out" / "pareto.json").read_text())["chosen"]
    old, new = yaml.safe_load(old_text), yaml.safe_load(new_text)
    dep = next(d for d in new["applications"][0]["deployments"] if d["name"] == "SquadIngress")
    assert dep["user_config"]["thresholds"] == pytest.approx(chosen["thresholds"])
    assert dep["user_config"]["max_steps"] == chosen["max_steps"]
    for d in old["applications"][0]["deployments"]:
        if d["name"] == "SquadIngress":
            d["user_config"].update(thresholds=dep["user_config"]["thresholds"], max_steps=chosen["max_steps"])
    assert old == new
    changed = [(a, b) for a, b in zip(old_text.splitlines(), new_text.splitlines()) if a != b]
    assert len(old_text.splitlines()) == len(new_text.splitlines()) and len(changed) <= 2  # comments all kept


def test_write_back_block_style(tmp_path: Path):
    p = tmp_path / "s.yaml"
    p.write_text("applications:\n  - name: a  # app\n    deployments:\n      - name: SquadIngress\n"
                 "        user_config:\n          thresholds:   # per criterion\n            ethics: 0.5\n"
                 "            honesty: 0.5\n          fail_closed: false\n      - name: Inspector\n")
    write_back(p, {"ethics": 0.25, "honesty": 0.75}, 2)
    cfg = yaml.safe_load(p.read_text())
    uc = cfg["applications"][0]["deployments"][0]["user_config"]
    assert uc == {"thresholds": {"ethics": 0.25, "honesty": 0.75}, "fail_closed": False, "max_steps": 2}
    assert "# per criterion" in p.read_text() and "# app" in p.read_text()


def test_replay_equals_fresh_correct_batch(tiny_bundle: Path):
    """In-process evaluator: replayed Corrections equal a fresh Squad.correct_batch; a second pass is all hits."""
    from squad import Squad
    from squad.eval.metrics import heldout_rows
    from squad.sweep.evaluator import Evaluator

    squad = Squad.load(tiny_bundle)
    rows = heldout_rows(ROOT / "policies", squad.criteria)[::40][:5]
    ev = Evaluator(str(tiny_bundle), rows)
    th = {"ethics": 0.7, "helpfulness": 0.95, "honesty": 0.3}
    cfg = {"thresholds": th, "max_steps": squad.manifest.max_steps}
    first = ev.trial(cfg)
    assert first["aligner_misses"] > 0
    again = ev.trial(cfg)
    assert again["aligner_misses"] == again["inspector_misses"] == 0
    assert {k: again[k] for k in ("objective", "win_rate", "aligner_calls")} == \
        {k: first[k] for k in ("objective", "win_rate", "aligner_calls")}
    replayed = ev.corrections(cfg)
    fresh = squad.correct_batch([(r.question, r.answer) for r in rows], thresholds=th)
    for a, b in zip(replayed, fresh):
        assert a.answer == b.answer and [s.criterion for s in a.steps] == [s.criterion for s in b.steps]
        assert a.scores == pytest.approx(b.scores, abs=1e-5)
        assert a.initial_scores == pytest.approx(b.initial_scores, abs=1e-5)


def test_prefetch_covers_every_point_of_the_space(tiny_bundle: Path):
    """After prefetching the space's reachable aligner steps, trials anywhere in it make no model call."""
    import itertools
    import random

    from squad.eval.metrics import heldout_rows
    from squad.sweep.evaluator import Evaluator
    from squad.sweep.run import search_bounds

    cfg = load_config(ROOT / "configs" / "sweep.yaml", SweepConfig, ["parameters.max_steps.values=[1,2]"])
    from squad.models.bundle import read_manifest

    manifest = read_manifest(tiny_bundle)
    low, high, steps, prio = search_bounds(cfg, manifest)
    assert (low["ethics"], high["ethics"], steps) == (0.2, 0.8, 2)
    ev = Evaluator(str(tiny_bundle), heldout_rows(ROOT / "policies", list(manifest.criteria))[::25][:8])
    found = ev.prefetch(low, high, steps, prio)
    assert found >= ev.counts["aligner_misses"] > 0  # equal (criterion, pair) steps share a cache entry
    rng = random.Random(0)
    corners = itertools.product(*[(low[c], high[c] - 1e-9) for c in sorted(low)])
    points = [dict(zip(sorted(low), p)) for p in corners] + \
             [{c: rng.uniform(low[c], high[c]) for c in low} for _ in range(20)]
    for th in points:
        for max_steps in (1, 2):
            m = ev.trial({"thresholds": th, "max_steps": max_steps})
            assert m["aligner_misses"] == 0, (th, max_steps)
