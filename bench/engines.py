"""Aligner decoding engines on CPU, against today's PyTorch path, in one run.

Every candidate decodes the same held-out aligner prompts (misaligned answers of every criterion,
mixed) greedily with the shipped adapters, each in its own process (so peak memory is its own):

- ``torch``: transformers + peft, the hand-written continuous batch (``squad.aligner.decode``): the baseline;
- ``ct2``: CTranslate2, adapters merged per criterion, float32 (the CPU default);
- ``ct2-int8``: the same models with CTranslate2's int8 weights;
- ``llama.cpp`` (with ``--llama-python``): llama-cpp-python, the shipped Q4_1 GGUF base with each
  adapter as a GGUF LoRA; single stream only (llama-cpp-python has no batched generate);
- ``ort-genai`` (with ``--ort-genai DIR``): ONNX Runtime GenAI on models built per criterion with
  its model builder (``DIR/<criterion>``); single stream only.

Printed per candidate: single-stream tokens/s and time to first token (p50), throughput at 8, 16
and 32 concurrent rows of mixed criteria, peak memory, and how many outputs equal the torch
path's, each speed also as a ratio to torch. Then the single-stream bound that this machine's
memory bandwidth sets for the CTranslate2 model's weights, and the ratio ct2 reaches. See
docs/engines.md for preparing the optional candidates.

    python bench/engines.py [--rows 32] [--single 8] [--llama-python PY --gguf-dir DIR] [--ort-genai DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRITERIA = ("ethics", "helpfulness", "honesty")


def prompts(rows: int) -> tuple[list[str], list[str]]:
    """``rows`` held-out aligner prompts, criteria interleaved."""
    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.data.rows import load_policy_data
    from squad.models.registry import load_tokenizer, resolve
    from squad.core.prompt import build_prompt

    man = read_manifest(resolve_bundle("default"))
    tok = load_tokenizer(resolve(man.aligner.base))
    per = {c: [build_prompt(tok, man.criteria[c].policy.instruction, r.question, r.answer)
               for r in load_policy_data(ROOT / "policies" / c).split("test")[0]] for c in CRITERIA}
    out, crits = [], []
    for i in range(rows):
        c = CRITERIA[i % 3]
        out.append(per[c][(i // 3) % len(per[c])])
        crits.append(c)
    return out, crits


# ---------------------------------------------------------------------------------------------
# Workers: one process per candidate; each prints one JSON line.


def _timed_runs(generate, first_token, ps, cs, single: int, batches: list[int], max_new: int, count) -> dict:
    generate(ps[:2], cs[:2], max_new)  # warm-up
    res: dict = {}
    t0, ntok, outs = time.perf_counter(), 0, []
    for p, c in zip(ps[:single], cs[:single]):
        out = generate([p], [c], max_new)
        outs += out
        ntok += count(out[0])
    res["single_tok_s"] = ntok / (time.perf_counter() - t0)
    ttft = sorted(first_token(p, c) for p, c in zip(ps[:single], cs[:single]))
    res["ttft_ms"] = ttft[len(ttft) // 2] * 1000
    for b in batches:
        t0 = time.perf_counter()
        out = generate(ps[:b], cs[:b], max_new)
        res[f"batch{b}_tok_s"] = sum(map(count, out)) / (time.perf_counter() - t0)
        if b == max(batches):
            outs = out
    res["outputs"] = outs
    return res


def worker_squad(kind: str, args) -> dict:
    """torch, ct2 and ct2-int8: the project's own engines."""
    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.models.registry import resolve

    bundle = resolve_bundle("default")
    man = read_manifest(bundle)
    adapters = {c: bundle / man.criteria[c].aligner for c in CRITERIA}
    base = resolve(man.aligner.base)
    t0 = time.perf_counter()
    if kind == "torch":
        from squad.aligner.engine import HFEngine

        eng = HFEngine(base, adapters=adapters, batch_size=max(args.batches))
    else:
        from squad.aligner.ct2_engine import CT2Engine

        eng = CT2Engine(base, adapters=adapters, batch_size=max(args.batches),
                        compute_type="int8" if kind == "ct2-int8" else "float32")
    load_s = time.perf_counter() - t0
    tok = eng.tokenizer
    ps, cs = prompts(args.rows)

    def count(text: str) -> int:  # generated tokens, the stop token included
        return len(tok(text, add_special_tokens=False)["input_ids"]) + 1

    def first(p, c):
        t = time.perf_counter()
        eng.generate_mixed([p], [c], 1)
        return time.perf_counter() - t

    res = _timed_runs(eng.generate_mixed, first, ps, cs, args.single, args.batches, args.max_new_tokens, count)
    res["load_s"] = load_s
    return res


