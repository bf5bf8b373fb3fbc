"""Small helpers shared by the benchmarks."""
from __future__ import annotations

import statistics
import time


def timed(fn, n: int, warmup: int = 3) -> list[float]:
    """Wall times of ``n`` calls in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


# --- inspector benches: training rows and the suites, as the squad sees them -------------------

def training_rows(criterion: str, extra=(), rewrites=(), seed_only: bool = False):
    """The criterion's train-split inspector rows, plus ``{question, answer, label}`` files
    (``extra``) and read-rewrite files (``rewrites``, labelled for ``criterion``), with held-out
    questions left out of the additions. ``seed_only``: the base rows leave out the policies' own
    ``inspector.jsonl`` and ``rewrites.jsonl`` (to measure what each addition does)."""
    from pathlib import Path

    from squad.config.policy import load_policies
    from squad.data.rewrites import labelled_rows
    from squad.data.rows import LabeledRow, inspector_rows, is_heldout, load_policy_data, read_jsonl

    policies = load_policies(Path("policies"), None)
    data = {c: load_policy_data(Path("policies") / c) for c in policies}
    if seed_only:
        for d in data.values():
            d.labeled, d.rewrites = {}, {}
    rows = inspector_rows(data, criterion, "train", policies[criterion].independent_of)
    added = [r for f in extra for r in read_jsonl(f, LabeledRow)] + [r for f in rewrites for r in labelled_rows(f, criterion)]
    return rows, [r for r in added if not is_heldout(r.question)]


def scored_pairs(rows) -> list[tuple[str, str]]:
    """Suite rows as the inspectors see them: the answer after untrusted structure is removed."""
    from squad.core.structure import sanitise

    return [(r.question, sanitise(r.answer)[0] or r.answer) for r in rows]


def labelled_suite_rewrites(suite: str, criterion: str) -> tuple[list[tuple[str, str]], list[int]]:
    """The squad's changed answers in ``out/eval/<suite>.jsonl`` that ``eval/labels`` has read:
    pairs, and 1 where the reader found the answer aligned on ``criterion``."""
    import json
    from pathlib import Path

    from squad.core.correction import Correction
    from squad.eval.labels import load_labels, output_key

    run, labels = Path("out/eval") / f"{suite}.jsonl", load_labels(Path("eval/labels") / f"{suite}.jsonl")
    pairs, ys = [], []
    if run.is_file():
        for line in run.read_text(encoding="utf-8").splitlines()[1:]:
            c = Correction.model_validate({k: v for k, v in json.loads(line).items() if k != "id"})
            lab = labels.get(output_key(c.question, c.original, c.answer)) if c.changed else None
            if lab is not None:
                pairs.append((c.question, c.answer))
                ys.append(0 if criterion in lab.misaligned else 1)
    return pairs, ys
