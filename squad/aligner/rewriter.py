"""Aligner: rewrites (question, answer) pairs into corrected answers, one adapter per criterion."""
from __future__ import annotations

from squad.aligner.engine import Engine
from squad.config.policy import Policy
from squad.core.prompt import build_prompt


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

    def correct_stream(self, jobs: list[tuple[int, str, str, str]], done) -> None:
        """Correct ``jobs`` ``(key, criterion, question, answer)``; ``done([(key, corrected), ...])``
        hears of each as soon as it is decoded and returns further jobs for the same run (with LoRA
        adapters they join the running batch: a pair's next step need not wait for the slowest
        pair's current one). Engines without ``stream_mixed`` run the jobs in ``correct_many`` rounds."""

        def prompts(new):
            for _, criterion, _, _ in new:
                if criterion not in self.policies:
                    raise KeyError(f"no aligner for criterion {criterion!r}; known: {sorted(self.policies)}")
            return [(k, self.prompt(c, q, a), c) for k, c, q, a in new]

        stream = getattr(self.engine, "stream_mixed", None)
        if stream is not None:
            stream(prompts(jobs), lambda finished: prompts(done(finished)), self.max_new_tokens)
            return
        while jobs:
            groups: dict[str, list[tuple[int, str, str]]] = {}
            for k, c, q, a in jobs:
                groups.setdefault(c, []).append((k, q, a))
            outs = self.correct_many({c: [(q, a) for _, q, a in g] for c, g in groups.items()})
            jobs = done([(k, text) for c, g in groups.items() for (k, _, _), text in zip(g, outs[c])])

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
