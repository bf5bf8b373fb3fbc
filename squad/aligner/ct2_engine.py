"""The aligners on CTranslate2: the CPU default engine.

CTranslate2 has no LoRA support, so each criterion's adapter is merged into the base once and the
merged model converted; the result is cached under ``$SQUAD_CACHE/ct2/<key>/<criterion>``, keyed by
the base and the adapter (or full model) files, like the GGUF-to-safetensors cache in ``squad.models.registry``. The weights
are stored as float32 and run as float32 by default, which gives the PyTorch path's greedy outputs
token for token; ``compute_type="int8"`` quantises them at load time, faster but with different
outputs (``bench/engines.py`` measures both).
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from squad.models.registry import cache_dir, load_tokenizer, turn_stop_ids

COMPUTE_TYPE = "float32"


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ctranslate2") is not None


def _key(base_dir: Path, sources: dict[str | None, Path], merge: bool) -> str:
    import ctranslate2

    h = hashlib.sha256(f"ct2 {ctranslate2.__version__} merge={merge}\n".encode())
    files = [base_dir / "config.json", *sorted(base_dir.glob("*.safetensors"))]
    for name, src in sorted(sources.items(), key=lambda kv: str(kv[0])):
        h.update(f"{name}\n".encode())
        files += sorted(p for p in Path(src).iterdir() if p.suffix in (".json", ".safetensors"))
    for f in files:
        st = f.stat()
        if st.st_size < 64 << 20:  # adapters and configs by content
            h.update(f"{f.name} {st.st_size}\n".encode() + hashlib.sha256(f.read_bytes()).digest())
        else:  # full models' weights by size and modification time (hashing 0.5 GB per load is slow)
            h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def convert(base_dir: Path, adapters: dict[str, Path] | None = None,
            full_models: dict[str, Path] | None = None) -> dict[str | None, Path]:
    """CTranslate2 model directories: one per LoRA adapter (merged into ``base_dir``) or full model;
    the base alone (key ``None``) when neither is given. Converted once, then read from the cache."""
    base_dir = Path(base_dir)
    if adapters:
        sources, merge = dict(adapters), True
    elif full_models:
        sources, merge = dict(full_models), False
    else:
        sources, merge = {None: base_dir}, False
    root = cache_dir() / "ct2" / _key(base_dir, sources, merge)
    out: dict[str | None, Path] = {}
    for name, src in sources.items():
        dest = root / (name or "base")
        if not (dest / "model.bin").is_file():
            print(f"[squad] converting aligner {name or 'base'!r} for CTranslate2 into {dest} (once)", file=sys.stderr)
            _convert_one(base_dir, Path(src), dest, merge)
        out[name] = dest
    return out


def _convert_one(base_dir: Path, src: Path, dest: Path, merge: bool) -> None:
    import os

    import ctranslate2

    from squad.models.quiet import quiet_loading

    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")  # processes converting at once do not collide
    shutil.rmtree(tmp, ignore_errors=True)
    model_dir = src
    with quiet_loading():  # a one-off conversion: the caller's line says what happens
        if merge:
            model_dir = tmp / "merged"
            _merge(base_dir, src, model_dir)
        ctranslate2.converters.TransformersConverter(str(model_dir), low_cpu_mem_usage=True).convert(
            str(tmp / "ct2"), force=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        (tmp / "ct2").rename(dest)
    except OSError:  # another process finished first; keep its copy
        if not (dest / "model.bin").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge(base_dir: Path, adapter: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    load_tokenizer(base_dir).save_pretrained(out)


class CT2Engine:
    """Greedy decoding on CTranslate2, one generator per criterion (or the base alone, key ``None``).

    Each generator runs ``threads`` single-threaded replicas over one copy of its weights; a batch is
    split across them, and the criteria of a mixed batch decode at the same time. Single-threaded
    replicas, because several multi-threaded ones in one process oversubscribe the cores and OpenMP
    then parks its threads between the small per-token kernels (measured here: a 2-thread replica
    beside two idle others decoded at half the speed of one alone). ``threads=None`` follows torch's
    setting, so Ray actors and Serve replicas that size torch's threads size this engine the same way.
    """

    name = "ct2"

    def __init__(self, base_dir: str | Path, adapters: dict[str, Path] | None = None,
                 full_models: dict[str, Path] | None = None, batch_size: int = 16, threads: int | None = None,
                 no_repeat_ngram: int = 4, compute_type: str = COMPUTE_TYPE):
        import ctranslate2
        import torch

        self.batch_size, self.no_repeat_ngram = batch_size, no_repeat_ngram
        self.tokenizer = load_tokenizer(Path(base_dir), padding_side="left")
        self.threads = threads or torch.get_num_threads()
        self.compute_type = compute_type
        self.name = "ct2" if compute_type == COMPUTE_TYPE else f"ct2-{compute_type}"
        self.models = {name: ctranslate2.Generator(str(path), device="cpu", compute_type=compute_type,
                                                   inter_threads=self.threads, intra_threads=1)
                       for name, path in convert(Path(base_dir), adapters, full_models).items()}
        self.stop_ids = turn_stop_ids(self.tokenizer)

    def _generator(self, adapter: str | None):
        if adapter not in self.models:
            if None in self.models:  # a plain model serves any request (the upstream chat model)
                return self.models[None]
            raise KeyError(f"no aligner adapter for criterion {adapter!r}")
        return self.models[adapter]

    def _submit(self, prompts: list[str], adapter: str | None, max_new_tokens: int) -> list:
        """Start decoding ``prompts``; the results are futures (``.result()``)."""
        tok = self.tokenizer
        starts = [tok.convert_ids_to_tokens(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        per_replica = min(self.batch_size, max(1, -(-len(starts) // self.threads)))
        return self._generator(adapter).generate_batch(
            starts, max_batch_size=per_replica, asynchronous=True, max_length=max_new_tokens, sampling_topk=1,
            end_token=self.stop_ids, include_prompt_in_result=False, no_repeat_ngram_size=self.no_repeat_ngram)

    def _texts(self, futures: list) -> list[str]:
        ids = [f.result().sequences_ids[0] for f in futures]
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def generate(self, prompts: list[str], adapter: str | None, max_new_tokens: int = 128) -> list[str]:
        self._generator(adapter)
        return self._texts(self._submit(prompts, adapter, max_new_tokens)) if prompts else []

    def generate_mixed(self, prompts: list[str], adapters: list[str], max_new_tokens: int = 128) -> list[str]:
        """``generate`` with one adapter per prompt: every criterion's prompts decode at once."""
        for name in set(adapters):
            self._generator(name)  # unknown adapters fail here, before any work
        groups = {name: [i for i, a in enumerate(adapters) if a == name] for name in dict.fromkeys(adapters)}
        running = {name: self._submit([prompts[i] for i in idx], name, max_new_tokens) for name, idx in groups.items()}
        out: list[str | None] = [None] * len(prompts)
        for name, idx in groups.items():
            for i, text in zip(idx, self._texts(running[name])):
                out[i] = text
        return out
