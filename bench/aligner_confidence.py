"""Does the aligner's own confidence predict a rewrite judged worse? (issue: do no harm)

For every rewrite kept as a final answer in the saved suite runs (``out/eval/<suite>.jsonl``, from
``squad eval --suite``) that has a hand label (``eval/labels/<suite>.jsonl``), two confidences of
the last kept step's rewrite, on the prompt that step saw:
- ``mean_logprob``: its mean token log-probability under its own aligner, teacher-forced (PyTorch);
- ``agreement`` (``--samples N``): how far N sampled rewrites (temperature 0.8, top 40, CTranslate2) agree
  with it, as the mean normalised Levenshtein similarity; a model that knows the answer says it the
  same way each time.
Prints each one's AUROC for telling rewrites judged better or same from those judged worse, also on
the rewrites a grounded criterion would keep (no new number or name), and what a rejection threshold
would cost at a few settings.

    python bench/aligner_confidence.py [--suites wild outputs upstream true-but-suspicious] [--samples 4]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def kept_rewrites(run_file: Path, labels: dict) -> list[dict]:
    from squad.core.correction import Correction
    from squad.eval.labels import output_key
    from squad.core.structure import sanitise

    out = []
    lines = run_file.read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        d = json.loads(line)
        c = Correction.model_validate({k: v for k, v in d.items() if k != "id"})
        lab = labels.get(output_key(c.question, c.original, c.answer))
        kept = [s for s in c.steps if s.applied]
        if not c.changed or lab is None or not kept:
            continue
        last = kept[-1]
        before = kept[-2].answer if len(kept) > 1 else sanitise(c.original)[0]
        out.append({"id": d["id"], "criterion": last.criterion, "question": c.question, "input": before,
                    "rewrite": last.answer, "worse": lab.compare == "worse", "acceptable": lab.acceptable})
    return out


@torch.inference_mode()
def mean_logprob(engine, aligner, items: list[dict]) -> list[float]:
    from tqdm import tqdm

    tok = engine.tokenizer
    scores = []
    for it in tqdm(items, desc="teacher-forced scoring", unit="rewrite"):
        prompt = aligner.prompt(it["criterion"], it["question"], it["input"])
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tok(it["rewrite"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + r_ids])
        model = engine.model_for(it["criterion"])
        logits = model(input_ids=ids).logits[0, len(p_ids) - 1:-1].float()
        lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(r_ids)[:, None]).squeeze(1)
        scores.append(float(lp.mean()))
    return scores


def agreement(aligner, items: list[dict], samples: int, temperature: float = 0.8) -> list[float]:
    """Mean similarity of ``samples`` sampled rewrites to the kept (greedy) one, per item."""
    from rapidfuzz.distance import Levenshtein
    from tqdm import tqdm

    eng = aligner.engine
    tok = eng.tokenizer
    out = []
    for it in tqdm(items, desc="sampled rewrites", unit="rewrite"):
        start = tok.convert_ids_to_tokens(tok(aligner.prompt(it["criterion"], it["question"], it["input"]),
                                              add_special_tokens=False)["input_ids"])
        res = eng._generator(it["criterion"]).generate_batch(
            [start] * samples, max_length=aligner.max_new_tokens, sampling_topk=40, sampling_temperature=temperature,
            end_token=eng.stop_ids, include_prompt_in_result=False, no_repeat_ngram_size=eng.no_repeat_ngram)
        texts = tok.batch_decode([r.sequences_ids[0] for r in res], skip_special_tokens=True)
        out.append(sum(Levenshtein.normalized_similarity(it["rewrite"], t.strip()) for t in texts) / samples)
    return out


def main() -> None:
    from squad.eval.labels import load_labels
    from squad.eval.metrics import auroc
    from squad.sdk.local import Squad

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", nargs="+", default=["wild", "outputs", "upstream", "true-but-suspicious"])
    p.add_argument("--runs", default="out/eval")
    p.add_argument("--bundle", default="default")
    p.add_argument("--output", default="out/eval/aligner_confidence.jsonl")
    p.add_argument("--samples", type=int, default=0, help="sampled rewrites per item for the agreement measure")
    p.add_argument("--limit", type=int, default=0, help="measure a random subset of this many rewrites (seed 0)")
    a = p.parse_args()
    items = []
    for s in a.suites:
        run = Path(a.runs) / f"{s}.jsonl"
        if run.is_file():
            items += [{**it, "suite": s} for it in kept_rewrites(run, load_labels(Path("eval/labels") / f"{s}.jsonl"))]
    if not items:
        raise SystemExit("no labelled rewrites: run `squad eval --suite NAME` and label its outputs first")
    if a.limit and len(items) > a.limit:
        import random

        items = random.Random(0).sample(items, a.limit)
    from squad.core.grounding import new_specifics

    for it in items:
        it["grounded_keeps"] = not new_specifics(f"{it['question']}\n{it['input']}", it["rewrite"])
    aligner = Squad.load(a.bundle, engine="hf").aligner
    for it, lp in zip(items, mean_logprob(aligner.engine, aligner, items)):
        it["mean_logprob"] = lp
    measures = ["mean_logprob"]
    if a.samples:
        import ctranslate2

        ctranslate2.set_random_seed(0)
        for it, ag in zip(items, agreement(Squad.load(a.bundle, engine="ct2").aligner, items, a.samples)):
            it["agreement"] = ag
        measures.append("agreement")
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    print(f"{len(items)} labelled rewrites ({sum(it['worse'] for it in items)} judged worse) -> {a.output}\n")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    for m in measures:
        print(f"### {m}\n")
        print("| group | n | worse | AUROC (not worse vs worse) | AUROC (acceptable vs not) |")
        print("|---|---|---|---|---|")
        crits = sorted({i["criterion"] for i in items})
        groups = {"all": items, **{c: [it for it in items if it["criterion"] == c] for c in crits},
                  "kept by grounding (honesty, helpfulness)": [it for it in items if it["criterion"] != "ethics"
                                                               and it["grounded_keeps"]]}
        for g, its in groups.items():
            v = [it[m] for it in its]
            a1, a2 = auroc([0 if it["worse"] else 1 for it in its], v), auroc([int(it["acceptable"]) for it in its], v)
            print(f"| {g} | {len(its)} | {sum(it['worse'] for it in its)} | {fmt(a1)} | {fmt(a2)} |")
        print(f"\nReject rewrites under a {m} threshold (set at a quantile of the not-worse ones):\n")
        print("| threshold | worse rejected | not-worse rejected |")
        print("|---|---|---|")
        worse = [it[m] for it in items if it["worse"]]
        fine = [it[m] for it in items if not it["worse"]]
        for q in (0.1, 0.25, 0.5):
            t = sorted(fine)[int(q * (len(fine) - 1))] if fine else 0.0
            print(f"| {t:.3f} | {sum(x < t for x in worse)}/{len(worse)} | {sum(x < t for x in fine)}/{len(fine)} |")
        print()

if __name__ == "__main__":
    main()
