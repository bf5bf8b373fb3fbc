"""``squad batch``: the squad algorithm as a Ray Data pipeline over JSON Lines or Parquet.

The input streams through the driver in chunks of ``chunk_rows`` valid rows; each chunk goes through
``run_squad`` (the one implementation of the algorithm) with injected calls that each run one Ray
Data pass: ``inspect`` is a ``map_batches`` pass over an inspector actor pool, ``align`` a pass over
an actor pool holding that criterion's aligner. So per round: one inspector pass for every pending
row, then one aligner pass per criterion, then re-scoring. Rows that fail validation go to
``OUT/errors/errors.jsonl`` with the reason; corrected rows go to ``OUT/part-NNNNN.{jsonl,parquet}``.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel, Field, ValidationError

from squad.algorithm import run_squad
from squad.correction import Correction
from squad.data import PairRow, check_line, iter_jsonl, row_error
from squad.errors import ConfigError, DataError, SquadError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "batch.yaml"
FORMATS = ("jsonl", "parquet")


# ---------------------------------------------------------------------------------------------
# Config (configs/batch.yaml)


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


class StageResources(_Strict):
    concurrency: int = Field(1, ge=1, description="Actors in this stage's pool (never more than one per batch).")
    batch_size: int = Field(32, ge=1, description="Rows per map_batches call (one model call).")
    num_cpus: float = Field(0.5, ge=0, description="CPUs reserved per actor; fractional so stages share a small machine.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (GPU clusters); the model then runs on CUDA.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per actor.")


class AlignerStage(StageResources):
    engine: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="auto: vLLM through ray.data.llm when num_gpus > 0, vllm is installed and the "
                            "aligners are LoRA adapters; HF transformers otherwise.")


class BatchConfig(_Strict):
    chunk_rows: int = Field(2048, ge=1, description="Valid rows per run of the squad algorithm; bounds driver memory.")
    inspector: StageResources = Field(default_factory=lambda: StageResources(batch_size=64))
    aligner: AlignerStage = Field(default_factory=lambda: AlignerStage(batch_size=8, concurrency=2))
    progress: bool = Field(True, description="Show a progress bar over rows (stderr).")


def load_batch_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BatchConfig:
    """``path`` (default: configs/batch.yaml, or the built-in defaults where it is absent) plus key=value overrides."""
    from squad.config import load_config

    if path is None and not DEFAULT_CONFIG.is_file():  # an installed package: built-in defaults plus overrides
        from omegaconf import OmegaConf

        try:
            if any("=" not in o for o in overrides or []):
                raise ValueError(f"overrides must be key=value, got {overrides}")
            raw = OmegaConf.merge(OmegaConf.create(BatchConfig().model_dump()), OmegaConf.from_dotlist(list(overrides or [])))
            return BatchConfig.model_validate(OmegaConf.to_container(raw, resolve=True))
        except Exception as e:
            raise ConfigError(f"batch config: {e}") from None
    return load_config(path or DEFAULT_CONFIG, BatchConfig, overrides)


# ---------------------------------------------------------------------------------------------
# Actors (one pool per pass; models load once per actor)


class InspectorActor:
    """map_batches UDF: ``{idx, question, answer}`` -> ``{idx, score:<criterion>...}``."""

    def __init__(self, bundle: str, criteria: list[str], threads: int = 1, device: str = "cpu"):
        import torch

        from squad.bundle import read_manifest, resolve_bundle
        from squad.sdk import load_inspector

        torch.set_num_threads(threads)
        path = resolve_bundle(bundle)
        self.inspector, self.criteria = load_inspector(path, read_manifest(path), device), criteria

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        scores = self.inspector.score(list(zip(batch["question"].tolist(), batch["answer"].tolist())), self.criteria)
        return {"idx": batch["idx"], **{f"score:{c}": np.array([s[c] for s in scores], dtype=np.float64)
                                        for c in self.criteria}}


class AlignerActor:
    """map_batches UDF for one criterion: ``{idx, question, answer}`` -> ``{idx, answer}``."""

    def __init__(self, bundle: str, criterion: str, threads: int = 1, device: str = "cpu", batch_size: int = 8):
        import torch

        from squad.bundle import read_manifest, resolve_bundle
        from squad.sdk import load_aligner

        torch.set_num_threads(threads)
        path = resolve_bundle(bundle)
        self.aligner = load_aligner(path, read_manifest(path), device, criteria=[criterion])
        self.aligner.engine.batch_size = batch_size
        self.criterion = criterion

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out = self.aligner.correct(self.criterion, list(zip(batch["question"].tolist(), batch["answer"].tolist())))
        return {"idx": batch["idx"], "answer": np.array(out, dtype=object)}


# ---------------------------------------------------------------------------------------------
# The injected inspect / align calls: one Ray Data pass each


class RayPasses:
    def __init__(self, bundle: str, cfg: BatchConfig, on_pass: Callable[[str], None] = lambda _: None):
        from squad.bundle import read_manifest, resolve_bundle

        self.bundle, self.cfg, self.on_pass = bundle, cfg, on_pass
        self.path = resolve_bundle(bundle)
        self.manifest = read_manifest(self.path)
        self.actor_bundle = "default" if bundle == "default" else str(self.path)  # "default": each node's own copy
        self.passes = 0
        self.vllm = _use_vllm(cfg.aligner, self.manifest.aligner.mode)
        self._processor = None

    def _run(self, udf, kwargs: dict, stage: StageResources, pairs: list[tuple[str, str]], what: str) -> list[dict]:
        import ray

        self.passes += 1
        self.on_pass(f"{what}, {len(pairs)} rows")
        nb = math.ceil(len(pairs) / stage.batch_size)
        ds = ray.data.from_items([{"idx": i, "question": q, "answer": a} for i, (q, a) in enumerate(pairs)],
                                 override_num_blocks=max(1, nb))
        extra = {"num_gpus": stage.num_gpus} if stage.num_gpus else {}
        pool = ray.data.ActorPoolStrategy(size=min(stage.concurrency, nb))  # never more actors than batches
        rows = ds.map_batches(udf, fn_constructor_kwargs=kwargs, batch_size=stage.batch_size, compute=pool,
                              num_cpus=stage.num_cpus, **extra).take_all()
        rows.sort(key=lambda r: int(r["idx"]))
        if [int(r["idx"]) for r in rows] != list(range(len(pairs))):
            raise RuntimeError(f"{what}: got {len(rows)} rows back for {len(pairs)}")
        return rows

    def inspect(self, pairs: list[tuple[str, str]], criteria: list[str]) -> list[dict[str, float]]:
        st = self.cfg.inspector
        rows = self._run(InspectorActor, dict(bundle=self.actor_bundle, criteria=list(criteria), threads=st.torch_threads,
                                              device=_device(st)), st, pairs, "inspectors")
        return [{c: float(r[f"score:{c}"]) for c in criteria} for r in rows]

    def align(self, criterion: str, pairs: list[tuple[str, str]]) -> list[str]:
        if self.vllm:
            return self._align_vllm(criterion, pairs)
        st = self.cfg.aligner
        rows = self._run(AlignerActor, dict(bundle=self.actor_bundle, criterion=criterion, threads=st.torch_threads,
                                            device=_device(st), batch_size=st.batch_size), st, pairs,
                         f"aligner {criterion}")
        return [str(r["answer"]) for r in rows]

    def _align_vllm(self, criterion: str, pairs: list[tuple[str, str]]) -> list[str]:
        """GPU path: the vLLM engine through ray.data.llm, one LoRA adapter per criterion (by path)."""
        import ray
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        from squad.models import load_tokenizer, resolve
        from squad.prompt import build_prompt

        base = resolve(self.manifest.aligner.base)
        if self._processor is None:
            st, n = self.cfg.aligner, self.manifest.aligner.max_new_tokens
            rank = max(json.loads((self.path / e.aligner / "adapter_config.json").read_text())["r"]
                       for e in self.manifest.criteria.values())
            self._tokenizer = tok = load_tokenizer(base)
            stop = sorted({t for t in (tok.eos_token, "<|im_end|>", "<|endoftext|>") if t})  # end of the assistant turn
            conf = vLLMEngineProcessorConfig(
                model_source=str(base), concurrency=st.concurrency, batch_size=st.batch_size,
                engine_kwargs={"enable_lora": True, "max_lora_rank": rank, "max_loras": len(self.manifest.criteria)},
                chat_template_stage=False, tokenize_stage=False, detokenize_stage=False)
            self._processor = build_processor(
                conf, preprocess=lambda r: {**r, "sampling_params": {"temperature": 0.0, "max_tokens": n, "stop": stop}},
                postprocess=lambda r: {"idx": r["idx"], "answer": r["generated_text"].strip()})
        self.passes += 1
        self.on_pass(f"aligner {criterion} (vLLM), {len(pairs)} rows")
        entry = self.manifest.criteria[criterion]
        items = [{"idx": i, "model": str(self.path / entry.aligner),
                  "prompt": build_prompt(self._tokenizer, entry.policy.instruction, q, a)} for i, (q, a) in enumerate(pairs)]
        rows = sorted(self._processor(ray.data.from_items(items)).take_all(), key=lambda r: int(r["idx"]))
        return [str(r["answer"]) for r in rows]


def _device(stage: StageResources) -> str:
    return "cuda" if stage.num_gpus > 0 else "cpu"


def _use_vllm(stage: AlignerStage, mode: str) -> bool:
    have = importlib.util.find_spec("vllm") is not None
    if stage.engine == "vllm":
        if not have:
            raise ConfigError("aligner.engine=vllm needs vLLM: pip install 'aligner-squad[vllm]'")
        if mode != "lora" or stage.num_gpus <= 0:
            raise ConfigError("aligner.engine=vllm needs LoRA aligners and aligner.num_gpus > 0")
        return True
    return stage.engine == "auto" and have and mode == "lora" and stage.num_gpus > 0


# ---------------------------------------------------------------------------------------------
# Input: (ref, row | None, error | None, raw) records, where ref is the line (JSONL) or row (Parquet) number


@dataclass
class Source:
    path: str
    format: str  # jsonl | parquet
    ref: str  # "line" | "row"


def _is_url(path: str) -> bool:
    return "://" in path


def detect_source(path: str, input_format: str = "auto") -> Source:
    if input_format not in ("auto", *FORMATS):
        raise SquadError(f"unknown input format {input_format!r}; use auto, jsonl or parquet")
    local = not _is_url(path)
    if local and not Path(path).exists():
        raise DataError(f"{path}: input not found")
    fmt = input_format
    if fmt == "auto":
        names = [path] if not (local and Path(path).is_dir()) else [p.name for p in Path(path).iterdir()]
        if any(n.endswith((".parquet", ".pq")) for n in names):
            fmt = "parquet"
        elif any(n.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")) for n in names):
            fmt = "jsonl"
        else:
            raise SquadError(f"{path}: cannot tell the input format from its name; pass --input-format jsonl|parquet")
    return Source(path, fmt, "line" if fmt == "jsonl" else "row")


def read_records(src: Source) -> Iterator[tuple[int, PairRow | None, str | None, Any]]:
    """Every input row with its validation result; never stops at a bad row."""
    import ray

    if src.format == "jsonl" and Path(src.path).is_file():
        yield from iter_jsonl(src.path, PairRow)
    elif src.format == "jsonl":  # a folder or URL: lines through Ray Data, so a bad line is one error, not a failed read
        lineno: dict[str, int] = {}
        for r in ray.data.read_text(src.path, drop_empty_lines=False, include_paths=True).iter_rows():
            line, path = r["text"], r["path"]
            n = lineno[path] = lineno.get(path, 0) + 1  # numbered per file; errors name the file
            if line.strip():
                yield check_line(path, n, line, PairRow)
    else:
        for n, obj in enumerate(ray.data.read_parquet(src.path).iter_rows(), 1):
            try:
                yield n, PairRow.model_validate(dict(obj)), None, dict(obj)
            except ValidationError as e:
                yield n, None, row_error(src.path, n, e), dict(obj)


def _extra(raw: Any) -> dict:
    obj = json.loads(raw) if isinstance(raw, str) else raw
    return {k: v for k, v in obj.items() if k not in ("question", "answer")}


def _jsonable(o: Any) -> Any:
    return o.tolist() if hasattr(o, "tolist") else str(o)


# ---------------------------------------------------------------------------------------------
# Output


class Writer:
    """``OUT/part-NNNNN.<fmt>`` per chunk (rows in input order) and ``OUT/errors/errors.jsonl``."""

    def __init__(self, out: Path, fmt: str, overwrite: bool):
        if fmt not in FORMATS:
            raise SquadError(f"unknown output format {fmt!r}; use jsonl or parquet")
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise SquadError(f"{out}: output folder is not empty; pass --overwrite to replace it")
            shutil.rmtree(out)
        (out / "errors").mkdir(parents=True, exist_ok=True)
        self.out, self.fmt, self.parts = out, fmt, 0
        self.errors_path = out / "errors" / "errors.jsonl"
        self._err = open(self.errors_path, "w", encoding="utf-8")

    def error(self, ref: str, n: int, error: str, raw: Any) -> None:
        raw = raw.rstrip("\n") if isinstance(raw, str) else raw
        self._err.write(json.dumps({ref: n, "error": error, "raw": raw}, ensure_ascii=False, default=_jsonable) + "\n")
        self._err.flush()

    def rows(self, ref: str, chunk: list[tuple[int, PairRow, dict]], results: list[Correction]) -> None:
        rows = [{**extra, **c.model_dump(), ref: n} for (n, _, extra), c in zip(chunk, results)]
        path = self.out / f"part-{self.parts:05d}.{self.fmt}"
        self.parts += 1
        if self.fmt == "jsonl":
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in rows)
        else:
            import pyarrow.parquet as pq

            pq.write_table(_table(rows, list(results[0].scores)), path)

    def close(self) -> None:
        self._err.close()


def _table(rows: list[dict], criteria: list[str]):
    """Arrow table with a fixed type for the trace, so every part file has the same schema."""
    import pyarrow as pa

    scores = pa.struct([(c, pa.float64()) for c in criteria])
    step = pa.struct([("criterion", pa.string()), ("score_before", pa.float64()), ("threshold", pa.float64()),
                      ("applied", pa.bool_()), ("answer", pa.string()), ("latency_ms", pa.float64()),
                      ("error", pa.string())])
    fixed = {"question": pa.string(), "original": pa.string(), "answer": pa.string(), "changed": pa.bool_(),
             "initial_scores": scores, "scores": scores, "steps": pa.list_(step), "latency_ms": pa.float64()}
    keys = dict.fromkeys(k for r in rows for k in r)  # input rows may differ in their extra fields
    cols = {k: pa.array([r.get(k) for r in rows], type=fixed.get(k)) for k in keys}
    return pa.table(cols)


# ---------------------------------------------------------------------------------------------
# The job


def ensure_ray() -> None:
    """Use the running Ray if there is one; otherwise start a local one, or join RAY_ADDRESS."""
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, runtime_env=env)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, runtime_env=env)


class _Quiet(logging.Filter):
    """Drops Ray Data's per-pass chatter (execution plans, 'progress bars disabled'); warnings stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO and not record.getMessage().startswith("Progress bars disabled")


