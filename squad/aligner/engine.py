"""Text generation behind a small protocol: CTranslate2 (``squad.aligner.ct2_engine``, the CPU default) or
HF transformers (CPU or GPU); vLLM plugs in for batch jobs on GPUs. ``load_engine`` picks one.

``HFEngine`` holds one base model with one LoRA adapter per criterion (peft), or one fully
fine-tuned model per criterion, and generates greedily in left-padded batches that stop at the end
of the assistant turn.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Protocol

import torch


def banned_next(tokens: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in ``tokens`` (the completion so far)."""
    if len(tokens) < n:
        return []
    prefix = tuple(tokens[len(tokens) - n + 1:])
    return sorted({tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == prefix})


class CompletionNoRepeat:
    """Forbid repeating any n-gram of the completion itself (small models fall into loops).

    Unlike ``no_repeat_ngram_size``, n-grams of the prompt stay allowed: an aligner must be able
    to copy the good parts of the answer it corrects.
    """

    def __init__(self, n: int, prompt_len: int):
        self.n, self.prompt_len = n, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        gen = input_ids[:, self.prompt_len:]
        for row in range(gen.shape[0]):
            banned = banned_next(gen[row].tolist(), self.n)
            if banned:
                scores[row, banned] = float("-inf")
        return scores


