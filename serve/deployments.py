"""Serve deployments as plain classes; ``squad.serve.app`` applies ``serve.deployment`` with options.

- ``InspectorServer``: the bundle's inspectors (all criteria on a shared encoder, or one criterion's
  fine-tuned encoder); concurrent requests are batched with ``@serve.batch`` into encoder batches.
- ``AlignerServer``: one base model with every criterion's LoRA adapter (multiplexed by criterion),
  or with one criterion's adapter; pairs from concurrent requests are batched with ``@serve.batch``
  and generated together, one generate call per criterion in the batch.
- ``UpstreamServer``: the in-app upstream LLM (the embedded SmolLM2) for /v1/chat/completions.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from ray import serve


class InspectorServer:
    def __init__(self, bundle: str, batch_size: int = 32, batch_wait_s: float = 0.005,
                 criteria: list[str] | None = None):
        from squad.bundle import read_manifest, resolve_bundle
        from squad.sdk import load_inspector

        path = resolve_bundle(bundle)
        self.inspector = load_inspector(path, read_manifest(path), criteria=criteria)
        self._score_batch.set_max_batch_size(batch_size)
        self._score_batch.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _score_batch(self, pairs: list[tuple[str, str]]) -> list[dict[str, float]]:
        return await asyncio.to_thread(self.inspector.score, pairs)

    async def score(self, pairs: list[tuple[str, str]], criteria: list[str]) -> list[dict[str, float]]:
        """Scores for ``criteria``; pairs from concurrent requests share encoder batches."""
        unknown = [c for c in criteria if c not in self.inspector.criteria]
        if unknown:
            raise KeyError(f"this inspector serves {self.inspector.criteria}, not {unknown}")
        results = await asyncio.gather(*(self._score_batch(tuple(p)) for p in pairs))
        return [{c: r[c] for c in criteria} for r in results]

    def ping(self) -> str:
        return "ok"


class AlignerServer:
    def __init__(self, bundle: str, criteria: list[str] | None = None, batch_size: int = 16,
                 batch_wait_s: float = 0.02):
        from squad.bundle import read_manifest, resolve_bundle
        from squad.sdk import load_aligner

        path = resolve_bundle(bundle)
        manifest = read_manifest(path)
        self.criteria = list(criteria or manifest.criteria)
        self.aligner = load_aligner(path, manifest, criteria=self.criteria)
        self.aligner.engine.batch_size = max(self.aligner.engine.batch_size, batch_size)  # one continuous batch
        self._correct_batch.set_max_batch_size(batch_size)
        self._correct_batch.set_batch_wait_timeout_s(batch_wait_s)

    # One batch at a time (serve.batch's default); every criterion's items decode as one mixed batch.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _correct_batch(self, items: list[tuple[str, str, str]]) -> list[str]:
        by_criterion: dict[str, list[int]] = {}
        for i, (criterion, _, _) in enumerate(items):
            by_criterion.setdefault(criterion, []).append(i)
        groups = {c: [items[i][1:] for i in idx] for c, idx in by_criterion.items()}
        texts = await asyncio.to_thread(self.aligner.correct_many, groups)
        out = [""] * len(items)
        for criterion, idx in by_criterion.items():
            for i, t in zip(idx, texts[criterion]):
                out[i] = t
        return out

    async def correct(self, criterion: str, pairs: list[tuple[str, str]]) -> list[str]:
        """Corrections under ``criterion``; pairs from concurrent requests share generate calls."""
        if criterion not in self.criteria:  # checked here so one bad call cannot fail a shared batch
            raise KeyError(f"this aligner serves {self.criteria}, not {criterion!r}")
        return list(await asyncio.gather(*(self._correct_batch((criterion, q, a)) for q, a in pairs)))

    def ping(self) -> str:
        return "ok"


class UpstreamServer:
    """A small local chat model standing in for the upstream LLM, so the demo needs nothing outside."""

    def __init__(self, model: str):
        from squad.engine import HFEngine
        from squad.models import resolve

        self.engine = HFEngine(Path(resolve(model)), batch_size=4)
        self._lock = asyncio.Lock()

    async def chat(self, messages: list[dict], max_tokens: int) -> str:
        from squad.prompt import neutralise, special_strings

        specials = special_strings(self.engine.tokenizer)
        safe = [{"role": m["role"], "content": neutralise(m["content"], specials)} for m in messages]
        prompt = self.engine.tokenizer.apply_chat_template(safe, tokenize=False, add_generation_prompt=True)
        async with self._lock:
            out = await asyncio.to_thread(self.engine.generate, [prompt], None, max_tokens)
        return out[0]

    def ping(self) -> str:
        return "ok"