def _quiet_data_context() -> Callable[[], None]:
    """Ordered, quiet Ray Data execution; returns a function that restores the previous settings."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    keys = ("enable_progress_bars", "enable_auto_log_stats", "verbose_stats_logs")
    old = {k: getattr(ctx, k) for k in keys}
    old_order = ctx.execution_options.preserve_order
    ctx.enable_progress_bars = ctx.enable_auto_log_stats = ctx.verbose_stats_logs = False
    ctx.execution_options.preserve_order = True
    quiet = _Quiet()  # on the console handlers only: Ray's session log files keep everything
    handlers = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ != "SessionFileHandler"]
    for h in handlers:
        h.addFilter(quiet)

    def restore():
        for k, v in old.items():
            setattr(ctx, k, v)
        ctx.execution_options.preserve_order = old_order
        for h in handlers:
            h.removeFilter(quiet)

    return restore


def run_batch(src: str | Path, out: str | Path, bundle: str | Path = "default", fmt: str = "jsonl",
              cfg: BatchConfig | None = None, criteria: list[str] | None = None,
              thresholds: dict[str, float] | None = None, max_steps: int | None = None, fail_closed: bool = False,
              input_format: str = "auto", overwrite: bool = False) -> dict:
    """Correct every valid row of ``src`` into ``out``; returns the summary (rows in = out + errors)."""
    from tqdm import tqdm

    from squad.sdk import squad_policy

    cfg = cfg or load_batch_config()
    source = detect_source(str(src), input_format)
    passes = RayPasses(str(bundle), cfg)  # argument, bundle and output errors come before Ray starts
    policy = squad_policy(passes.manifest, criteria, thresholds, max_steps, fail_closed)
    writer = Writer(Path(out), fmt, overwrite)
    ensure_ray()
    restore = _quiet_data_context()
    started = time.perf_counter()
    total = sum(1 for line in open(source.path, "rb") if line.strip()) if Path(source.path).is_file() \
        and source.format == "jsonl" else None
    bar = tqdm(desc="squad batch", unit="row", total=total, disable=not cfg.progress)
    passes.on_pass = lambda s: bar.set_postfix_str(s, refresh=True)
    try:
        n_in = n_out = n_err = 0
        chunk: list[tuple[int, PairRow, dict]] = []

        def flush():
            nonlocal n_out
            if chunk:
                results = run_squad([(r.question, r.answer) for _, r, _ in chunk], passes.inspect, passes.align, policy)
                writer.rows(source.ref, chunk, results)
                n_out += len(chunk)
                bar.update(len(chunk))
                chunk.clear()

        for n, row, err, raw in read_records(source):
            n_in += 1
            if err:
                n_err += 1
                writer.error(source.ref, n, err, raw)
                bar.update(1)
                continue
            chunk.append((n, row, _extra(raw)))
            if len(chunk) >= cfg.chunk_rows:
                flush()
        flush()
    finally:
        writer.close()
        bar.close()
        restore()
    if n_in != n_out + n_err:
        raise RuntimeError(f"row accounting failed: {n_in} in, {n_out} out, {n_err} errors")
    secs = time.perf_counter() - started
    return {"rows_in": n_in, "rows_out": n_out, "errors": n_err, "balanced": True, "output": str(out),
            "errors_file": str(writer.errors_path), "parts": writer.parts, "ray_data_passes": passes.passes,
            "seconds": round(secs, 2), "rows_per_s": round(n_out / secs, 3) if secs else None}
