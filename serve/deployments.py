"""Serve deployments as plain classes; ``squad.serve.app`` applies ``serve.deployment`` with options.

- ``InspectorServer``: the bundle's inspectors (all criteria on a shared encoder, or one criterion's
  fine-tuned encoder); concurrent requests are batched with ``@serve.batch`` into encoder batches.
- ``AlignerServer``: one base model with every criterion's LoRA adapter (multiplexed by criterion),
  or with one criterion's adapter; pairs from concurrent requests share one continuous batch that
  a decode thread keeps running (pairs join and leave it at any step).
- ``UpstreamServer``: the in-app upstream LLM (the embedded SmolLM2) for /v1/chat/completions.
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from pathlib import Path

from ray import serve


class InspectorServer:
    def __init__(self, bundle: str, batch_size: int = 32, batch_wait_s: float = 0.005,
                 criteria: list[str] | None = None):
        from squad.models.bundle import read_manifest, resolve_bundle
        from squad.sdk.local import load_inspector

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
    """Every request's pairs join the next batch of one decode thread (``Aligner.correct_stream``).
    On the PyTorch engine that batch is continuous: a pair that arrives while others decode is
    prefilled into the running batch as soon as a quarter of its ``batch_size`` slots are free, and
    its answer returns the moment it is done. On CTranslate2 the pairs queued meanwhile form the
    next batch, each criterion's decoding together."""

    def __init__(self, bundle: str, criteria: list[str] | None = None, batch_size: int = 16,
                 batch_wait_s: float = 0.02, engine: str = "auto"):
        from squad.models.bundle import read_manifest, resolve_bundle
        from squad.sdk.local import load_aligner

        path = resolve_bundle(bundle)
        manifest = read_manifest(path)
        self.criteria = list(criteria or manifest.criteria)
        self.aligner = load_aligner(path, manifest, criteria=self.criteria, engine=engine)
        self.aligner.engine.batch_size = batch_size  # decode slots
        self.batch_wait_s = batch_wait_s  # an idle aligner waits this long for company before it starts
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._keys = itertools.count()
        threading.Thread(target=self._decode_forever, name="aligner-decode", daemon=True).start()

    async def correct(self, criterion: str, pairs: list[tuple[str, str]]) -> list[str]:
        """Corrections under ``criterion``; pairs from concurrent requests decode together."""
        if criterion not in self.criteria:  # checked here so one bad call cannot fail a shared batch
            raise KeyError(f"this aligner serves {self.criteria}, not {criterion!r}")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in pairs]
        for (q, a), fut in zip(pairs, futures):
            self._queue.put((next(self._keys), criterion, q, a, loop, fut))
        return list(await asyncio.gather(*futures))

    def _decode_forever(self) -> None:
        while True:
            first = self._queue.get()  # idle until a request comes
            time.sleep(self.batch_wait_s)
            pending: dict[int, tuple] = {}

            def take(*items) -> list[tuple[int, str, str, str]]:
                items = list(items)
                while True:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                pending.update({k: (loop, fut) for k, _, _, _, loop, fut in items})
                return [(k, c, q, a) for k, c, q, a, _, _ in items]

            def done(finished: list[tuple[int, str]]) -> list[tuple[int, str, str, str]]:
                for k, text in finished:
                    _settle(*pending.pop(k), text)
                return take()

            try:
                self.aligner.correct_stream(take(first), done)
                error: Exception = RuntimeError("the aligner returned no answer")
            except Exception as e:  # every pair in flight gets the error; the thread serves on
                error = e
            for loop, fut in pending.values():
                _settle(loop, fut, error=error)

    def ping(self) -> str:
        return "ok"


def _settle(loop, fut, text: str | None = None, error: Exception | None = None) -> None:
    """Complete a request's future from the decode thread (ignored if the caller went away,
    its event loop included: a closed loop must not kill the decode thread)."""
    def put():
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(text)

    try:
        loop.call_soon_threadsafe(put)
    except RuntimeError:  # the caller's loop is closed; nobody waits for this answer
        pass


class UpstreamServer:
    """A small local chat model standing in for the upstream LLM, so the demo needs nothing outside."""

    def __init__(self, model: str, engine: str = "auto"):
        from squad.aligner.engine import load_engine
        from squad.models.registry import resolve

        self.engine = load_engine(Path(resolve(model)), engine=engine, batch_size=4)
        self._lock = asyncio.Lock()

    async def chat(self, messages: list[dict], max_tokens: int) -> str:
        from squad.core.prompt import chat_prompt

        prompt = chat_prompt(self.engine.tokenizer, messages)
        async with self._lock:
            out = await asyncio.to_thread(self.engine.generate, [prompt], None, max_tokens)
        return out[0]

    def ping(self) -> str:
        return "ok"