def worker_llama(args) -> dict:
    """llama.cpp through llama-cpp-python: the Q4_1 base with one GGUF LoRA per criterion."""
    from llama_cpp import Llama

    data = json.loads(Path(args.prompts_file).read_text())
    ps, cs = data["prompts"], data["criteria"]
    t0 = time.perf_counter()
    llms = {c: Llama(model_path=args.gguf_base, lora_path=str(Path(args.gguf_dir) / f"lora-{c}.gguf"),
                     n_ctx=2048, n_threads=os.cpu_count(), verbose=False) for c in CRITERIA}
    load_s = time.perf_counter() - t0
    stops = {llms["ethics"].token_eos(), *llms["ethics"].tokenize(b"<|im_end|>", add_bos=False, special=True)}

    def one(p, c, max_new, first=False):
        llm = llms[c]
        ids = llm.tokenize(p.encode(), add_bos=False, special=True)
        out, t = [], time.perf_counter()
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            if first:
                return time.perf_counter() - t
            out.append(token)
            if token in stops or len(out) >= max_new:
                break
        return llm.detokenize([x for x in out if x not in stops]).decode(errors="replace").strip(), len(out)

    counts: dict[str, int] = {}

    def generate(pp, cc, max_new):
        texts = []
        for p, c in zip(pp, cc):
            text, n = one(p, c, max_new)
            counts[text] = n
            texts.append(text)
        return texts

    res = _timed_runs(generate, lambda p, c: one(p, c, 1, first=True), ps, cs, args.single, [],
                      args.max_new_tokens, lambda text: counts[text])
    res["load_s"] = load_s
    return res