class Engine(Protocol):
    tokenizer: object

    def generate(self, prompts: list[str], adapter: str | None, max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` with the named adapter active."""


class HFEngine:
    name = "hf"

    def __init__(self, base_dir: str | Path, adapters: dict[str, Path] | None = None,
                 full_models: dict[str, Path] | None = None, device: str = "cpu", batch_size: int = 16,
                 dtype: torch.dtype = torch.float32, no_repeat_ngram: int = 4, continuous: bool = True):
        from transformers import AutoModelForCausalLM

        from squad.models.quiet import quiet_loading
        from squad.models.registry import load_tokenizer, turn_stop_ids

        self.device, self.batch_size, self.no_repeat_ngram = device, batch_size, no_repeat_ngram
        self.continuous = continuous  # continuous batching (squad.aligner.decode); False: transformers' generate
        self.tokenizer = load_tokenizer(Path(base_dir), padding_side="left")
        with quiet_loading():
            base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, trust_remote_code=False)
            self.models: dict[str | None, torch.nn.Module] = {}
            adapters = adapters or {}
            if adapters:
                from peft import PeftModel

                names = list(adapters)
                peft_model = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0])
                for n in names[1:]:
                    peft_model.load_adapter(str(adapters[n]), adapter_name=n)
                self._peft = peft_model.to(device).eval()
            else:
                self._peft = None
                self.models[None] = base.to(device).eval()
            for name, path in (full_models or {}).items():
                self.models[name] = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.stop_ids = turn_stop_ids(self.tokenizer)

    @torch.inference_mode()
    def generate_mixed(self, prompts: list[str], adapters: list[str], max_new_tokens: int = 128) -> list[str]:
        """Like ``generate`` with one adapter per prompt. LoRA adapters on one base share every decode
        step (peft mixed batches); otherwise each adapter's prompts run as their own batch."""
        if self._peft is not None and self.continuous and self._decode_supported(self._peft):
            for name in set(adapters):
                self.model_for(name)  # unknown adapters fail here, before any work
            return self._continuous(self._peft, prompts, max_new_tokens, list(adapters))
        out: list[str | None] = [None] * len(prompts)
        for name in dict.fromkeys(adapters):
            idx = [i for i, a in enumerate(adapters) if a == name]
            for i, text in zip(idx, self.generate([prompts[i] for i in idx], name, max_new_tokens)):
                out[i] = text
        return out

    @torch.inference_mode()
    def stream_mixed(self, jobs: list[tuple[int, str, str]], done, max_new_tokens: int = 128) -> None:
        """Decode ``jobs`` ``(key, prompt, adapter)``; ``done([(key, text), ...])`` hears of finished
        jobs as they finish and returns further jobs, which join the same continuous batch (LoRA
        adapters on one base). Other engines: batches of ``generate_mixed`` until no job is left."""
        if not (self._peft is not None and self.continuous and self._decode_supported(self._peft)):
            while jobs:
                jobs = done(list(zip([k for k, _, _ in jobs],
                                     self.generate_mixed([p for _, p, _ in jobs], [a for _, _, a in jobs], max_new_tokens))))
            return
        keys: dict[int, int] = {}  # decode row -> job key, while the job runs
        rows = itertools.count()

        def encode(new):
            for key, _, adapter in new:
                self.model_for(adapter)  # unknown adapters fail before any work
                keys[next(rows)] = key
            return [(self._ids(p), a) for _, p, a in new]

        def refill(finished):
            texts = self.tokenizer.batch_decode([t for _, t in finished], skip_special_tokens=True)
            return encode(done([(keys.pop(i), t.strip()) for (i, _), t in zip(finished, texts)]))

        first = encode(jobs)
        if first:
            self._decode(self._peft, [i for i, _ in first], max_new_tokens, [a for _, a in first], refill)

    def _ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _decode(self, model, ids, max_new_tokens, adapters=None, refill=None) -> list[list[int]]:
        import squad.aligner.decode as decode

        n = self.no_repeat_ngram
        return decode.greedy(model, ids, max_new_tokens, self.stop_ids, self.tokenizer.pad_token_id,
                             slots=self.batch_size, ban=(lambda toks: banned_next(toks, n)) if n else None,
                             adapters=adapters, refill=refill)

    def _continuous(self, model, prompts: list[str], max_new_tokens: int, adapters: list[str] | None = None) -> list[str]:
        outs = self._decode(model, [self._ids(p) for p in prompts], max_new_tokens, adapters)
        return [t.strip() for t in self.tokenizer.batch_decode(outs, skip_special_tokens=True)]

    def _decode_supported(self, model) -> bool:
        if not hasattr(self, "_decode_ok"):
            import squad.aligner.decode as decode

            self._decode_ok = decode.supports(model)
        return self._decode_ok

    def model_for(self, adapter: str | None):
        if adapter in self.models:
            return self.models[adapter]
        if self._peft is not None:
            if adapter is None:
                return self._peft  # callers pass an adapter; base-only use goes through disable_adapter
            if adapter not in self._peft.peft_config:
                raise KeyError(f"no aligner adapter for criterion {adapter!r}")
            self._peft.set_adapter(adapter)
            return self._peft
        return self.models[None]

    @torch.inference_mode()
    def generate(self, prompts: list[str], adapter: str | None, max_new_tokens: int = 128) -> list[str]:
        model = self.model_for(adapter)
        if self.continuous and self._decode_supported(model):
            return self._continuous(model, prompts, max_new_tokens)
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i:i + self.batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            from transformers import LogitsProcessorList

            width = enc["input_ids"].shape[1]
            procs = LogitsProcessorList([CompletionNoRepeat(self.no_repeat_ngram, width)] if self.no_repeat_ngram else [])
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                                 logits_processor=procs)
            new = gen[:, enc["input_ids"].shape[1]:]
            out += [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return out


def load_engine(base_dir: str | Path, adapters: dict[str, Path] | None = None,
                full_models: dict[str, Path] | None = None, device: str = "cpu", engine: str = "auto",
                batch_size: int = 16) -> Engine:
    """The decoding engine for ``base_dir`` with its adapters (or full models).

    ``ct2``: CTranslate2 (CPU), float32 weights: the PyTorch path's answers, about 2-3x as fast.
    ``ct2-int8``: CTranslate2 with int8 weights: faster again, but greedy answers differ from the
    float ones (docs/engines.md). ``hf``: transformers on PyTorch (CPU or GPU; also what training
    uses). ``auto``: ``ct2`` on CPU where CTranslate2 is installed and loads the models, else
    PyTorch, saying why on stderr.
    """
    from squad.config.loading import ENGINES

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine.startswith("ct2") or (engine == "auto" and device == "cpu"):
        import squad.aligner.ct2_engine as ct2_engine

        if engine != "auto" and device != "cpu":
            raise ValueError(f"engine {engine!r} runs the aligners on CPU here, not on {device!r}; use engine 'hf'")
        compute = "int8" if engine == "ct2-int8" else ct2_engine.COMPUTE_TYPE
        if ct2_engine.available():
            try:
                return ct2_engine.CT2Engine(base_dir, adapters, full_models, batch_size=batch_size,
                                            compute_type=compute)
            except Exception as e:  # noqa: BLE001 - any failure to convert or load falls back, loudly
                if engine != "auto":
                    raise
                print(f"[squad] CTranslate2 could not load the aligners ({type(e).__name__}: {e}); "
                      "falling back to PyTorch, which decodes several times slower", file=sys.stderr, flush=True)
        elif engine != "auto":
            raise ValueError(f"engine {engine!r} needs CTranslate2: pip install ctranslate2")
        else:
            print("[squad] CTranslate2 is not installed; the aligners decode on PyTorch, several times slower "
                  "(pip install ctranslate2)", file=sys.stderr, flush=True)
    return HFEngine(base_dir, adapters=adapters, full_models=full_models, device=device, batch_size=batch_size)
