"""Fit the hidden-state judge (squad.inspector.probe) into a bundle: one logistic head per criterion
on the aligner base's hidden states, from the same training rows as the inspectors."""
from __future__ import annotations

from pathlib import Path

from squad.models.bundle import ProbeSpec
from squad.train.config import ProbeTrain


def probe_rows(policies: dict, data: dict, limit: int | None) -> dict[str, list[tuple[str, str, int]]]:
    """Each criterion's train-split inspector rows as (question, answer, label); with ``limit`` (quick
    runs), at most that many of each label."""
    from squad.data.rows import inspector_rows

    rows = {}
    for c, pol in policies.items():
        rs = inspector_rows(data, c, "train", pol.independent_of)
        if limit:
            rs = [r for r in rs if r.label == 0][:limit] + [r for r in rs if r.label == 1][:limit]
        rows[c] = [(r.question, r.answer, r.label) for r in rs]
    return rows


def fit_probe(p: ProbeTrain, base: str, policies: dict, data: dict, bundle_dir: Path, limit: int | None = None,
              log=print) -> ProbeSpec:
    """Compute the features on ``base`` (the aligner base), fit the heads, write them into ``bundle_dir``;
    returns the manifest entry."""
    import time

    from squad.inspector.probe import HiddenStateProbe, fit_heads, save_probe_heads
    from squad.models.registry import resolve

    spec = ProbeSpec(base=base, layer=p.layer, weight=p.weight, inspector_cap=p.inspector_cap,
                     max_question_tokens=p.max_question_tokens, max_answer_tokens=p.max_answer_tokens)
    rows = probe_rows(policies, data, limit)
    probe = HiddenStateProbe(resolve(base), p.layer, max_question_tokens=p.max_question_tokens,
                             max_answer_tokens=p.max_answer_tokens, batch_size=p.batch_size)
    started, shown = time.time(), [0.0]

    def progress(done: int, total: int) -> None:
        if time.time() - shown[0] > 30 or done == total:
            shown[0] = time.time()
            log(f"[squad] judge features: {done}/{total} pairs, {time.time() - started:.0f}s")

    heads = fit_heads(probe, rows, p.l2, progress)
    save_probe_heads(heads, bundle_dir / spec.heads)
    log(f"[squad] judge heads for {', '.join(heads)} fitted on layer {p.layer} in {time.time() - started:.0f}s")
    return spec
