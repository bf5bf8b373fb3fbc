"""Inspector: P(aligned | question, answer) per criterion, batched.

Two designs, one API (``Inspector.score``):
- ``shared``: one frozen encoder shared by every criterion; a small MLP head per criterion reads the pooled
  features (see below).
- ``finetuned``: the IBM paper's choice, an encoder fine-tuned per criterion (here a LoRA adapter
  per criterion on one base) with its own head: one encoder pass per criterion.

Encoders run on ONNX Runtime on CPU by default (``runtime="auto"``; see squad.inspector.onnx_encoder): the same
scores as PyTorch, faster. ``quantize="int8"`` runs dynamically quantised copies there (PyTorch runs
the float weights whatever it says).

What a head reads (``features``): ``joint`` is the pooled embedding of question and answer encoded
together; ``span`` adds the question's and the answer's tokens pooled separately from that same
encoder pass, and their product, so a head sees both how the answer reads and how it relates to the
question; ``pair`` gets those two from a second pass over question and answer alone (see the
README's inspector table for AUROC and latency of each).

With a ``probe`` (squad.inspector.probe), each score blends the inspector's logit with the
hidden-state judge's: ``sigmoid((1 - w) * logit(p) + w * judge)``, ``w`` the bundle's judge weight
and ``logit(p)`` clipped to its ``inspector_cap``, if it sets one.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Head(nn.Module):
    """Pooled embedding -> logit of P(aligned)."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return nn.functional.normalize(pooled, dim=-1)


def encode_batch(tokenizer, pairs: list[tuple[str, str]], max_length: int, device: str = "cpu", tensors: bool = True):
    """The pairs as the encoder reads them; ``tensors=False``: unpadded token id lists (for lengths)."""
    q, a = zip(*pairs) if pairs else ((), ())
    if not tensors:
        return tokenizer(list(q), list(a), truncation="longest_first", max_length=max_length)
    return tokenizer(list(q), list(a), truncation="longest_first", max_length=max_length, padding=True,
                     return_tensors="pt").to(device)


FEATURES = ("joint", "pair", "span")


def feature_dim(dim: int, features: str) -> int:
    return dim * (1 if features == "joint" else 4)


def _span_masks(enc) -> tuple[torch.Tensor, torch.Tensor]:
    """Token masks of the question (first sequence) and the answer (second) in a joint encoding."""
    ids = [enc.sequence_ids(i) for i in range(enc["input_ids"].shape[0])]
    q = torch.tensor([[s == 0 for s in row] for row in ids], device=enc["input_ids"].device)
    a = torch.tensor([[s == 1 for s in row] for row in ids], device=enc["input_ids"].device)
    return q, a


def pair_inputs(tokenizer, pairs: list[tuple[str, str]], max_length: int, features: str, device: str = "cpu"):
    """The tokenised inputs of ``features_from``: the joint encoding and, for ``pair``, question and
    answer alone (tokenised once, whatever number of encoders read them)."""
    if features not in FEATURES:
        raise ValueError(f"inspector features must be one of {FEATURES}, got {features!r}")
    enc = encode_batch(tokenizer, pairs, max_length, device)
    if features != "pair":
        return enc, None
    texts = [q for q, _ in pairs] + [a for _, a in pairs]  # one encoder pass for both sides
    return enc, tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(device)


def features_from(encode, enc, alone, features: str) -> torch.Tensor:
    """Head input from ``pair_inputs``. ``encode(encoded) -> last hidden states`` is the encoder pass.

    ``joint``: the pooled joint encoding. ``span``: plus the question's and the answer's tokens
    pooled separately from that same pass, and their product (one pass). ``pair``: like ``span``
    but question and answer encoded alone in a second pass.
    """
    hidden = encode(enc)
    joint = mean_pool(hidden, enc["attention_mask"])
    if features == "joint":
        return joint
    if features == "span":
        qm, am = _span_masks(enc)
        q, a = mean_pool(hidden, qm), mean_pool(hidden, am)
    else:
        n = enc["input_ids"].shape[0]
        both = mean_pool(encode(alone), alone["attention_mask"])
        q, a = both[:n], both[n:]
    return torch.cat([joint, q, a, q * a], dim=-1)


def pair_features(encode, tokenizer, pairs: list[tuple[str, str]], max_length: int, features: str,
                  device: str = "cpu") -> torch.Tensor:
    """Head input for a batch of pairs (see ``features_from``)."""
    return features_from(encode, *pair_inputs(tokenizer, pairs, max_length, features, device), features)


