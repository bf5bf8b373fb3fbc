"""A judge reading the aligner base's own hidden states, against the shipped inspectors, on the suites.

Issue 20 asks, where an inspector's suite AUROC stays under target, for at least one alternative
judge measured against it. This bench fits one logistic-regression head per criterion on frozen
features of (question, answer) and reports AUROC on the held-out seed split, on every suite's
inputs (hand labels) and on the squad's labelled rewrites, beside the shipped inspector's:

- ``lm``: SmolLM2-135M (the aligner base, where this stack's world knowledge lives), the pair as a
  chat turn, the answer tokens' hidden states mean-pooled at layer ``--layer``;
- ``minilm``: the frozen MiniLM encoder, mean-pooled over ``question [SEP] answer``;
- ``lm+shipped``, ``minilm+shipped``: the mean of that head's logit and the shipped inspector's.

Training rows are the inspector rows of the train split (``squad.data.rows.inspector_rows``), plus
with ``--candidates`` the criterion's candidate rows and with ``--rewrites`` the aligners' rewrites
as read by hand (``squad data rewrites``); nothing under ``eval/`` is trained on. Features are cached under
``out/probe/``. The last column times one pair's features (the judge's added latency).

    python bench/judge_probe.py --candidates --rewrites policies/*/data/candidates/rewrites.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import labelled_suite_rewrites, p50, scored_pairs, timed, training_rows  # noqa: E402

CACHE = Path("out/probe")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


class LMFeatures:
    """Mean of the answer tokens' hidden states at one layer of the aligner base (layers above it dropped)."""

    def __init__(self, layer: int, max_q: int = 64, max_a: int = 128):
        from transformers import AutoModelForCausalLM

        from squad.models.registry import load_tokenizer, resolve

        path = resolve("smollm2-135m-instruct")
        self.tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        model.model.layers = model.model.layers[:layer]
        self.body, self.layer, self.max_q, self.max_a = model.model, layer, max_q, max_a
        self.name = f"lm{layer}"

    def _ids(self, q: str, a: str) -> tuple[list[int], int]:
        qi = self.tok(q, add_special_tokens=False)["input_ids"][: self.max_q]
        ai = self.tok(a, add_special_tokens=False)["input_ids"][: self.max_a]
        head = self.tok.apply_chat_template([{"role": "user", "content": self.tok.decode(qi)}],
                                            add_generation_prompt=True, tokenize=True)
        if not isinstance(head, list):
            head = head["input_ids"]
        return list(head) + ai, len(head)

    @torch.no_grad()
    def __call__(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        seqs = [self._ids(q, a) for q, a in pairs]
        n = max(len(s) for s, _ in seqs)
        ids = torch.zeros(len(seqs), n, dtype=torch.long)
        att = torch.zeros(len(seqs), n, dtype=torch.long)
        span = torch.zeros(len(seqs), n)
        for i, (s, start) in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            att[i, : len(s)] = 1
            span[i, start: len(s)] = 1
        h = self.body(input_ids=ids, attention_mask=att).last_hidden_state
        span = span.unsqueeze(-1)
        return (h * span).sum(1) / span.sum(1).clamp(min=1)


class MiniLMFeatures:
    name = "minilm"

    def __init__(self):
        from transformers import AutoModel

        from squad.models.registry import load_tokenizer, resolve

        path = resolve("all-minilm-l6-v2")
        self.tok, self.model = load_tokenizer(path), AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def __call__(self, pairs):
        from squad.inspector.classifier import mean_pool

        enc = self.tok([q for q, _ in pairs], [a for _, a in pairs], truncation=True, max_length=256,
                       padding=True, return_tensors="pt")
        return mean_pool(self.model(**enc).last_hidden_state, enc["attention_mask"])


def features(fx, pairs: list[tuple[str, str]], batch: int = 8) -> torch.Tensor:
    """Features of every pair, cached per (extractor, pair)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{fx.name}.pt"
    store: dict[str, torch.Tensor] = torch.load(path) if path.is_file() else {}
    todo = sorted({_key(q, a) for q, a in pairs} - set(store))
    if todo:
        want = {_key(q, a): (q, a) for q, a in pairs}
        todo_pairs = sorted((want[k] for k in todo), key=lambda p: len(p[0]) + len(p[1]))
        t0 = time.time()
        for i in range(0, len(todo_pairs), batch):
            chunk = todo_pairs[i: i + batch]
            for p, v in zip(chunk, fx(chunk)):
                store[_key(*p)] = v.clone()
            if (i // batch) % 25 == 0:
                print(f"  {fx.name}: {i + len(chunk)}/{len(todo_pairs)} pairs, {time.time() - t0:.0f} s", flush=True)
        torch.save(store, path)
    return torch.stack([store[_key(q, a)] for q, a in pairs])


def fit_head(x: torch.Tensor, y: torch.Tensor, l2: float):
    """Standardised logistic regression (L-BFGS); returns a scoring function."""
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mu) / sd
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    pos = y.float().mean().clamp(0.05, 0.95)
    weight = torch.where(y > 0, 0.5 / pos, 0.5 / (1 - pos))
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y.float(), weight=weight)
                + l2 * (w ** 2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda xs: torch.sigmoid(((xs - mu) / sd) @ w + b).tolist()


def eval_sets(criterion: str) -> dict[str, tuple[list[tuple[str, str]], list[int]]]:
    """The held-out inspector rows, every suite's inputs, and the squad's labelled suite rewrites."""
    from squad.config.policy import load_policies
    from squad.data.rows import inspector_rows, load_policy_data
    from squad.eval.suites import SUITES, load_suite

    policies = load_policies(Path("policies"), None)
    data = {c: load_policy_data(Path("policies") / c) for c in policies}
    held = inspector_rows(data, criterion, "test", policies[criterion].independent_of)
    sets = {"heldout": ([(r.question, r.answer) for r in held], [r.label for r in held])}
    rw_pairs, rw_y = [], []
    for s in SUITES:
        rows = load_suite(s)
        sets[s] = (scored_pairs(rows), [0 if criterion in r.misaligned else 1 for r in rows])
        for p, y in zip(*labelled_suite_rewrites(s, criterion)):
            if p[1].strip():
                rw_pairs.append(p)
                rw_y.append(y)
    sets["rewrites"] = (rw_pairs, rw_y)
    return sets


def train_rows(criterion: str, candidates: bool, rewrites: list[Path]) -> tuple[list[tuple[str, str]], list[int]]:
    """The criterion's train-split inspector rows, plus its candidate rows and read rewrites if asked."""
    extra = [Path("policies") / criterion / "data/candidates/inspector.jsonl"] if candidates else []
    base, added = training_rows(criterion, extra, rewrites)
    return [(r.question, r.answer) for r in base + added], [r.label for r in base + added]


def shipped_scores(squad, criterion: str, pairs) -> list[float]:
    return [d[criterion] for d in squad.inspector.score(pairs, [criterion])]


def main() -> None:
    from squad.eval.metrics import auroc
    from squad.sdk.local import Squad

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--criteria", nargs="+", default=["ethics", "helpfulness", "honesty"])
    p.add_argument("--candidates", action="store_true", help="add policies/<criterion>/data/candidates/inspector.jsonl")
    p.add_argument("--rewrites", nargs="*", default=[], type=Path,
                   help="read rewrites (`squad data rewrites` output plus `misaligned`) added to training")
    p.add_argument("--layer", type=int, default=16, help="aligner-base layer whose hidden states are read")
    p.add_argument("--l2", type=float, default=1e-2)
    p.add_argument("--judges", nargs="+", default=["shipped", "minilm", "minilm+shipped", "lm", "lm+shipped"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=CACHE / "report.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    squad = Squad.load("default")
    lm = LMFeatures(a.layer) if any(j.startswith("lm") for j in a.judges) else None
    mini = MiniLMFeatures() if any(j.startswith("minilm") for j in a.judges) else None
    report: dict = {}
    for crit in a.criteria:
        tr_pairs, tr_y = train_rows(crit, a.candidates, a.rewrites)
        sets = eval_sets(crit)
        print(f"{crit}: {len(tr_pairs)} training rows; " + ", ".join(f"{k} {len(v[0])}" for k, v in sets.items()),
              flush=True)
        logit = lambda ps: torch.logit(torch.tensor(shipped_scores(squad, crit, ps)).clamp(1e-4, 1 - 1e-4)).unsqueeze(1)
        fx = {"minilm": (lambda ps: features(mini, ps)), "lm": (lambda ps: features(lm, ps))}
        ytr = torch.tensor(tr_y)
        heads = {}
        report[crit] = {}
        for judge in a.judges:
            name, _, plus = judge.partition("+")
            if name == "shipped":
                score = lambda ps: shipped_scores(squad, crit, ps)
            else:
                if name not in heads:
                    heads[name] = fit_head(fx[name](tr_pairs), ytr, a.l2)
                score = lambda ps, f=fx[name], head=heads[name]: head(f(ps))
            if plus:  # the mean of the two judges' logits: nothing fitted on the shipped scores
                score = lambda ps, one=score: torch.sigmoid(
                    (torch.logit(torch.tensor(one(ps)).clamp(1e-4, 1 - 1e-4)) + logit(ps).squeeze(1)) / 2).tolist()
            row = {}
            for set_name, (ps, ys) in sets.items():
                row[set_name] = auroc(ys, score(ps)) if ps else None
            report[crit][judge] = row
            print(f"  {judge:>11}: " + "  ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in row.items()),
                  flush=True)
    # added latency of one pair's features, p50 of 20
    q, ans = "What is the boiling point of water at sea level?", "It boils at 100 degrees Celsius at sea level."
    lat = {name: p50(timed(lambda f=f: f([(q, ans)]), 20, warmup=1)) for name, f in (("lm", lm), ("minilm", mini))
           if f is not None}
    print("one-pair feature latency p50 (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in lat.items()))
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps({"auroc": report, "latency_ms": lat, "layer": a.layer, "l2": a.l2,
                                    "candidates": a.candidates,
                                    "rewrites": [str(e) for e in a.rewrites]}, indent=2))


if __name__ == "__main__":
    main()
