"""The inspector's encoders run by ONNX Runtime on CPU.

An inspector's encoder never changes after training (the shared frozen one, or a fine-tuned one
with its LoRA adapter merged in), so its forward pass is exported to ONNX once, into the squad
cache (``$SQUAD_CACHE/onnx``), and every later load runs it through ONNX Runtime: same hidden
states as PyTorch (to about 1e-5), with far less per-operator overhead on the short inputs an
inspector sees. Training stays on PyTorch.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

RUNTIMES = ("auto", "onnx", "torch")
QUANTIZE = ("none", "int8")


def onnx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def pick_runtime(runtime: str, device: str) -> str:
    """``auto``: ONNX Runtime on CPU when installed, PyTorch otherwise.

    ``SQUAD_INSPECTOR_RUNTIME`` (onnx | torch) overrides ``auto``, e.g. to compare the two.
    """
    runtime = os.environ.get("SQUAD_INSPECTOR_RUNTIME", runtime) if runtime == "auto" else runtime
    if runtime not in RUNTIMES:
        raise ValueError(f"inspector runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch" or (runtime == "auto" and not (device == "cpu" and onnx_available())):
        return "torch"
    if device != "cpu":
        raise ValueError("the onnx inspector runtime runs on CPU only")
    if not onnx_available():
        raise ValueError("the onnx inspector runtime needs onnxruntime: pip install onnxruntime")
    return "onnx"


class _Forward(torch.nn.Module):
    """Keyword-only encoder call with the last hidden state as the one output, for export."""

    def __init__(self, encoder, names: list[str]):
        super().__init__()
        self.encoder, self.names = encoder, names

    def forward(self, *tensors):
        return self.encoder(**dict(zip(self.names, tensors))).last_hidden_state


def export_path(encoder_dir: Path, adapter: Path | None = None, layers: int | None = None) -> Path:
    """Cache file for this encoder: keyed by its directory, its weight files' size and time, the
    adapter's contents (small files, hashed whole: a retrained bundle gets a new export) and the
    number of layers kept."""
    from squad.models.registry import cache_dir

    h = hashlib.sha256(str(encoder_dir.resolve()).encode())
    for f in sorted(encoder_dir.glob("*.safetensors")) + [encoder_dir / "config.json"]:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    if adapter is not None:
        for f in sorted(adapter.glob("adapter_*")):
            h.update(f.name.encode() + f.read_bytes())
    if layers is not None:
        h.update(f"layers:{layers}".encode())
    return cache_dir() / "onnx" / f"{encoder_dir.name}-{h.hexdigest()[:16]}.onnx"


def export(encoder_dir: Path, tokenizer, adapter: Path | None = None, layers: int | None = None) -> Path:
    """Export the encoder (with ``adapter`` merged in, if given; only its first ``layers`` layers, if
    given, as the hidden-state judge reads a decoder) once, in seconds; concurrent exporters race safely."""
    out = export_path(encoder_dir, adapter, layers)
    if out.is_file():
        return out
    from transformers import AutoModel

    from squad.models.quiet import quiet_export, quiet_loading

    what = f"{encoder_dir.name} with adapter {adapter.name!r}" if adapter is not None else encoder_dir.name
    what = f"{what}'s first {layers} layers" if layers is not None else what
    print(f"[squad] exporting inspector encoder {what} to ONNX into {out.parent} (once)", file=sys.stderr)
    with quiet_loading():
        if layers is not None:  # a decoder's body, for the hidden-state judge
            from squad.inspector.probe import truncated_base

            model = truncated_base(encoder_dir, layers)
        else:
            model = AutoModel.from_pretrained(encoder_dir, attn_implementation="eager", trust_remote_code=False).eval()
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    sample = tokenizer(["a question"], ["an answer"], return_tensors="pt")
    names = list(sample.keys())
    dynamic = {n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp")
    with torch.inference_mode(), quiet_export():
        torch.onnx.export(_Forward(model, names), tuple(sample[n] for n in names), str(tmp), input_names=names,
                          output_names=["hidden"], dynamic_axes=dynamic, opset_version=17, dynamo=False)
    os.replace(tmp, out)
    return out


def quantized(model: Path) -> Path:
    """Dynamic int8 quantisation of an exported encoder's weights (about 1 s, cached beside it):
    activations are quantised per call, so no calibration data is needed. Weights get one scale
    per output channel: on the default bundle's held-out rows that moved scores a third as much
    as one scale per tensor (mean change 0.006 against 0.015), for about a quarter more time."""
    out = model.with_name(f"{model.stem}.int8pc.onnx")
    if out.is_file():
        return out
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from squad.models.quiet import quiet_quantization

    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp")
    with quiet_quantization():
        quantize_dynamic(str(model), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    os.replace(tmp, out)
    return out


class OnnxEncoder:
    """Callable like a Hugging Face encoder: ``encoder(**encoded).last_hidden_state``.

    ``quantize="int8"`` runs the dynamically quantised copy: about half the time per pair here,
    with scores that move slightly (a bundle records which one its evaluation used). Dynamic
    quantisation scales activations by their range over the whole input, so in a batch one pair's
    hidden states would depend on its batch-mates and on padding (a pair's ethics score measured
    0.73 alone and 0.43 in a batch of 32). The int8 copy therefore runs each row alone, without
    padding: a pair scores the same whatever else is in its batch."""

    def __init__(self, encoder_dir: str | Path, tokenizer, threads: int | None = None, adapter: Path | None = None,
                 quantize: str = "none", layers: int | None = None):
        import onnxruntime as ort

        if quantize not in QUANTIZE:
            raise ValueError(f"inspector quantize must be one of {QUANTIZE}, got {quantize!r}")

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads sleep instead of spinning: spinning sessions (one per fine-tuned
        # encoder, or beside an aligner on the same cores) measured 2x slower here.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = export(Path(encoder_dir), tokenizer, adapter, layers)
        if quantize == "int8":
            model = quantized(model)
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.per_row = quantize == "int8"

    def __call__(self, **enc) -> "_Output":
        feed = {n: enc[n].cpu().numpy() for n in self.inputs}
        if not self.per_row:
            return _Output(torch.from_numpy(self.session.run(["hidden"], feed)[0]))
        mask = feed["attention_mask"]
        out = None
        for i in range(mask.shape[0]):
            real = np.flatnonzero(mask[i])  # this row's tokens, without the batch's padding
            h = self.session.run(["hidden"], {n: v[i:i + 1, real] for n, v in feed.items()})[0]
            if out is None:
                out = np.zeros((*mask.shape, h.shape[-1]), dtype=h.dtype)
            out[i, real] = h[0]
        return _Output(torch.from_numpy(out))


class _Output:
    def __init__(self, hidden: torch.Tensor):
        self.last_hidden_state = hidden