class Inspector:
    def __init__(self, encoder_dir: str | Path, heads: dict[str, Head], kind: str = "shared",
                 adapters: dict[str, Path] | None = None, max_length: int = 256, batch_size: int = 32,
                 device: str = "cpu", features: str = "joint", runtime: str = "auto", quantize: str = "none",
                 probe=None, probe_weight: float = 0.5, probe_cap: float | None = None):
        from squad.models.registry import load_tokenizer
        from squad.inspector.onnx_encoder import OnnxEncoder, pick_runtime

        if kind not in ("shared", "finetuned"):
            raise ValueError(f"inspector kind must be 'shared' or 'finetuned', got {kind!r}")
        if features not in FEATURES:
            raise ValueError(f"inspector features must be one of {FEATURES}, got {features!r}")
        self.kind, self.max_length, self.batch_size, self.device = kind, max_length, batch_size, device
        self.features, self.runtime = features, pick_runtime(runtime, device)
        if quantize != "none" and self.runtime == "torch":
            import warnings

            warnings.warn(f"inspector quantize={quantize!r} applies to the ONNX runtime only; PyTorch runs float weights")
        self.tokenizer = load_tokenizer(Path(encoder_dir))
        if kind == "finetuned" and set(adapters or {}) != set(heads):
            raise ValueError(f"finetuned inspector needs one adapter per head: {sorted(adapters or {})} vs {sorted(heads)}")
        self.encoders: dict[str, OnnxEncoder] = {}  # fine-tuned on ONNX: one merged encoder per criterion
        if self.runtime == "onnx" and kind == "finetuned":
            # The criteria's encoders run side by side, so the cores are split between them: on
            # short inputs that beats one after another, each on every core (README, benchmarks).
            threads = max(1, torch.get_num_threads() // len(adapters))
            self.encoders = {c: OnnxEncoder(encoder_dir, self.tokenizer, threads=threads, adapter=Path(a),
                                            quantize=quantize) for c, a in adapters.items()}
        elif self.runtime == "onnx":
            self.encoder = OnnxEncoder(encoder_dir, self.tokenizer, quantize=quantize)
        else:
            self.encoder = self._torch_encoder(encoder_dir, adapters, heads)
        self.heads = nn.ModuleDict(heads).to(device).eval()
        self.probe, self.probe_weight, self.probe_cap = probe, probe_weight, probe_cap

    def _torch_encoder(self, encoder_dir, adapters, heads):
        from transformers import AutoModel

        from squad.models.quiet import quiet_loading

        with quiet_loading():
            encoder = AutoModel.from_pretrained(encoder_dir, trust_remote_code=False)
            if self.kind == "finetuned":
                from peft import PeftModel

                names = list(adapters)
                encoder = PeftModel.from_pretrained(encoder, str(adapters[names[0]]), adapter_name=names[0])
                for n in names[1:]:
                    encoder.load_adapter(str(adapters[n]), adapter_name=n)
        return encoder.to(self.device).eval()

    @property
    def criteria(self) -> list[str]:
        return list(self.heads)

    def _encode(self, adapter: str | None = None):
        """``encoded -> last hidden states`` of the shared encoder, or of ``adapter``'s fine-tuned one."""
        if adapter in self.encoders:  # fine-tuned on ONNX: that criterion's merged encoder
            encoder = self.encoders[adapter]
        else:
            encoder = self.encoder
            if adapter is not None:  # fine-tuned on PyTorch: one PEFT model, switch its adapter
                encoder.set_adapter(adapter)
        return lambda enc: encoder(**enc).last_hidden_state

    def _pool(self):
        """Threads that run the criteria's ONNX encoders side by side (made on first use)."""
        if getattr(self, "_threads", None) is None:
            from concurrent.futures import ThreadPoolExecutor

            self._threads = ThreadPoolExecutor(len(self.encoders), thread_name_prefix="inspector")
        return self._threads

    @torch.inference_mode()
    def score(self, pairs: list[tuple[str, str]], criteria: list[str] | None = None) -> list[dict[str, float]]:
        """One dict of P(aligned) per pair, for ``criteria`` (default: all)."""
        crits = list(criteria) if criteria is not None else self.criteria
        unknown = [c for c in crits if c not in self.heads]
        if unknown:
            raise KeyError(f"no inspector for criteria {unknown}; known: {self.criteria}")
        results: list[dict[str, float]] = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i:i + self.batch_size]
            inputs = pair_inputs(self.tokenizer, chunk, self.max_length, self.features, self.device)
            probs: dict[str, torch.Tensor] = {}
            if self.kind == "shared":
                x = features_from(self._encode(), *inputs, self.features)
                feats = {c: x for c in crits}
            elif self.encoders and len(crits) > 1:  # ONNX Runtime releases the GIL: one thread per criterion
                feats = dict(zip(crits, self._pool().map(
                    lambda c: features_from(self._encode(c), *inputs, self.features), crits)))
            else:
                feats = {c: features_from(self._encode(c), *inputs, self.features) for c in crits}
            judged = self.probe.logits(chunk, crits) if self.probe is not None else {}
            for c in crits:
                logit = self.heads[c](feats[c])
                if c in judged:  # blend: the inspector's logit (via its probability, kept off 0 and 1) and the judge's
                    p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
                    own = torch.logit(p) if self.probe_cap is None else torch.logit(p).clamp(-self.probe_cap, self.probe_cap)
                    logit = (1 - self.probe_weight) * own + self.probe_weight * judged[c].to(logit.device)
                probs[c] = torch.sigmoid(logit)
            for j in range(len(chunk)):
                results.append({c: float(probs[c][j]) for c in crits})
        return results


def save_heads(heads: dict[str, Head], path: Path) -> None:
    from safetensors.torch import save_file

    state = {f"{c}.{k}": v.detach().cpu().contiguous() for c, h in heads.items() for k, v in h.state_dict().items()}
    save_file(state, str(path))


def load_heads(path: Path, dim: int, hidden: int) -> dict[str, Head]:
    from safetensors.torch import load_file

    state = load_file(str(path))
    by_crit: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        crit, rest = key.split(".", 1)
        by_crit.setdefault(crit, {})[rest] = t
    heads = {}
    for c, sd in by_crit.items():
        h = Head(dim, hidden)
        h.load_state_dict(sd)
        heads[c] = h.eval()
    return heads
