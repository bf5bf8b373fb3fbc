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
