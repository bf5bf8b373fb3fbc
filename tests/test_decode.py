"""Continuous-batching greedy decoding (squad.aligner.decode) against transformers' generate, tiny random model."""
from __future__ import annotations

import pytest
import torch

from squad.aligner.engine import HFEngine
from squad.models.registry import resolve

PROMPTS = ["a b c", "the quick brown fox jumps over the lazy dog " * 3, "hello", "one two three four five six",
           "x " * 20, "question: why? answer: because", "short"]


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return HFEngine(resolve("tiny-causal-lm"), batch_size=3, no_repeat_ngram=2)


def _both(engine, prompts, n):
    engine.continuous = False
    ref = engine.generate(prompts, None, n)
    engine.continuous = True
    return ref, engine.generate(prompts, None, n)


def test_continuous_matches_generate_with_rows_joining_and_leaving(engine):
    # Make one frequent token a stop token, so rows end at different steps: finished rows leave,
    # waiting prompts (7 prompts, 3 slots) join a running batch of a different cache width.
    engine.continuous = False
    first = engine.tokenizer(engine.generate(PROMPTS, None, 1), add_special_tokens=False)["input_ids"]
    saved = engine.stop_ids
    engine.stop_ids = sorted(set(saved) | {ids[0] for ids in first[:2] if ids})
    try:
        ref, got = _both(engine, PROMPTS, 12)
    finally:
        engine.stop_ids = saved
    assert got == ref
    assert len({len(t) for t in ref}) > 1, "rows should end at different lengths"


def test_continuous_matches_generate_without_early_stops(engine):
    ref, got = _both(engine, PROMPTS[:4], 7)
    assert got == ref and all(ref)


def test_greedy_bans_repeated_ngrams_of_the_completion_only(engine):
    from squad.aligner import decode
    from squad.aligner.engine import banned_next

    assert banned_next([5, 6, 7, 5], 2) == [6]  # "5 6" seen: after 5, 6 is banned
    assert banned_next([5, 6], 3) == []
    ids = [engine.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:3]]
    with torch.inference_mode():
        outs = decode.greedy(engine.model_for(None), ids, 10, [], engine.tokenizer.pad_token_id, slots=2,
                             ban=lambda toks: banned_next(toks, 2))
    for toks in outs:
        pairs = list(zip(toks, toks[1:]))
        assert len(pairs) == len(set(pairs)) and len(toks) == 10


def test_decode_supports_plain_kv_caches(engine):
    from types import SimpleNamespace

    from transformers import MistralConfig

    from squad.aligner import decode

    assert decode.supports(engine.model_for(None))
    # A sliding-window model's cache drops old keys: the continuous decoder must not take it.
    windowed = MistralConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                             sliding_window=8)
    assert not decode.supports(SimpleNamespace(config=windowed))


def test_refill_adds_prompts_to_the_running_batch_with_the_same_tokens(engine):
    """Rows finished so far reach ``refill`` in groups; the prompts it returns decode in the same
    run, numbered after the first ones, exactly as they would alone."""
    from squad.aligner import decode

    ids = [engine.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    pad, n = engine.tokenizer.pad_token_id, 9
    model = engine.model_for(None)
    with torch.inference_mode():
        alone = decode.greedy(model, ids, n, [], pad, slots=3)
        heard: dict[int, list[int]] = {}

        def refill(finished):
            heard.update(finished)
            return [(ids[i + 4], None) for i, _ in finished if i < 3]  # the first 3 rows bring 3 more

        got = decode.greedy(model, ids[:4], n, [], pad, slots=3, refill=refill)
    assert [heard[i] for i in range(len(PROMPTS))] == alone  # every row reported once, complete
    assert got == [[]] * len(PROMPTS)  # reported rows are not kept
    with pytest.raises(ValueError, match="adapter"):
        with torch.inference_mode():
            decode.greedy(model, ids[:2], 2, [], pad, slots=2, refill=lambda fin: [(ids[0], "ethics")])
