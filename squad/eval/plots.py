"""Pictures of an evaluation run: what the squad moved, and whether the inspectors' scores mean what they say.

- ``eval-scores-<name>.png``: per criterion, the inspector's score of each answer before correction
  (the input) and after (the final answer), for the rows hand-labelled misaligned on that criterion
  and for the rest, with the threshold;
- ``eval-reliability-<name>.png``: per inspector, binned predicted P(aligned) against the share of
  rows the hand labels call aligned on that criterion, with the count per bin, ECE and Brier score.

The figures are computed first (``reliability``, ``ece``, ``brier``, ``score_groups``: plain lists,
unit-tested) and drawn after; drawing uses ``squad.plots.pyplot()`` (Agg, PNG files).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from squad.core.correction import Correction
from squad.eval.suites import SuiteRow

BEFORE, AFTER = "tab:blue", "tab:orange"


@dataclass(frozen=True)
class Bin:
    """One reliability bin ``[lo, hi)`` (the last one includes 1.0)."""

    lo: float
    hi: float
    n: int
    mean_score: float | None      # mean predicted P(aligned) of the items in the bin
    frac_aligned: float | None    # share of them labelled aligned


def reliability(labels: list[int], scores: list[float], n_bins: int = 10) -> list[Bin]:
    """Equal-width bins over [0, 1]; ``labels`` are 1 for aligned, 0 for misaligned."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} scores")
    members: list[list[int]] = [[] for _ in range(n_bins)]
    for k, s in enumerate(scores):
        members[min(int(s * n_bins), n_bins - 1)].append(k)
    out = []
    for b, idx in enumerate(members):
        n = len(idx)
        out.append(Bin(b / n_bins, (b + 1) / n_bins, n,
                       sum(scores[k] for k in idx) / n if n else None,
                       sum(labels[k] for k in idx) / n if n else None))
    return out


def ece(bins: list[Bin]) -> float | None:
    """Expected calibration error: the count-weighted mean gap between a bin's mean score and its
    observed share aligned."""
    total = sum(b.n for b in bins)
    if not total:
        return None
    return sum(b.n * abs(b.mean_score - b.frac_aligned) for b in bins if b.n) / total


def brier(labels: list[int], scores: list[float]) -> float | None:
    """Mean squared gap between predicted P(aligned) and the 0/1 label."""
    return sum((s - y) ** 2 for y, s in zip(labels, scores)) / len(labels) if labels else None


def suite_labels(rows: list[SuiteRow], criterion: str) -> list[int]:
    """1 where the hand label says the answer is aligned on ``criterion``, 0 where it fails it."""
    return [0 if criterion in r.misaligned else 1 for r in rows]


def score_groups(rows: list[SuiteRow], results: list[Correction], criterion: str) -> dict[str, dict[str, list[float]]]:
    """Initial and final scores on ``criterion``, split into the rows misaligned on it and the rest."""
    out: dict[str, dict[str, list[float]]] = {g: {"before": [], "after": []} for g in ("misaligned", "good")}
    for y, res in zip(suite_labels(rows, criterion), results):
        g = out["good" if y else "misaligned"]
        g["before"].append(res.initial_scores[criterion])
        g["after"].append(res.scores[criterion])
    return out


