"""What added inspector training data does on the evaluation suites (not on the in-distribution split).

Retrains one criterion's fine-tuned inspector (the shipped recipe: LoRA on MiniLM plus its head,
``configs/train.yaml``'s inspector settings) on the policy's inspector rows plus the labelled rows
of ``--extra`` files (JSON Lines ``{question, answer, label}``) and ``--rewrites`` files (the
aligners' rewrites read by hand), their held-out questions left out by the usual hash; writes a
copy of the bundle with that inspector swapped in, and prints
the inspector's AUROC and false-flag rate on the held-out split and on every suite, beside the
shipped inspector's, plus AUROC on the squad's labelled rewrites (saved runs and ``eval/labels``).
No aligner runs: the squad's outputs are scored as they were saved.

    python bench/inspector_data_ablation.py --criterion honesty --extra data/honesty_*.jsonl
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import labelled_suite_rewrites, scored_pairs, training_rows  # noqa: E402


def train_inspector(criterion: str, extra: list[Path], rewrites: list[Path], out_bundle: Path, threads: int) -> float:
    from squad.config.loading import load_config
    from squad.inspector.classifier import Head, feature_dim, load_heads, save_heads
    from squad.models.registry import load_tokenizer, resolve
    from squad.train.config import TrainConfig
    from squad.train.inspector_loop import finetuned_encoder, fit_finetuned

    cfg = load_config("configs/train.yaml", TrainConfig, [])
    spec = cfg.inspector.model_dump()
    base_rows, added = training_rows(criterion, extra, rewrites, seed_only=True)
    rows = [r.model_dump() for r in base_rows + added]
    print(f"{criterion}: {len(rows)} training rows ({len(added)} added from {len(extra) + len(rewrites)} file(s))")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(threads)
    base = str(resolve(cfg.inspector.base))
    tok = load_tokenizer(Path(base))
    encoder = finetuned_encoder(base)
    head = Head(feature_dim(encoder.config.hidden_size, spec["features"]), spec["hidden"])
    t0 = time.time()
    fit_finetuned(encoder, head, tok, rows, spec, cfg.seed, desc=f"inspector/{criterion}")
    seconds = time.time() - t0
    adir = out_bundle / "inspector" / "adapters" / criterion
    shutil.rmtree(adir)
    encoder.save_pretrained(adir, safe_serialization=True)
    for f in adir.iterdir():
        if not f.name.endswith((".json", ".safetensors")):
            f.unlink()
    heads = load_heads(out_bundle / "inspector" / "heads.safetensors", spec_dim(out_bundle), spec["hidden"])
    heads[criterion] = head
    save_heads(heads, out_bundle / "inspector" / "heads.safetensors")
    return seconds


def spec_dim(bundle: Path) -> int:
    return json.loads((bundle / "manifest.json").read_text())["inspector"]["dim"]


def figures(bundle, criterion: str) -> dict:
    """AUROC / false-flag on the held-out split and on every suite's inputs; AUROC on labelled rewrites."""
    from squad.eval.report import heldout_inspector_figures
    from squad.eval.suites import SUITES, load_suite
    from squad.eval.metrics import auroc, heldout_rows
    from squad.sdk.local import Squad

    squad = Squad.load(bundle, probe=False)  # the inspectors alone
    th = {criterion: squad.manifest.criteria[criterion].policy.threshold}
    out = {"heldout": heldout_inspector_figures(squad, heldout_rows(Path("policies"), list(squad.criteria)), th)[criterion]}
    outs_y, outs_s = [], []
    for s in SUITES:
        rows = load_suite(s)
        sc = [d[criterion] for d in squad.inspector.score(scored_pairs(rows), [criterion])]
        good = [v for v, r in zip(sc, rows) if r.good]
        out[s] = {"auroc": auroc([0 if criterion in r.misaligned else 1 for r in rows], sc),
                  "false_flag": sum(v < th[criterion] for v in good) / len(good) if good else None}
        pairs, ys = labelled_suite_rewrites(s, criterion)
        outs_s += pairs
        outs_y += ys
    sc = [d[criterion] for d in squad.inspector.score(outs_s, [criterion])] if outs_s else []
    out["rewrites"] = {"auroc": auroc(outs_y, sc), "n": len(sc)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--criterion", required=True)
    p.add_argument("--extra", nargs="*", default=[], type=Path, help="{question, answer, label} rows for this criterion")
    p.add_argument("--rewrites", nargs="*", default=[], type=Path,
                   help="read rewrites (`squad data rewrites` output plus `misaligned`), labelled for this criterion")
    p.add_argument("--bundle", default="squad/bundles/default", type=Path)
    p.add_argument("--output", default=None, type=Path, help="bundle copy to write (default out/ablation/<criterion>)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    out = a.output or Path("out/ablation") / a.criterion
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(a.bundle, out)
    seconds = train_inspector(a.criterion, a.extra, a.rewrites, out, a.threads)
    before, after = figures(a.bundle, a.criterion), figures(out, a.criterion)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    print(f"\n{a.criterion} inspector, trained in {seconds:.0f} s; AUROC (false-flag at the threshold):\n")
    print("| inspector | " + " | ".join(before) + " |")
    print("|---" * (len(before) + 1) + "|")
    for name, f in (("shipped", before), ("retrained", after)):
        print(f"| {name} | " + " | ".join(f"{fmt(v['auroc'])} (n={v['n']})" if "n" in v else
                                          f"{fmt(v['auroc'])} ({fmt(v['false_flag'])})" for v in f.values()) + " |")
    Path(out / "ablation.json").write_text(json.dumps({"before": before, "after": after, "seconds": seconds,
                                                       "extra": [str(e) for e in a.extra + a.rewrites]}, indent=2))


if __name__ == "__main__":
    main()
