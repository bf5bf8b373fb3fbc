"""``squad batch``: the squad algorithm as one streaming Ray Data pipeline over JSON Lines or Parquet.

Valid input rows stream through ``max_steps + 1`` stages, each a ``map_batches`` actor pool
(squad.batch.stages): inspectors, then per round a stage that runs the aligners over the rows
grouped by the criterion they picked (one mixed batch) and re-scores what changed. These are the
steps ``run_squad`` takes (squad.core.algorithm), so results match the SDK. Every stage's actors start
once per run and begin loading their models at once, in the background; rows stream between stages
without a barrier. Rows that fail validation go to ``OUT/errors/errors.jsonl`` with the reason;
corrected rows, with their traces, to ``OUT/part-NNNNN.{jsonl,parquet}`` in input order.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import time
from pathlib import Path
from typing import Callable

from squad.core.algorithm import PairState, SquadPolicy
from squad.batch.config import AlignerStage, BatchConfig, StageResources, load_batch_config
from squad.batch.io import FORMATS, Writer, detect_source, extra_fields, read_records
from squad.data.rows import PairRow
from squad.errors import ConfigError

__all__ = ["BatchConfig", "FORMATS", "load_batch_config", "run_batch", "ensure_ray", "stream_states"]


def ensure_ray() -> None:
    """Use the running Ray if there is one; otherwise start a local one, or join RAY_ADDRESS."""
    import ray

    if ray.is_initialized():
        return
    from squad.cluster import init_ray

    init_ray(runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})


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



def resolve_layout(cfg: BatchConfig, policy: SquadPolicy, vllm: bool, resources: dict[str, float]) -> str:
    """``layout: auto``: staged when ``resources`` (Ray's cluster resources) can run every stage at
    once, each with its own cores (torch threads) or GPU share and its memory; fused otherwise. With a few cores,
    each extra stage's actor only adds a process start and model loads (about 4 CPU-seconds of
    imports each here) while the stages take turns on the same cores."""
    if cfg.layout != "auto":
        return cfg.layout
    if vllm:
        return "staged"
    stages = [cfg.inspector] + [cfg.aligner] * policy.max_steps
    cpus = sum(st.torch_threads for st in stages if st.num_gpus == 0)
    gpus = sum(st.num_gpus for st in stages)
    memory = sum(st.memory_bytes for st in stages)
    fits = (resources.get("CPU", 0) >= cpus and resources.get("GPU", 0) >= gpus
            and resources.get("memory", math.inf) >= memory)
    return "staged" if fits else "fused"


def stage_count(cfg: BatchConfig, policy: SquadPolicy, vllm: bool) -> int:
    """Actor pools running squad steps: fused 1; staged the inspectors plus one per round (with vLLM
    a round is the engine's pools plus an inspector pool)."""
    if vllm:
        return 1 + 2 * policy.max_steps
    return 1 if cfg.layout == "fused" else 1 + policy.max_steps


def stream_states(states: list[PairState], bundle: str, cfg: BatchConfig, policy: SquadPolicy):
    """Run the pipeline over ``states``; yields them back, finished, in order."""
    import ray

    from squad.batch.stages import InspectStage, RoundStage, SquadStage, actor_pool, restarts_option, vllm_round
    from squad.models.bundle import read_manifest, resolve_bundle

    path = resolve_bundle(bundle)
    manifest = read_manifest(path)
    actor_bundle = "default" if bundle == "default" else str(path)  # "default": each node's own copy
    vllm = _use_vllm(cfg.aligner, manifest.aligner.mode)
    local = "auto" if cfg.aligner.engine == "vllm" else cfg.aligner.engine  # the engine in this process's actors
    rows_per_block = min(cfg.inspector.batch_size, cfg.aligner.batch_size)
    ds = ray.data.from_items([{"idx": i, "state": st.to_json()} for i, st in enumerate(states)],
                             override_num_blocks=max(1, math.ceil(len(states) / rows_per_block)))

    def stage(udf, st: StageResources, **kw):
        with restarts_option():
            return ds.map_batches(udf, batch_size=st.batch_size, compute=actor_pool(1, st.concurrency),
                                  fn_constructor_kwargs=dict(bundle=actor_bundle, policy=policy, device=_device(st),
                                                             threads=st.torch_threads, **kw),
                                  max_restarts=cfg.actor_restarts, **st.ray_args())

    if resolve_layout(cfg, policy, vllm, ray.cluster_resources()) == "fused" and not vllm:
        for row in stage(SquadStage, cfg.aligner, engine_batch=cfg.engine_batch, engine=local).iter_rows():
            yield PairState.from_json(row["state"])
        return
    ds = stage(InspectStage, cfg.inspector, preload=True)
    for _ in range(policy.max_steps):
        if vllm:
            ds = vllm_round(ds, actor_bundle, path, manifest, policy, cfg.aligner, cfg.actor_restarts)
            ds = stage(InspectStage, cfg.inspector, preload=True)
        else:
            ds = stage(RoundStage, cfg.aligner, engine_batch=cfg.engine_batch, preload=True, engine=local)
    for row in ds.iter_rows():
        yield PairState.from_json(row["state"])


def run_batch(src: str | Path, out: str | Path, bundle: str | Path = "default", fmt: str = "jsonl",
              cfg: BatchConfig | None = None, criteria: list[str] | None = None,
              thresholds: dict[str, float] | None = None, max_steps: int | None = None, fail_closed: bool = False,
              input_format: str = "auto", overwrite: bool = False, stream: Callable = stream_states) -> dict:
    """Correct every valid row of ``src`` into ``out``; returns the summary (rows in = out + errors).

    ``stream(states, bundle, cfg, policy)`` runs the pipeline (tests swap in an in-process one).
    """
    from squad.progress import terminal_bar

    from squad.models.bundle import read_manifest, resolve_bundle
    from squad.sdk.local import squad_policy

    cfg = cfg or load_batch_config()
    source = detect_source(str(src), input_format)
    manifest = read_manifest(resolve_bundle(bundle))  # argument, bundle and output errors come before Ray starts
    policy = squad_policy(manifest, criteria, thresholds, max_steps, fail_closed)
    vllm = _use_vllm(cfg.aligner, manifest.aligner.mode)
    writer = Writer(Path(out), fmt, overwrite)
    ensure_ray()
    import ray

    layout = resolve_layout(cfg, policy, vllm, ray.cluster_resources())
    cfg = cfg.model_copy(update={"layout": layout})
    restore = _quiet_data_context()
    started = time.perf_counter()
    total = sum(1 for line in open(source.path, "rb") if line.strip()) if Path(source.path).is_file() \
        and source.format == "jsonl" else None
    bar = terminal_bar(desc="squad batch", unit="row", total=total, enabled=cfg.progress)
    try:
        n_in = n_out = n_err = 0
        chunk: list[tuple[int, PairRow, dict]] = []

        def flush():
            nonlocal n_out
            if chunk:
                now = time.time()
                states = [PairState.start(r.question, r.answer, now) for _, r, _ in chunk]
                results = []
                for st in stream(states, str(bundle), cfg, policy):
                    results.append(st.result())
                    bar.update(1)
                if len(results) != len(chunk):
                    raise RuntimeError(f"pipeline returned {len(results)} rows for {len(chunk)}")
                writer.rows(source.ref, chunk, results)
                n_out += len(chunk)
                chunk.clear()

        for n, row, err, raw in read_records(source):
            n_in += 1
            if err:
                n_err += 1
                writer.error(source.ref, n, err, raw)
                bar.update(1)
                continue
            chunk.append((n, row, extra_fields(raw)))
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
            "errors_file": str(writer.errors_path), "parts": writer.parts, "layout": layout,
            "stages": stage_count(cfg, policy, vllm),
            "seconds": round(secs, 2), "rows_per_s": round(n_out / secs, 3) if secs else None}
