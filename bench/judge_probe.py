"""A judge reading the aligner base's own hidden states, against the shipped inspectors, on the suites.

Issue 20 asks, where an inspector's suite AUROC stays under target, for at least one alternative
judge measured against it. This bench fits one logistic-regression head per criterion on frozen
features of (question, answer) and reports AUROC on the held-out seed split, on every suite's
inputs (hand labels) and on the squad's labelled rewrites, beside the shipped inspector's:

- ``lm``: SmolLM2-135M (the aligner base, where this stack's world knowledge lives), the pair as a
  chat turn, the answer tokens' hidden states mean-pooled at layer ``--layer``;
- ``minilm``: the frozen MiniLM encoder, mean-pooled over ``question [SEP] answer``;
- ``lm+shipped``, ``minilm+shipped``: the mean of that head's logit and the shipped inspector's.

Training rows are the seed inspector rows of the train split (``squad.data.rows.inspector_rows``
without the policies' ``inspector.jsonl`` and ``rewrites.jsonl``), plus with ``--candidates`` the
criterion's ``inspector.jsonl`` and with ``--rewrites`` the aligners' rewrites as read by hand
(``squad data rewrites``): what each addition does. "shipped" is the default bundle's inspectors
alone (``probe=False``). Nothing under ``eval/`` is trained on. Features are cached under
``out/probe/``. The last column times one pair's features (the judge's added latency).

    python bench/judge_probe.py --candidates --rewrites policies/*/data/rewrites.jsonl
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
    """The hidden-state judge's features (squad.inspector.probe): the answer tokens' hidden states
    at one layer of the aligner base, mean-pooled."""

    def __init__(self, layer: int, max_q: int = 64, max_a: int = 128):
        from squad.inspector.probe import HiddenStateProbe
        from squad.models.registry import resolve

        self.probe = HiddenStateProbe(resolve("smollm2-135m-instruct"), layer, max_question_tokens=max_q,
                                      max_answer_tokens=max_a)
        self.name = f"judge{layer}"

    def __call__(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        return self.probe.features(pairs)


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
    """The judge's logistic head (squad.inspector.probe.fit_head); returns a scoring function."""
    from squad.inspector.probe import fit_head as fit

    w, b = fit(x, y, l2)
    return lambda xs: torch.sigmoid(xs @ w + b).tolist()


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
    extra = [Path("policies") / criterion / "data/inspector.jsonl"] if candidates else []
    base, added = training_rows(criterion, extra, rewrites, seed_only=True)
    return [(r.question, r.answer) for r in base + added], [r.label for r in base + added]


def shipped_scores(squad, criterion: str, pairs) -> list[float]:
    return [d[criterion] for d in squad.inspector.score(pairs, [criterion])]


def main() -> None:
    from squad.eval.metrics import auroc
    from squad.sdk.local import Squad

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--criteria", nargs="+", default=["ethics", "helpfulness", "honesty"])
    p.add_argument("--candidates", action="store_true", help="add policies/<criterion>/data/inspector.jsonl")
    p.add_argument("--rewrites", nargs="*", default=[], type=Path,
                   help="read rewrites (`squad data rewrites` output plus `misaligned`) added to training")
    p.add_argument("--layer", type=int, default=16, help="aligner-base layer whose hidden states are read")
    p.add_argument("--l2", type=float, default=1e-2)
    p.add_argument("--judges", nargs="+", default=["shipped", "minilm", "minilm+shipped", "lm", "lm+shipped"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=CACHE / "report.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    squad = Squad.load("default", probe=False)  # "shipped": the inspectors alone
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