def share_under(scores: list[float], threshold: float) -> float | None:
    return sum(s < threshold for s in scores) / len(scores) if scores else None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _score_panel(ax, d: dict[str, list[float]], threshold: float) -> None:
    """Histograms (log counts) of the scores before (outline) and after (filled), the threshold, and
    the share under it before and after."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.axvline(threshold, color="tab:red", ls="--", lw=1.2)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    if not d["before"]:
        ax.text(0.5, 0.5, "no such rows in this suite", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_yticks([])
        return
    edges = [i / 20 for i in range(21)]
    after, _, _ = ax.hist(d["after"], bins=edges, alpha=0.45, color=AFTER, log=True)
    before, _, _ = ax.hist(d["before"], bins=edges, histtype="step", lw=1.8, color=BEFORE, log=True)
    ax.set_ylim(0.7, 8 * max(*after, *before))  # head room for the note
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.text(0.03, 0.96, f"under {threshold:g}: {_pct(share_under(d['before'], threshold))} before, "
                        f"{_pct(share_under(d['after'], threshold))} after",
            transform=ax.transAxes, va="top", fontsize=8.5,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.8", "alpha": 0.9})


def _save(plt, fig, path: Path, title: str, bottom: float = 0.0) -> Path:
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def draw_scores(path: Path, name: str, groups: dict[str, dict[str, dict[str, list[float]]]],
                thresholds: dict[str, float]) -> Path:
    """One column per criterion (``groups`` from ``score_groups``): top its misaligned answers, bottom
    the others."""
    from squad.plots import pyplot

    plt = pyplot()
    crits = list(groups)
    fig, axes = plt.subplots(2, len(crits), figsize=(max(4.2 * len(crits), 6.5), 6.6), dpi=110, squeeze=False,
                             sharex=True)
    for j, c in enumerate(crits):
        for i, (g, verb) in enumerate([("misaligned", "failing"), ("good", "passing")]):
            ax = axes[i][j]
            ax.set_title(f"answers {verb} {c} by hand label (n={len(groups[c][g]['before'])})", fontsize=10)
            _score_panel(ax, groups[c][g], thresholds[c])
        axes[1][j].set_xlabel(f"{c} inspector: P(aligned)")
    for row in axes:
        row[0].set_ylabel("answers (log scale)")
    handles = [plt.Line2D([], [], color=BEFORE, lw=1.8, label="before correction (the input answer)"),
               plt.Rectangle((0, 0), 1, 1, color=AFTER, alpha=0.45, label="after correction (the final answer)"),
               plt.Line2D([], [], color="tab:red", ls="--", label="threshold")]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=9)
    return _save(plt, fig, path, f"Inspector scores before and after the squad, by hand label: {name}", bottom=0.05)


def _reliability_panels(top, bottom, labels: list[int], scores: list[float], threshold: float, n_bins: int) -> None:
    """The curve over the diagonal (ECE and Brier score in the legend) above, the count per bin below."""
    bins = reliability(labels, scores, n_bins)
    full = [b for b in bins if b.n]
    top.plot([0, 1], [0, 1], ":", color="0.5", label="perfectly calibrated")
    top.plot([b.mean_score for b in full], [b.frac_aligned for b in full], "o-", color="tab:green",
             label=f"ECE {ece(bins):.3f}, Brier {brier(labels, scores):.3f}" if full else "no rows")
    top.axvline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
    top.set(xlim=(0, 1), ylim=(-0.03, 1.03))
    top.grid(alpha=0.3)
    top.legend(loc="best", fontsize=8.5)
    centres = [(b.lo + b.hi) / 2 for b in bins]
    most = max(b.n for b in bins)
    bottom.bar(centres, [b.n for b in bins], width=0.9 / n_bins, color="0.6")
    for x, b in zip(centres, bins):
        if b.n:
            bottom.text(x, b.n + 0.03 * most, str(b.n), ha="center", va="bottom", fontsize=7)
    bottom.set_ylim(0, most * 1.35 + 1)
    bottom.grid(alpha=0.3, axis="y")


def draw_reliability(path: Path, name: str, data: dict[str, tuple[list[int], list[float]]],
                     thresholds: dict[str, float], n_bins: int = 10) -> Path:
    """One column per inspector: ``data`` maps it to (hand labels, scores)."""
    from squad.plots import pyplot

    plt = pyplot()
    crits = list(data)
    fig, axes = plt.subplots(2, len(crits), figsize=(max(4.2 * len(crits), 6.5), 6.2), dpi=110, squeeze=False,
                             sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    for j, c in enumerate(crits):
        axes[0][j].set_title(f"{c} inspector (n={len(data[c][0])})")
        _reliability_panels(axes[0][j], axes[1][j], *data[c], thresholds[c], n_bins)
        axes[1][j].set_xlabel("predicted P(aligned), binned")
    axes[0][0].set_ylabel("observed share aligned (hand labels)")
    axes[1][0].set_ylabel("answers per bin")
    return _save(plt, fig, path, f"Inspector calibration on the input answers: {name}")


def calibration_figures(data: dict[str, tuple[list[int], list[float]]], n_bins: int = 10) -> dict[str, dict]:
    """ECE, Brier score and n per inspector: the numbers in the reliability picture's legends."""
    return {c: {"n": len(y), "ece": ece(reliability(y, s, n_bins)), "brier": brier(y, s)} for c, (y, s) in data.items()}


def suite_calibration_data(rows: list[SuiteRow], results: list[Correction],
                           criteria: list[str]) -> dict[str, tuple[list[int], list[float]]]:
    """Per criterion: the hand labels of the input answers and the inspector's initial scores."""
    return {c: (suite_labels(rows, c), [r.initial_scores[c] for r in results]) for c in criteria}


def plot_suite(folder: Path, name: str, rows: list[SuiteRow], results: list[Correction],
               thresholds: dict[str, float]) -> list[Path]:
    """Both pictures of one suite run into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    crits = list(thresholds)
    return [draw_scores(folder / f"eval-scores-{name}.png", name,
                        {c: score_groups(rows, results, c) for c in crits}, thresholds),
            draw_reliability(folder / f"eval-reliability-{name}.png", name,
                             suite_calibration_data(rows, results, crits), thresholds)]


def probe_calibration_data(probe: list[tuple[str, str, int, str | None]], scores: list[dict[str, float]],
                           criteria: list[str]) -> dict[str, tuple[list[int], list[float]]]:
    """The held-out split, as ``squad.eval.metrics`` tests the inspectors: per criterion, its own probe
    items (misaligned answers 0; good answers and reference corrections 1) and their scores.
    Criteria with no item are left out."""
    out = {}
    for c in criteria:
        own = [k for k, p in enumerate(probe) if p[3] == c]
        if own:
            out[c] = ([probe[k][2] for k in own], [scores[k][c] for k in own])
    return out
