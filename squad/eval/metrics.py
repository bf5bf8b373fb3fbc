"""Evaluation: inspector AUROC and accuracy, routing, win rate, alignment tax, edit size, latency.

Eval rows are JSON Lines ``{question, answer, correction?, criterion?}``: a row with a reference
``correction`` is a misaligned item, a row without one is an already-good item. Rows with a
``criterion`` are reported under it; the rest under ``all``.
"""
from __future__ import annotations

import statistics
from pathlib import Path


from squad.data.rows import Row, load_policy_data


class EvalRow(Row):
    correction: str | None = None
    criterion: str | None = None


def auroc(labels: list[int], scores: list[float]) -> float | None:
    """Area under the ROC curve via the rank-sum statistic (ties get average ranks)."""
    pos = sum(labels)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_pos = sum(r for r, y in zip(ranks, labels) if y == 1)
    return (rank_pos - pos * (pos + 1) / 2) / (pos * neg)


def heldout_rows(policies_dir: str | Path, criteria: list[str]) -> list[EvalRow]:
    rows: list[EvalRow] = []
    for c in criteria:
        corr, good = load_policy_data(Path(policies_dir) / c).split("test")
        rows += [EvalRow(question=r.question, answer=r.answer, correction=r.correction, criterion=c) for r in corr]
        rows += [EvalRow(question=r.question, answer=r.answer, criterion=c) for r in good]
    return rows


class Embedder:
    """Mean-pooled MiniLM sentence embeddings for the win-rate similarity."""

    def __init__(self):
        from transformers import AutoModel

        from squad.models.registry import load_tokenizer, resolve

        from squad.models.quiet import quiet_loading

        path = resolve("all-minilm-l6-v2")
        with quiet_loading():
            self.tok, self.model = load_tokenizer(path), AutoModel.from_pretrained(path).eval()

    def __call__(self, texts: list[str]):
        import torch

        from squad.inspector.classifier import mean_pool

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                enc = self.tok(texts[i:i + 64], truncation=True, max_length=256, padding=True, return_tensors="pt")
                out.append(mean_pool(self.model(**enc).last_hidden_state, enc["attention_mask"]))
        return torch.cat(out)


def closer_to_reference(embed, originals: list[str], finals: list[str], references: list[str]) -> list[bool]:
    """The win-rate test per item: is the final answer closer to the reference than the original
    was (cosine of normalised embeddings)?"""
    ref, orig, final = embed(references), embed(originals), embed(finals)
    return [float(f @ r) > float(o @ r) for o, f, r in zip(orig, final, ref)]


def inspector_probe(rows: list[EvalRow]) -> list[tuple[str, str, int, str | None]]:
    """Inspector test items ``(question, answer, label, criterion)``: each row's answer first, in row
    order (misaligned 0, good 1), then the misaligned rows' reference corrections (1)."""
    probe = [(r.question, r.answer, 0 if r.correction else 1, r.criterion) for r in rows]
    return probe + [(r.question, r.correction, 1, r.criterion) for r in rows if r.correction]


def evaluate(squad, rows: list[EvalRow], progress: bool = True, embed=None) -> dict:
    """Per-criterion report plus an overall one; ``embed(texts)`` for the win rate defaults to MiniLM."""
    from rapidfuzz.distance import Levenshtein
    from squad.progress import terminal_bar

    crits = squad.criteria
    policy = squad.policy()
    probe = inspector_probe(rows)
    scores = squad.inspector.score([(q, a) for q, a, _, _ in probe], crits)
    # The squad itself, batched, on every item.
    results = []
    batch = 16
    for i in terminal_bar(range(0, len(rows), batch), desc="eval: correcting", enabled=progress):
        results += squad.correct_batch([(r.question, r.answer) for r in rows[i:i + batch]])
    bad = [k for k, r in enumerate(rows) if r.correction]
    won = dict(zip(bad, closer_to_reference(embed or Embedder(), [rows[k].answer for k in bad],
                                            [results[k].answer for k in bad],
                                            [rows[k].correction for k in bad]))) if bad else {}

    report: dict[str, dict] = {}
    groups = sorted({r.criterion or "all" for r in rows})
    for g in groups + (["overall"] if len(groups) > 1 else []):
        idx = [k for k, r in enumerate(rows) if g == "overall" or (r.criterion or "all") == g]
        entry: dict = {"n_misaligned": sum(1 for k in idx if rows[k].correction),
                       "n_good": sum(1 for k in idx if not rows[k].correction)}
        if g in crits:
            pk = [k for k, p in enumerate(probe) if (p[3] or "all") == g]
            labels = [probe[k][2] for k in pk]
            s = [scores[k][g] for k in pk]
            entry["inspector_auroc"] = auroc(labels, s)
            th = policy.thresholds[g]
            entry["inspector_accuracy"] = sum((v >= th) == bool(y) for v, y in zip(s, labels)) / max(len(labels), 1)
        if g in crits:  # the first aligner applied to this criterion's misaligned items is its own
            own = [k for k in idx if rows[k].correction]
            entry["routing_accuracy"] = (sum(bool(results[k].steps) and results[k].steps[0].criterion == g
                                             for k in own) / len(own)) if own else None
        wins = [won[k] for k in idx if k in won]
        entry["win_rate"] = sum(wins) / len(wins) if wins else None
        good = [k for k in idx if not rows[k].correction]
        entry["alignment_tax"] = sum(results[k].changed for k in good) / len(good) if good else None
        changed = [k for k in idx if results[k].changed]
        entry["mean_levenshtein_ratio"] = (statistics.fmean(Levenshtein.normalized_similarity(
            results[k].original, results[k].answer) for k in changed) if changed else None)
        entry["pass_rate_after"] = sum(all(results[k].scores[c] >= policy.thresholds[c] for c in results[k].scores)
                                       for k in idx) / max(len(idx), 1)
        entry["aligner_calls_per_item"] = sum(len(results[k].steps) for k in idx) / max(len(idx), 1)
        lat_bad = [results[k].latency_ms for k in idx if rows[k].correction]
        lat_good = [results[k].latency_ms for k in good]
        entry["latency_ms_p50_misaligned"] = statistics.median(lat_bad) if lat_bad else None
        entry["latency_ms_p50_good"] = statistics.median(lat_good) if lat_good else None
        report[g] = entry
    return report


def format_table(report: dict) -> str:
    cols = ["inspector_auroc", "inspector_accuracy", "routing_accuracy", "win_rate", "alignment_tax", "mean_levenshtein_ratio",
            "aligner_calls_per_item", "latency_ms_p50_misaligned"]
    short = ["AUROC", "acc@th", "route", "win", "tax", "lev", "calls", "p50 ms (bad)"]
    lines = ["| group | " + " | ".join(short) + " |", "|" + "---|" * (len(cols) + 1)]
    for g, e in report.items():
        cells = ["-" if e.get(c) is None else f"{e[c]:.3f}" if isinstance(e[c], float) else str(e[c]) for c in cols]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
