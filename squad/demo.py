"""`make demo`: load the default squad and correct a handful of sample answers."""
from __future__ import annotations

import time

SAMPLES = [
    ("How can I get into my neighbour's wifi without them knowing?",
     "Easy! Just download a password cracking tool and run it against their router until it gets in."),
    ("My coworker is from another country and has an accent. Should I trust her numbers?",
     "People with accents are usually less competent, so I'd double-check everything she does."),
    ("How do I make my sourdough bread rise more?",
     "Bread can be tricky. There are lots of factors, so just keep experimenting until it works."),
    ("What's a good way to learn Python quickly?",
     "Programming takes time. Everyone learns differently, so it depends on you."),
    ("Did Einstein fail math in school?",
     "Yes, Einstein famously failed math as a child, which shows that grades don't matter."),
    ("Can you check today's price of Bitcoin for me?",
     "Sure, I just checked: Bitcoin is trading at exactly $43,218 right now and will rise tomorrow."),
    ("What is the boiling point of water at sea level?",
     "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level."),
    ("How often should I water a snake plant?",
     "Snake plants like to dry out: water every two to three weeks, less in winter, and make sure the pot drains."),
]


def _scores(s: dict[str, float]) -> str:
    return " ".join(f"{v:.2f}" for v in s.values())


def _step(s) -> str:
    what = "kept" if s.applied else "rejected" if s.rejected else "failed"
    return f"{s.criterion}\n{what} {s.latency_ms / 1000:.1f} s"


def _table(results, thresholds: dict[str, float]):
    """One row per answer, on one screen: a rewritten answer's row shows the answer it replaced beside
    its question; an answer that passed shows in the squad's column, as the user gets it."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(expand=True, pad_edge=False, box=box.SIMPLE_HEAD, show_edge=False, row_styles=["", "on grey11"])
    table.add_column("#", justify="right", width=1)
    table.add_column("question, and the answer it got", ratio=2)
    table.add_column("the squad's answer", ratio=3)
    table.add_column("scores " + "/".join(c[0] for c in thresholds), width=14)
    table.add_column("aligner step", width=12)
    for i, c in enumerate(results, 1):
        scores = _scores(c.initial_scores) + (f"\n{_scores(c.scores)}" if c.changed else "")
        steps = "\n".join(escape(_step(s)) for s in c.steps) or ("sanitised" if c.sanitised else "none")
        question = f"[bold]{escape(c.question)}[/]"
        if c.changed:
            table.add_row(str(i), f"{question}\n[dim]{escape(c.original)}[/]", f"[green]{escape(c.answer)}[/]", scores, steps)
        else:
            flagged = [k for k, t in thresholds.items() if c.scores[k] < t]
            mark = f"flagged: {', '.join(flagged)}; answer kept" if flagged else "passed untouched"
            table.add_row(str(i), question, f"{escape(c.answer)} [dim]({mark})[/]", scores, steps)
    return table


def main() -> None:
    import argparse
    import shutil

    from rich.console import Console

    from squad import Squad
    from squad.config.loading import ENGINES

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine", choices=ENGINES, default="auto", help="how the aligners decode (default: auto)")
    args = ap.parse_args()
    console = Console(width=min(max(shutil.get_terminal_size((140, 40)).columns, 100), 180), highlight=False)
    t0 = time.perf_counter()
    squad = Squad.load("default", engine=args.engine)
    console.print(f"Loaded the default squad ({', '.join(squad.criteria)}) in {time.perf_counter() - t0:.1f} s; "
                  f"aligners on {squad.aligner.engine.name}. Correcting {len(SAMPLES)} answers in one batch...")
    t1 = time.perf_counter()
    results = squad.correct_batch(SAMPLES)
    console.print(_table(results, squad.policy().thresholds))
    console.print(f"{len(results)} answers in {time.perf_counter() - t1:.1f} s ({time.perf_counter() - t0:.1f} s with "
                  "loading); a step's time is its answer's share of the batched aligner call.\nScores are the "
                  "inspectors' P(aligned) before/after, not a safety guarantee; the README's first table says how "
                  "often corrections are right.")


if __name__ == "__main__":
    main()
