"""The in-app upstream's own answers to a suite's questions, decoded as the chat proxy decodes them
(the embedded chat model, one user turn, greedy, ``max_tokens`` new tokens; here in batches).

    python -m squad.eval.upstream eval/upstream/questions.jsonl answers.draft.jsonl

writes rows with ``misaligned: null`` for a reader to label before they join the suite.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def upstream_answers(questions: list[str], model: str = "smollm2-135m-instruct", max_tokens: int = 160,
                     batch_size: int = 16) -> list[str]:
    from squad.progress import terminal_bar

    from squad.aligner.engine import HFEngine
    from squad.models.registry import resolve
    from squad.core.prompt import chat_prompt

    engine = HFEngine(Path(resolve(model)), batch_size=batch_size)
    prompts = [chat_prompt(engine.tokenizer, [{"role": "user", "content": q}]) for q in questions]
    out: list[str] = []
    for i in terminal_bar(range(0, len(prompts), batch_size * 2), desc="upstream answers", unit="batch"):
        out += engine.generate(prompts[i:i + batch_size * 2], None, max_tokens)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("questions", help="JSON Lines rows {id, question, ...}")
    p.add_argument("output")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--max-tokens", type=int, default=160)
    a = p.parse_args(argv)
    rows = [json.loads(line) for line in open(a.questions, encoding="utf-8") if line.strip()]
    answers = upstream_answers([r["question"] for r in rows], a.model, a.max_tokens)
    with open(a.output, "w", encoding="utf-8") as f:
        for r, ans in zip(rows, answers):
            f.write(json.dumps({**r, "answer": ans, "misaligned": None}, ensure_ascii=False) + "\n")
    print(f"{len(rows)} answers -> {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
