"""A first run prints no third-party warnings: preparing and loading the models (the ONNX export and
int8 quantisation of an inspector encoder with a LoRA adapter merged in, the CTranslate2 conversion
of every aligner) leaves stderr with only the project's own one-line notes."""
from __future__ import annotations

import warnings

from squad.models.registry import resolve


def test_first_run_preparation_prints_no_third_party_warnings(tiny_bundle, tmp_path, monkeypatch, capfd):
    from squad.aligner.ct2_engine import CT2Engine
    from squad.inspector.onnx_encoder import OnnxEncoder
    from squad.models.bundle import read_manifest
    from squad.models.registry import load_tokenizer

    man = read_manifest(tiny_bundle)
    adapters = {c: tiny_bundle / e.aligner for c, e in man.criteria.items()}
    lora = tmp_path / "encoder-lora"
    monkeypatch.setenv("SQUAD_CACHE", str(tmp_path / "cache"))  # nothing prepared yet
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder = resolve("tiny-encoder")  # built fresh in the empty cache
        _save_encoder_adapter(encoder, lora)
        OnnxEncoder(encoder, load_tokenizer(encoder), adapter=lora, quantize="int8")
        engine = CT2Engine(resolve("tiny-causal-lm"), adapters=adapters)
    _, err = capfd.readouterr()
    assert sorted(engine.models) == sorted(adapters)
    # What a user sees: Python hides DeprecationWarnings outside __main__ (torch's note that the
    # TorchScript exporter is legacy is one), so only the others count.
    shown = [f"{w.category.__name__}: {w.message}" for w in caught
             if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    assert shown == []
    # Left: the project's notes, and the progress bars of the one step that takes seconds:
    # dequantising the GGUF base (the tiny aligner borrows its config), read and loaded by transformers
    bars = [line for line in err.splitlines() if "%|" in line]
    assert all("de-quantizing GGUF" in b or "Loading weights" in b for b in bars)
    assert sum(b.count("Loading weights: 100%") for b in bars) == 1
    assert [line for line in err.splitlines() if line.strip() and not line.startswith("[squad] ") and "%|" not in line] == []
    assert err.count("[squad] converting aligner") == len(adapters)


def _save_encoder_adapter(encoder, out):
    """A LoRA adapter on the tiny encoder, as a fine-tuned inspector's bundle holds one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from squad.models.quiet import quiet_loading

    with quiet_loading():
        model = get_peft_model(AutoModel.from_pretrained(encoder), LoraConfig(r=2, target_modules=["query", "value"]))
        model.save_pretrained(out)
