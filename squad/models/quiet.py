"""Third-party noise known to come from loading and preparing models, silenced at its source, one
message at a time (never a blanket filter)."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings


@contextlib.contextmanager
def quiet_loading():
    """Around model loads and one-off conversions:
    - transformers' per-load progress bars ("Loading weights", "Writing model shards") are off: the
      loads take well under a second, and a conversion prints its own line;
    - peft reads a transformers property deprecated for v6 (a FutureWarning on every adapter load);
    - on a machine without CUDA, DeepSpeed (imported by ``save_pretrained``) is told the accelerator
      instead of warning that it fell back to the CPU."""
    import torch
    from transformers.utils import logging as hf_logging

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_export():
    """Notes the TorchScript ONNX exporter prints for the inspector's BERT encoder and the judge's
    truncated decoder, all about cases this export never meets (the ONNX scores are tested equal to
    PyTorch's):
    - transformers' mask code branches on the padding between keys and mask, which is zero for an
      encoder (the mask covers every key), so tracing the branch as a constant is exact;
    - advanced indexing exports as Gather and friends, wrong only for negative indices, which the
      mask code does not use;
    - the embedding checks its padding index against the vocabulary size, both fixed by the weights."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"transformers\.masking_utils")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional")
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator of advanced indexing", category=UserWarning)
        yield


class _NoPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def quiet_quantization():
    """ONNX Runtime's ``quantize_dynamic`` logs advice to pre-process the model (shape inference) on
    the root logger; the int8 inspector was measured without it (docs/inspectors.md)."""
    root, advice = logging.getLogger(), _NoPreprocessAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
