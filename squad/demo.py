"""`make demo`: load the default squad and correct a handful of sample answers."""
from __future__ import annotations

import textwrap
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


def _wrap(text: str, width: int = 96, indent: str = "    ") -> str:
    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent)


def main() -> None:
    import argparse

    from squad import Squad
    from squad.config.loading import ENGINES

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine", choices=ENGINES, default="auto", help="how the aligners decode (default: auto)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    squad = Squad.load("default", engine=args.engine)
    print(f"Loaded the default squad ({', '.join(squad.criteria)}) in {time.perf_counter() - t0:.1f}s\n")
    results = squad.correct_batch(SAMPLES)
    for i, c in enumerate(results, 1):
        print(f"[{i}] Q: {c.question}")
        print("  original:")
        print(_wrap(c.original))
        print("  scores  : " + "  ".join(f"{k}={c.initial_scores[k]:.2f}" for k in c.initial_scores))
        if not c.steps:
            print("  -> passes every inspector: left untouched")
        for s in c.steps:
            print(f"  step    : {s.criterion:<12} score {s.score_before:.2f} < threshold {s.threshold:.2f}"
                  f" -> {s.outcome} ({s.latency_ms:.0f} ms)")
        if c.changed:
            print("  corrected:")
            print(_wrap(c.answer))
            print("  final   : " + "  ".join(f"{k}={c.scores[k]:.2f}" for k in c.scores))
        print()
    print("| # | changed | aligners applied | min score before -> after |")
    print("|---|---|---|---|")
    for i, c in enumerate(results, 1):
        print(f"| {i} | {'yes' if c.changed else 'no'} | {', '.join(s.criterion for s in c.steps) or '-'} | "
              f"{min(c.initial_scores.values()):.2f} -> {min(c.scores.values()):.2f} |")
    print(f"\n{len(results)} answers in {time.perf_counter() - t0:.1f}s, loading included "
          f"(aligners on {squad.aligner.engine.name})")


if __name__ == "__main__":
    main()
