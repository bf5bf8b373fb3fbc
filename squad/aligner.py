"""Aligner: rewrites (question, answer) pairs into corrected answers, one adapter per criterion."""
from __future__ import annotations

from squad.engine import Engine
from squad.policy import Policy
from squad.prompt import build_prompt


class Aligner:
    def __init__(self, engine: Engine, policies: dict[str, Policy], max_new_tokens: int = 128):
        self.engine, self.policies, self.max_new_tokens = engine, policies, max_new_tokens

    def prompt(self, criterion: str, question: str, answer: str) -> str:
        return build_prompt(self.engine.tokenizer, self.policies[criterion].instruction, question, answer)

    def correct(self, criterion: str, pairs: list[tuple[str, str]]) -> list[str]:
        """Corrected answers for ``pairs`` under ``criterion``, generated as one batch."""
        if criterion not in self.policies:
            raise KeyError(f"no aligner for criterion {criterion!r}; known: {sorted(self.policies)}")
        prompts = [self.prompt(criterion, q, a) for q, a in pairs]
        return self.engine.generate(prompts, adapter=criterion, max_new_tokens=self.max_new_tokens)

    def correct_many(self, groups: dict[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
        """``correct`` for several criteria at once: with LoRA adapters on one base, all of them share
        one continuous batch (fewer decode steps than one batch per criterion)."""
        for criterion in groups:
            if criterion not in self.policies:
                raise KeyError(f"no aligner for criterion {criterion!r}; known: {sorted(self.policies)}")
        crits = [c for c, pairs in groups.items() for _ in pairs]
        prompts = [self.prompt(c, q, a) for c, pairs in groups.items() for q, a in pairs]
        mixed = getattr(self.engine, "generate_mixed", None)
        if mixed is None or len(groups) == 1:
            return {c: self.correct(c, pairs) for c, pairs in groups.items()}
        outs = iter(mixed(prompts, crits, max_new_tokens=self.max_new_tokens))
        return {c: [next(outs) for _ in pairs] for c, pairs in groups.items()}