def worker_ort_genai(args) -> dict:
    """ONNX Runtime GenAI: one model per criterion, built with its model builder."""
    import onnxruntime_genai as og

    from squad.models.registry import load_tokenizer, resolve

    tok = load_tokenizer(resolve("smollm2-135m-instruct"))
    ps, cs = prompts(args.rows)
    t0 = time.perf_counter()
    models = {c: og.Model(str(Path(args.ort_genai) / c)) for c in CRITERIA}
    load_s = time.perf_counter() - t0

    def one(p, c, max_new):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        params = og.GeneratorParams(models[c])
        params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
        gen = og.Generator(models[c], params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        return list(gen.get_sequence(0))[len(ids):]

    counts: dict[str, int] = {}

    def generate(pp, cc, max_new):
        texts = []
        for p, c in zip(pp, cc):
            ids = one(p, c, max_new)
            text = tok.decode(ids, skip_special_tokens=True).strip()
            counts[text] = len(ids)
            texts.append(text)
        return texts

    def first(p, c):
        t = time.perf_counter()
        one(p, c, 1)
        return time.perf_counter() - t

    res = _timed_runs(generate, first, ps, cs, args.single, [], args.max_new_tokens, lambda text: counts[text])
    res["load_s"] = load_s
    return res


# ---------------------------------------------------------------------------------------------
# The machine's limit


def read_bandwidth_gb_s(size_mb: int = 1024, repeats: int = 5) -> float:
    """Best read bandwidth over a buffer far larger than the caches, all cores (torch's sum)."""
    import torch

    x = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    x.sum()
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return best


def ct2_weight_bytes() -> int:
    """Bytes of the ethics aligner's CTranslate2 model: what one decode step reads at batch 1."""
    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.aligner.ct2_engine import convert
    from squad.models.registry import resolve

    bundle = resolve_bundle("default")
    man = read_manifest(bundle)
    path = convert(resolve(man.aligner.base), {"ethics": bundle / man.criteria["ethics"].aligner})["ethics"]
    return (path / "model.bin").stat().st_size


# ---------------------------------------------------------------------------------------------


def run_worker(name: str, python: str, args, prompts_file: str) -> dict | None:
    cmd = [python, __file__, "--worker", name, "--rows", str(args.rows), "--single", str(args.single),
           "--batches", ",".join(map(str, args.batches)), "--max-new-tokens", str(args.max_new_tokens),
           "--prompts-file", prompts_file]
    if args.gguf_dir:
        cmd += ["--gguf-dir", args.gguf_dir, "--gguf-base", args.gguf_base]
    if args.ort_genai:
        cmd += ["--ort-genai", args.ort_genai]
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        print(f"[bench] {name} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32, help="prompts in the largest batch")
    ap.add_argument("--single", type=int, default=8, help="prompts decoded one at a time")
    ap.add_argument("--batches", default="8,16,32")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--candidates", default="torch,ct2,ct2-int8")
    ap.add_argument("--llama-python", help="a Python with llama-cpp-python installed (adds the llama.cpp candidate)")
    ap.add_argument("--gguf-dir", help="folder with lora-<criterion>.gguf adapters (docs/engines.md)")
    ap.add_argument("--gguf-base", help="GGUF base model (default: the shipped SmolLM2 Q4_1 file)")
    ap.add_argument("--ort-genai", help="folder with one ONNX Runtime GenAI model per criterion (adds ort-genai)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b]

    if args.worker:
        res = {"llama.cpp": worker_llama, "ort-genai": worker_ort_genai}.get(args.worker)
        res = res(args) if res else worker_squad(args.worker, args)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return

    from squad.models.registry import gguf_file

    if args.gguf_dir and not args.gguf_base:
        args.gguf_base = str(gguf_file("smollm2-135m-instruct"))
    ps, cs = prompts(args.rows)
    pf = Path(tempfile.mkdtemp(prefix="squad-engines-")) / "prompts.json"
    pf.write_text(json.dumps({"prompts": ps, "criteria": cs}))
    cands = [(c, sys.executable) for c in args.candidates.split(",")]
    if args.llama_python:
        cands.append(("llama.cpp", args.llama_python))
    if args.ort_genai:
        cands.append(("ort-genai", sys.executable))
    results = {name: r for name, py in cands if (r := run_worker(name, py, args, str(pf))) is not None}
    if "torch" not in results:
        sys.exit("the torch baseline failed; no ratios to print")
    base = results["torch"]
    n_single = args.single
    print(f"workload: {args.rows} held-out aligner prompts (criteria mixed), greedy, at most "
          f"{args.max_new_tokens} new tokens; {os.cpu_count()} cores\n")
    heads = ["single tok/s", "TTFT p50 ms"] + [f"{b} rows tok/s" for b in args.batches]
    print("| engine | " + " | ".join(heads) + " | peak MB | load s | same output as torch |")
    print("|---|" + "---|" * (len(heads) + 3))
    for name, r in results.items():
        cells = [f"{r['single_tok_s']:.1f} ({r['single_tok_s'] / base['single_tok_s']:.1f}x)", f"{r['ttft_ms']:.0f}"]
        for b in args.batches:
            k = f"batch{b}_tok_s"
            cells.append(f"{r[k]:.1f} ({r[k] / base[k]:.1f}x)" if k in r else "n/a")
        ref = base["outputs"] if len(r["outputs"]) == len(base["outputs"]) else base["outputs"][:n_single]
        mine = r["outputs"][:len(ref)]
        if len(mine) < len(ref):  # single-stream-only engines: compare the prompts they decoded
            ref = ref[:len(mine)]
        same = sum(a == b for a, b in zip(mine, ref))
        print(f"| {name} | " + " | ".join(cells) + f" | {r['peak_rss_mb']:.0f} | {r['load_s']:.1f} | {same}/{len(ref)} |")

    bw = read_bandwidth_gb_s()
    weights = ct2_weight_bytes()
    bound = bw * 1e9 / weights
    print(f"\nmemory read bandwidth: {bw:.1f} GB/s; ct2 model weights {weights / 1e6:.0f} MB per decode step "
          f"-> single-stream bound {bound:.1f} tok/s")
    if "ct2" in results:
        print(f"ct2 single stream reaches {results['ct2']['single_tok_s'] / bound:.2f} of that bound")


if __name__ == "__main__":
    main()
