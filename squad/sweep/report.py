"""Sweep results: the Pareto front of quality against aligner calls, a markdown table, the plot."""
from __future__ import annotations

from pathlib import Path


def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices not dominated when minimising x (aligner calls) and maximising y (quality); of equal
    points, the first stands for the rest."""
    pts = list(zip(xs, ys))
    return [i for i, (x, y) in enumerate(pts) if pts.index((x, y)) == i
            and not any(a <= x and b >= y and (a < x or b > y) for a, b in pts)]


def markdown_table(trials: list[dict], criteria: list[str]) -> str:
    head = ["trial", *criteria, "steps", "win", "pass", "calls", "est ms", "objective", "misses", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in trials:
        mark = ("best " if t.get("best") else "") + ("pareto" if t.get("pareto") else "")
        cells = [t["trial"], *(f"{t['thresholds'][c]:.3f}" for c in criteria), str(t["max_steps"]),
                 f"{t['win_rate']:.3f}", f"{t['pass_rate']:.3f}", f"{t['aligner_calls']:.2f}",
                 f"{t['latency_ms']:.0f}", f"{t['objective']:.4f}", str(t["aligner_misses"]), mark.strip()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: Path, xs: list[float], ys: list[float], front: list[int], best: int) -> Path:
    """Quality against aligner calls per sample, the Pareto front and the chosen trial highlighted."""
    from squad.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    ax.scatter(xs, ys, c="0.6", s=25, label="trial")
    f = sorted(front, key=lambda i: xs[i])
    ax.plot([xs[i] for i in f], [ys[i] for i in f], "o-", c="tab:red", label="Pareto front")
    ax.scatter([xs[best]], [ys[best]], marker="*", s=200, c="gold", edgecolors="k", zorder=3, label="chosen")
    ax.set(xlabel="aligner calls per sample", ylabel="quality (weighted win rate + pass rate)",
           title="Threshold sweep: quality against aligner calls")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
