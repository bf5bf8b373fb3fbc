"""The hidden-state judge: a logistic head per criterion on the aligner base's own hidden states.

MiniLM inspectors reward length and polish; the aligner base (SmolLM2-135M) is where this stack's
world knowledge lives. The judge reads a (question, answer) pair as a chat turn through the base's
first ``layer`` layers (the rest are dropped, so it costs about half a forward pass), mean-pools the
answer tokens' hidden states, and a linear head per criterion turns that into a logit. The squad's
score is then the inspector's logit and the judge's, averaged with ``weight`` (docs/inspectors.md
has what each adds on the evaluation suites).

Question and answer are untrusted: they are tokenised with special-token strings split into plain
text, so neither can open or close a turn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

PLACEHOLDER = "\x00QUESTION\x00"


class HiddenStateProbe:
    """Features and per-criterion logits of the judge. ``heads``: criterion -> (weight, bias)."""

    def __init__(self, base_dir: str | Path, layer: int, heads: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 max_question_tokens: int = 64, max_answer_tokens: int = 128, runtime: str = "auto",
                 batch_size: int = 8, device: str = "cpu"):
        from squad.inspector.onnx_encoder import OnnxEncoder, pick_runtime
        from squad.models.registry import load_tokenizer

        self.base_dir, self.layer, self.heads = Path(base_dir), layer, dict(heads or {})
        self.max_q, self.max_a, self.batch_size, self.device = max_question_tokens, max_answer_tokens, batch_size, device
        self.tokenizer = load_tokenizer(self.base_dir)
        self.prefix, self.suffix = self._template()
        self.runtime = pick_runtime(runtime, device)
        if self.runtime == "onnx":
            self.body = OnnxEncoder(self.base_dir, self.tokenizer, layers=layer)
        else:
            self.body = truncated_base(self.base_dir, layer).to(device)

    def _template(self) -> tuple[list[int], list[int]]:
        """Token ids around the question: the base's chat turn up to where its answer starts."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": PLACEHOLDER}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = f"Question:\n{PLACEHOLDER}\n\nAnswer:\n"
        before, after = text.split(PLACEHOLDER)
        ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]
        return ids(before), ids(after)

    def _untrusted(self, text: str, limit: int) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"][:limit]

    def _ids(self, question: str, answer: str) -> tuple[list[int], int]:
        head = self.prefix + self._untrusted(question, self.max_q) + self.suffix
        return head + self._untrusted(answer, self.max_a), len(head)

    @torch.inference_mode()
    def features(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        """Mean of the answer tokens' hidden states at ``layer``, one row per pair (zeros for an empty answer)."""
        out = []
        for i in range(0, len(pairs), self.batch_size):
            seqs = [self._ids(q, a) for q, a in pairs[i:i + self.batch_size]]
            n = max(len(s) for s, _ in seqs)
            ids = torch.zeros(len(seqs), n, dtype=torch.long)
            mask = torch.zeros(len(seqs), n, dtype=torch.long)
            span = torch.zeros(len(seqs), n, 1)
            for j, (s, start) in enumerate(seqs):  # right padding: a causal model's real tokens never see it
                ids[j, :len(s)] = torch.tensor(s)
                mask[j, :len(s)] = 1
                span[j, start:len(s)] = 1
            hidden = self.body(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            out.append((hidden.float().cpu() * span).sum(1) / span.sum(1).clamp(min=1))
        return torch.cat(out) if out else torch.zeros(0, 0)

    def logits(self, pairs: list[tuple[str, str]], criteria: list[str]) -> dict[str, torch.Tensor]:
        """The judge's logit of P(aligned) per criterion it has a head for."""
        have = [c for c in criteria if c in self.heads]
        if not have or not pairs:
            return {}
        x = self.features(pairs)
        return {c: x @ self.heads[c][0] + self.heads[c][1] for c in have}


def truncated_base(base_dir: Path, layer: int):
    """The base model's body with only its first ``layer`` layers (its final norm stays)."""
    from transformers import AutoModel

    from squad.models.quiet import quiet_loading

    with quiet_loading():
        model = AutoModel.from_pretrained(base_dir, attn_implementation="eager", trust_remote_code=False)
    if not 1 <= layer <= len(model.layers):
        raise ValueError(f"judge layer must be between 1 and {len(model.layers)} for {base_dir.name}, got {layer}")
    model.layers = model.layers[:layer]
    model.config.num_hidden_layers, model.config.use_cache = layer, False
    return model.eval()


def fit_head(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression on standardised features, classes weighted equally;
    returns (weight, bias) on the raw features (the standardisation folded in)."""
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mu) / sd
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    y = y.float()
    pos = y.mean().clamp(0.05, 0.95)
    weight = torch.where(y > 0, 0.5 / pos, 0.5 / (1 - pos))
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, weight=weight)
                + l2 * (w ** 2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach() / sd, b.detach()
    return w, b - (mu * w).sum().reshape(1)


def fit_heads(probe: HiddenStateProbe, rows: dict[str, list[tuple[str, str, int]]], l2: float,
              progress: Callable[[int, int], None] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One head per criterion from its (question, answer, label) rows; each distinct pair's features
    are computed once, shortest first (less padding)."""
    pairs = sorted({(q, a) for rs in rows.values() for q, a, _ in rs}, key=lambda p: len(p[0]) + len(p[1]))
    feats: dict[tuple[str, str], torch.Tensor] = {}
    step = probe.batch_size * 8
    for i in range(0, len(pairs), step):
        chunk = pairs[i:i + step]
        feats.update(zip(chunk, probe.features(chunk)))
        if progress:
            progress(min(i + step, len(pairs)), len(pairs))
    heads = {}
    for c, rs in rows.items():
        labels = {r[2] for r in rs}
        if labels != {0, 1}:
            raise ValueError(f"judge head for {c!r} needs aligned and misaligned rows; its rows are labelled {sorted(labels)}")
        x = torch.stack([feats[(q, a)] for q, a, _ in rs])
        heads[c] = fit_head(x, torch.tensor([r[2] for r in rs]), l2)
    return heads


def save_probe_heads(heads: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path) -> None:
    from safetensors.torch import save_file

    state = {}
    for c, (w, b) in heads.items():
        state[f"{c}.weight"], state[f"{c}.bias"] = w.contiguous().float(), b.contiguous().float()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def load_probe_heads(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from safetensors.torch import load_file

    state = load_file(str(path))
    crits = sorted({k.rsplit(".", 1)[0] for k in state})
    return {c: (state[f"{c}.weight"], state[f"{c}.bias"]) for c in crits}
