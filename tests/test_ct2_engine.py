"""The CTranslate2 engine: converted once into the cache, greedy outputs equal to the PyTorch path's,
and ``load_engine``'s choice and fallback. Tiny random models; the real aligners in test_real_models."""
from __future__ import annotations

import pytest

from squad.aligner.ct2_engine import CT2Engine, convert
from squad.aligner.engine import HFEngine, load_engine
from squad.models.registry import resolve

PAIRS = [("How do I reset my router?", "Unplug it."), ("Is the earth flat?", "Yes, it is flat."),
         ("What is 2+2?", "It is 5."), ("Name a colour.", "Blue"), ("Why is the sky blue?", "Scattering of light.")]


@pytest.fixture(scope="module")
def adapters(tiny_bundle):
    from squad.models.bundle import read_manifest

    man = read_manifest(tiny_bundle)
    return {c: tiny_bundle / e.aligner for c, e in man.criteria.items()}


def _prompts(tok, n=len(PAIRS)):
    from squad.core.prompt import build_prompt

    return [build_prompt(tok, "Fix the answer.", q, a) for q, a in PAIRS[:n]]


def test_ct2_outputs_equal_the_pytorch_path_with_mixed_adapters(adapters):
    base = resolve("tiny-causal-lm")
    hf = HFEngine(base, adapters=adapters, batch_size=4)
    ct = CT2Engine(base, adapters=adapters, batch_size=4)
    prompts = _prompts(hf.tokenizer)
    crits = [list(adapters)[i % len(adapters)] for i in range(len(prompts))]
    want = hf.generate_mixed(prompts, crits, 12)
    assert any(want), "the tiny model should generate something"
    # one prompt at a time: token for token, the completion-only n-gram ban included
    assert [ct.generate_mixed([p], [c], 12)[0] for p, c in zip(prompts, crits)] == want
    # batched without the ban: the same again
    hf.no_repeat_ngram = ct.no_repeat_ngram = 0
    assert ct.generate_mixed(prompts, crits, 12) == hf.generate_mixed(prompts, crits, 12)


def test_ct2_batch_ban_sees_the_tail_of_longer_prompts(adapters):
    """A known difference, documented in docs/engines.md: in a batch, CTranslate2 decodes the part of
    a longer prompt past the shortest one inside its decoding loop, so its n-gram ban also covers
    those prompt tokens. The shortest prompt of a batch decodes exactly as it would alone."""
    ct = CT2Engine(resolve("tiny-causal-lm"), adapters=adapters, batch_size=8)
    prompts = _prompts(ct.tokenizer)
    alone = [ct.generate([p], "ethics", 12)[0] for p in prompts]
    batched = ct.generate(prompts, "ethics", 12)
    shortest = min(range(len(prompts)), key=lambda i: len(ct.tokenizer(prompts[i])["input_ids"]))
    assert batched[shortest] == alone[shortest]
    ct.no_repeat_ngram = 0
    assert ct.generate(prompts, "ethics", 12) == [ct.generate([p], "ethics", 12)[0] for p in prompts]


def test_conversion_is_cached_and_keyed_by_the_adapter_files(adapters, tmp_path, monkeypatch, capsys):
    import shutil

    base = resolve("tiny-causal-lm")
    monkeypatch.setenv("SQUAD_CACHE", str(tmp_path / "cache"))
    one = {"ethics": adapters["ethics"]}
    first = convert(base, one)
    assert "converting aligner 'ethics'" in capsys.readouterr().err  # the one-off note goes to stderr
    assert (first["ethics"] / "model.bin").is_file()
    assert convert(base, one) == first
    assert "converting aligner" not in capsys.readouterr().err  # cached: no second conversion
    changed = tmp_path / "ethics-copy"
    shutil.copytree(adapters["ethics"], changed)
    cfg = changed / "adapter_config.json"
    cfg.write_text(cfg.read_text().replace('"lora_alpha": ', '"lora_alpha": 1'))  # a new scale: 32 becomes 132
    again = convert(base, {"ethics": changed})
    assert again["ethics"] != first["ethics"], "an edited adapter must not reuse the old conversion"
    assert "converting aligner 'ethics'" in capsys.readouterr().err


def test_unknown_adapter_is_named(adapters):
    ct = CT2Engine(resolve("tiny-causal-lm"), adapters=adapters)
    with pytest.raises(KeyError, match="toxicity"):
        ct.generate_mixed(_prompts(ct.tokenizer, 2), ["ethics", "toxicity"], 4)


def test_load_engine_picks_ct2_on_cpu_and_falls_back_loudly(adapters, tmp_path, monkeypatch, capsys):
    base = resolve("tiny-causal-lm")
    assert isinstance(load_engine(base, adapters), CT2Engine)
    assert isinstance(load_engine(base, adapters, engine="hf"), HFEngine)
    with pytest.raises(ValueError, match="unknown engine 'onnx'"):
        load_engine(base, adapters, engine="onnx")
    with pytest.raises(ValueError, match="not on 'cuda'"):
        load_engine(base, adapters, device="cuda", engine="ct2")
    # a cache that cannot be written: auto falls back to PyTorch and says why; ct2 fails
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SQUAD_CACHE", str(blocker / "cache"))
    assert isinstance(load_engine(base, adapters), HFEngine)
    assert "falling back to PyTorch" in capsys.readouterr().err
    with pytest.raises(OSError, match="not-a-folder"):  # the unwritable cache, not some other failure
        load_engine(base, adapters, engine="ct2")


def test_squad_load_rejects_an_unknown_engine(tiny_bundle):
    from squad import Squad
    from squad.errors import SquadError

    with pytest.raises(SquadError, match="unknown engine 'fast'"):
        Squad.load(tiny_bundle, engine="fast")
    assert Squad.load(tiny_bundle, engine="hf").aligner.engine.name == "hf"
