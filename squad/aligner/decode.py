"""Greedy decoding with continuous batching for HF causal LMs.

A batch from ``model.generate`` runs until its longest row ends: with aligner outputs of 55 tokens
on average and some of 160, most of a batch's steps compute rows that are already finished. Here a
finished row leaves the batch at once and waiting prompts take the free slots (prefilled together,
then merged into the running KV cache), so every step works on live rows.

The batch is left-padded: row r's cache holds its real tokens right-aligned, with masked zeros in
front. Position ids count real tokens only, as ``generate`` does, so each row decodes as it would
alone (up to float noise from the batch shape).
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import torch

Refill = Callable[[list[tuple[int, list[int]]]], list[tuple[list[int], "str | None"]]]


class _Rows:
    """The running batch: prompt index, attention mask, next position and last token per row."""

    def __init__(self, idx: list[int], mask: torch.Tensor, pos: torch.Tensor, last: torch.Tensor, cache):
        self.idx, self.mask, self.pos, self.last, self.cache = idx, mask, pos, last, cache

    def keep(self, rows: list[int]) -> None:
        sel = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.idx = [self.idx[r] for r in rows]
        self.mask, self.pos, self.last = self.mask[sel], self.pos[sel], self.last[sel]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[sel], layer.values[sel]
        self._trim()

    def _trim(self) -> None:
        """Drop leading columns that every row masks (the cache would otherwise only grow)."""
        live = self.mask.any(dim=0).nonzero()
        start = int(live[0]) if len(live) else self.mask.shape[1]
        if start:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

    def merge(self, other: "_Rows") -> None:
        """Append ``other``'s rows, left-padding the shorter cache with masked zeros."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for a, b in zip(self.cache.layers, other.cache.layers):
            a.keys = torch.cat([_pad_left(a.keys, width), _pad_left(b.keys, width)])
            a.values = torch.cat([_pad_left(a.values, width), _pad_left(b.values, width)])
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)])
        self.idx += other.idx
        self.pos, self.last = torch.cat([self.pos, other.pos]), torch.cat([self.last, other.last])


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    dim = 1 if t.dim() == 2 else 2  # mask [B, T] or cache [B, H, T, D]
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _cache_arg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in recent transformers, else ``past_key_values``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def supports(model) -> bool:
    """Plain per-layer key/value caches only (no sliding windows or recurrent state)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def greedy(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int], pad_id: int,
           slots: int = 16, ban: Callable[[list[int]], list[int]] | None = None,
           adapters: list[str] | None = None, refill: Refill | None = None) -> list[list[int]]:
    """Greedy continuations (token ids, stop token included) of tokenised ``prompts``.

    At most ``slots`` rows decode together; waiting prompts join when a quarter of the slots are
    free (or the batch is empty), so prefills come in groups rather than one row at a time.
    ``ban(tokens_so_far)`` lists token ids a row may not emit next (e.g. repeated n-grams).
    ``adapters`` names each prompt's LoRA adapter (peft mixed batches): rows of different
    criteria then share every decode step.
    ``refill([(index, tokens), ...])`` hears of finished rows and returns further prompts, as
    ``(ids, adapter)``, to decode in the same run, numbered on from ``len(prompts)``. It is called
    before each step while a quarter of the slots are free (with an empty list when nothing
    finished: a server polls its queue there), and when nothing is left. With ``refill`` every row's
    tokens go to it, and the returned lists are empty (a stream can run for as long as work comes).
    """
    prompts = list(prompts)
    adapters = list(adapters) if adapters is not None else None
    device = next(model.parameters()).device
    arg = _cache_arg(model)

    def forward(idx: list[int], **kw):
        if adapters is not None:
            kw["adapter_names"] = [adapters[i] for i in idx]
        return model(use_cache=True, **kw).logits[:, -1]

    stops = set(stop_ids)
    out: list[list[int]] = [[] for _ in prompts]
    waiting = deque(range(len(prompts)))
    finished: list[int] = []  # rows refill has not heard of yet
    rows: _Rows | None = None
    while waiting or rows is not None or finished:
        free = slots - (len(rows.idx) if rows else 0)
        room = rows is None or free >= max(1, slots // 4)
        if refill is not None and room and (finished or rows is not None):
            report = [(i, out[i]) for i in finished]
            for i in finished:  # reported: a long-running stream keeps no finished rows
                prompts[i], out[i] = [], []
            for ids, adapter in refill(report):
                if (adapter is None) != (adapters is None):
                    raise ValueError("refill must name an adapter exactly when the prompts have adapters")
                prompts.append(list(ids))
                out.append([])
                waiting.append(len(prompts) - 1)
                if adapters is not None:
                    adapters.append(adapter)
            finished = []
        if waiting and room:
            new, logits = _prefill(model, [waiting.popleft() for _ in range(min(free, len(waiting)))],
                                   prompts, pad_id, device, arg, forward)
            new.last = _pick(logits, new.idx, out, ban)
            new = _step_done(new, out, stops, max_new_tokens, finished if refill else None)
            if new is not None:
                if rows is None:
                    rows = new
                else:
                    rows.merge(new)
            continue
        if rows is None:  # refill had nothing more
            continue
        rows.mask = torch.cat([rows.mask, rows.mask.new_ones(len(rows.idx), 1)], dim=1)
        logits = forward(rows.idx, input_ids=rows.last[:, None], attention_mask=rows.mask,
                         position_ids=rows.pos[:, None], **{arg: rows.cache})
        rows.pos = rows.pos + 1
        rows.last = _pick(logits, rows.idx, out, ban)
        rows = _step_done(rows, out, stops, max_new_tokens, finished if refill else None)
    return out


def _prefill(model, take: list[int], prompts: list[list[int]], pad_id: int, device, arg: str,
             forward) -> tuple[_Rows, torch.Tensor]:
    from transformers import DynamicCache

    width = max(len(prompts[i]) for i in take)
    ids = torch.full((len(take), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(take), width), dtype=torch.long, device=device)
    for r, i in enumerate(take):
        ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i], device=device)
        mask[r, width - len(prompts[i]):] = 1
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    logits = forward(take, input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, **{arg: cache})
    return _Rows(list(take), mask, mask.sum(dim=1), ids[:, -1], cache), logits


def _pick(logits: torch.Tensor, idx: list[int], out: list[list[int]], ban) -> torch.Tensor:
    if ban is not None:
        for r, i in enumerate(idx):
            banned = ban(out[i])
            if banned:
                logits[r, banned] = float("-inf")
    tokens = logits.argmax(dim=-1)
    for i, t in zip(idx, tokens.tolist()):  # one device-to-host copy per step
        out[i].append(t)
    return tokens


def _step_done(rows: _Rows, out: list[list[int]], stops: set[int], max_new: int,
               finished: list[int] | None = None) -> _Rows | None:
    keep = [r for r, i in enumerate(rows.idx) if out[i][-1] not in stops and len(out[i]) < max_new]
    if finished is not None:
        kept = set(keep)
        finished += [i for r, i in enumerate(rows.idx) if r not in kept]
    if not keep:
        return None
    if len(keep) < len(rows.idx):
        rows.keep(keep)
    return rows
