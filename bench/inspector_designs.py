"""Inspector designs on the held-out split: AUROC and latency, measured in one run.

A: shared frozen MiniLM encoder, one MLP head per criterion (one encoder pass for all criteria),
   with the heads reading the joint pair embedding only; (A+span) the joint embedding plus the
   question's and the answer's tokens pooled apart from that same pass, and their product; or
   (A+pair) those two from a second encoder pass over question and answer alone.
B: the IBM paper's choice, an encoder fine-tuned per criterion (LoRA adapter + head per criterion;
   one encoder pass per criterion).
Both are trained here on the train split with the same functions the Ray Train loops use, then
loaded through the one Inspector API and timed on single already-good pairs (all three criteria).

    python bench/inspector_designs.py [--epochs 2] [--calls 60] [--no-finetuned]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import p50, timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs for design B")
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-finetuned", action="store_true", help="skip design B (the slow one to train)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModel

    from squad.data.rows import inspector_rows, load_policy_data
    from squad.eval.metrics import auroc
    from squad.inspector.classifier import Head, Inspector, save_heads
    from squad.models.registry import load_tokenizer, resolve
    from squad.config.policy import load_policies
    from squad.train.config import InspectorTrain
    from squad.train.inspector_loop import embed_pairs, finetuned_encoder, fit_finetuned, fit_head

    policies = load_policies(ROOT / "policies")
    crits = list(policies)
    data = {c: load_policy_data(ROOT / "policies" / c) for c in crits}
    base = resolve("all-minilm-l6-v2")
    tok = load_tokenizer(base)
    spec = InspectorTrain(finetune_epochs=args.epochs).model_dump()
    train = {c: [r.model_dump() for r in inspector_rows(data, c, "train", policies[c].independent_of)] for c in crits}
    test = {c: inspector_rows(data, c, "test", policies[c].independent_of) for c in crits}
    good = data["helpfulness"].split("test")[1][0]
    pair = (good.question, good.answer)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # A: shared frozen encoder + heads, for each head input.
        enc = AutoModel.from_pretrained(base).eval()
        shared = {}
        for features in ("joint", "span", "pair"):
            heads = {}
            for k, c in enumerate(crits):
                x = embed_pairs(enc, tok, [(r["question"], r["answer"]) for r in train[c]], spec["max_length"], features)
                heads[c], _ = fit_head(x, torch.tensor([float(r["label"]) for r in train[c]]), spec["hidden"],
                                       spec["epochs"], spec["lr"], spec["weight_decay"], k)
            shared[features] = Inspector(base, heads, kind="shared", features=features)
        designs = {"A shared frozen encoder, joint pair embedding": shared["joint"],
                   "A+span shared frozen encoder, joint + question/answer spans": shared["span"],
                   "A+pair shared frozen encoder, joint + question + answer alone": shared["pair"]}
        if not args.no_finetuned:  # B: fine-tuned encoder per criterion.
            adapters, bheads = {}, {}
            for k, c in enumerate(crits):
                torch.manual_seed(k)
                e = finetuned_encoder(str(base))
                h = Head(e.config.hidden_size, spec["hidden"])
                fit_finetuned(e, h, tok, train[c], {**spec, "features": "joint"}, k, desc=f"design B {c}")
                e.save_pretrained(tmp / c, safe_serialization=True)
                adapters[c], bheads[c] = tmp / c, h
            save_heads(bheads, tmp / "heads.safetensors")
            designs["B fine-tuned encoder per criterion (joint; shipped)"] = Inspector(base, bheads, kind="finetuned",
                                                                              adapters=adapters)

        print("| design | " + " | ".join(f"AUROC {c}" for c in crits) + " | p50 ms, 1 pair x 3 criteria |")
        print("|---|" + "---|" * (len(crits) + 1))
        lat = {}
        for name, insp in designs.items():
            aucs = []
            for c in crits:
                s = insp.score([(r.question, r.answer) for r in test[c]], [c])
                aucs.append(auroc([r.label for r in test[c]], [x[c] for x in s]))
            lat[name] = p50(timed(lambda: insp.score([pair]), args.calls))
            print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in aucs) + f" | {lat[name]:.1f} |", flush=True)
        first = next(iter(lat))
        print(f"\nlatency ratios against design A (same run, {args.threads} threads): "
              + ", ".join(f"{n.split()[0]} {v / lat[first]:.2f}x" for n, v in lat.items()))


if __name__ == "__main__":
    main()
