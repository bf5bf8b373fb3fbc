"""Fit every aligner and every inspector at once on Ray Train, then assemble a squad bundle.

One TorchTrainer per model (an aligner per criterion; the shared inspector, or an inspector per
criterion when fine-tuned), each with its own ScalingConfig, all launched concurrently from Ray
tasks. Rerunning with the same ``storage``/``run_name`` resumes each model from its latest checkpoint,
as long as that model's job (its training rows and settings) is unchanged; a changed job is moved
aside to ``<run>.stale-<time>`` and trained from scratch.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from squad.models.bundle import AlignerSpec, CriterionEntry, InspectorSpec, Manifest, write_manifest
from squad.data.rows import inspector_rows, load_policy_data
from squad.config.policy import load_policies
from squad.train.config import ScalingSpec, TrainConfig


def latest_checkpoint(run_dir: Path) -> Path | None:
    best, best_epoch = None, -1
    for state in run_dir.glob("**/state.json"):
        epoch = json.loads(state.read_text()).get("epoch", 0)
        if epoch > best_epoch:
            best, best_epoch = state.parent, epoch
    return best


# Settings a resumed run may change: more epochs continue the run, other resources run it elsewhere,
# and neither gradient checkpointing nor the bundle's adapter dtype changes what the checkpoints hold.
_RESUMABLE = ("epochs", "finetune_epochs", "scaling", "save_dtype", "gradient_checkpointing", "quantize")


def job_fingerprint(loop: str, loop_config: dict) -> str:
    """What a model's checkpoints depend on: its loop, rows and settings (not epochs or resources)."""
    keep = {k: v for k, v in loop_config.items() if k not in ("wandb", "wandb_dir", "run_name", "progress_board")}
    keep["spec"] = {k: v for k, v in keep.get("spec", {}).items() if k not in _RESUMABLE}
    blob = json.dumps({"loop": loop, "config": keep}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def resume_point(run_dir: Path, fingerprint: str, log=print) -> Path | None:
    """The latest checkpoint of an unchanged job; a changed or unmarked job is moved aside."""
    marker = run_dir / "job.json"
    if run_dir.exists():
        same = marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint
        if same:
            return latest_checkpoint(run_dir)
        stale = run_dir.with_name(f"{run_dir.name}.stale-{dt.datetime.now():%Y%m%d-%H%M%S}")
        run_dir.rename(stale)
        log(f"[squad] {run_dir.name}: its data or settings changed since the last run; "
            f"moved the old run to {stale.name} and training from scratch")
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"fingerprint": fingerprint}))
    return None


def _fit(name: str, loop: str, loop_config: dict, scaling: dict, storage: str, run_name: str) -> str:
    """Runs in a Ray task: one TorchTrainer to completion; returns its final checkpoint directory."""
    import importlib

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    module, fn = loop.rsplit(".", 1)
    run_dir = Path(storage) / f"{run_name}-{name}"
    resume = resume_point(run_dir, job_fingerprint(loop, loop_config))
    trainer = TorchTrainer(
        getattr(importlib.import_module(module), fn),
        train_loop_config={**loop_config, "resume_from": str(resume) if resume else None},
        scaling_config=ScalingConfig(num_workers=scaling["num_workers"], use_gpu=scaling["use_gpu"],
                                     resources_per_worker=worker_resources(scaling)),
        run_config=RunConfig(name=f"{run_name}-{name}", storage_path=storage,
                             failure_config=FailureConfig(max_failures=1),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is not None:
        return result.checkpoint.path
    if resume is not None:  # everything was already trained: nothing new to report
        return str(resume)
    raise RuntimeError(f"{name}: training finished without a checkpoint")


def worker_resources(scaling: dict) -> dict:
    res = {"CPU": scaling["cpus_per_worker"]}
    if scaling["use_gpu"]:
        res["GPU"] = scaling["gpus_per_worker"]
    return res


def _demand(scaling: ScalingSpec) -> dict[str, float]:
    """CPUs (and GPUs) a model's whole worker group holds while it trains."""
    return {k: v * scaling.num_workers for k, v in worker_resources(scaling.model_dump()).items()}


def _fits(need: dict[str, float], free: dict[str, float]) -> bool:
    return all(v <= free.get(k, 0.0) + 1e-9 for k, v in need.items())


def launch_order(jobs: list, capacity: dict[str, float] | None) -> list:
    """Jobs in the order to start them: aligners first, then inspectors, each with the most rows first,
    so the longest runs start first when not every model fits at once. With a ``capacity`` (the CPUs and
    GPUs of a local Ray), a model that could never fit is an error now rather than a timeout later."""
    for name, _, _, scaling in jobs:
        need = _demand(scaling)
        if capacity is not None and not _fits(need, capacity):
            kind = name.split("-")[0]
            raise ValueError(f"{name} needs {need} but this Ray cluster has {capacity}: lower "
                             f"{kind}.scaling.num_workers or {kind}.scaling.cpus_per_worker (or gpus_per_worker)")

    def work(job):
        name, _, conf, _ = job
        rows = (len(conf["corrections"]) + len(conf["good"]) + len(conf.get("keep", [])) if name.startswith("aligner")
                else sum(len(v) for v in conf["rows"].values()))
        return (0 if name.startswith("aligner") else 1, -rows)

    return sorted(jobs, key=work)


def run_jobs(jobs: list, capacity: dict[str, float] | None, start, log=print, started: float | None = None) -> dict[str, Path]:
    """Start each job with ``start(name, loop, conf, scaling) -> ObjectRef`` in ``launch_order``, as many
    at once as ``capacity`` holds (all at once without one), and return each job's checkpoint path."""
    import ray

    started = started or time.time()
    queue = launch_order(jobs, capacity)
    free = dict(capacity) if capacity is not None else None
    refs: dict = {}

    def launch() -> list:
        new = []
        for job in list(queue):
            if free is not None:
                need = _demand(job[3])
                if not _fits(need, free):
                    continue
                for k, v in need.items():
                    free[k] -= v
            queue.remove(job)
            ref = start(*job)
            refs[ref] = job
            new.append(ref)
        return new

    pending = launch()
    log(f"[squad] fitting {len(jobs)} models: {', '.join(j[0] for j in jobs)}"
        + (f"; {len(pending)} fit at once here ({capacity}), the others start as those finish" if queue else ", all at once"))
    ckpts: dict[str, Path] = {}
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        name, _, _, scaling = refs[done[0]]
        ckpts[name] = Path(ray.get(done[0]))
        log(f"[squad] {name} done after {time.time() - started:.0f}s ({len(ckpts)}/{len(jobs)})")
        if free is not None:
            for k, v in _demand(scaling).items():
                free[k] += v
            pending += launch()
    return ckpts


def _rows(items, limit):
    return [r.model_dump() for r in items][:limit] if limit else [r.model_dump() for r in items]


def plan_jobs(cfg: TrainConfig, root: Path) -> tuple[dict, list[tuple[str, str, dict, ScalingSpec]], dict]:
    """The policies, the (name, loop, config, scaling) of every model to fit, and the data hashes."""
    from squad.models.registry import resolve

    pdir = _policies_dir(cfg, root)
    policies = load_policies(pdir, cfg.criteria)
    data = {c: load_policy_data(pdir / c) for c in policies}
    common = _common(cfg, root)
    jobs = aligner_jobs(cfg, policies, data, common)
    i_base = str(resolve(cfg.inspector.base))
    irows = {c: _rows(inspector_rows(data, c, "train", policies[c].independent_of), cfg.limit and 3 * cfg.limit)
             for c in policies}
    icfg = {**common, "base_dir": i_base, "rows": irows, "spec": cfg.inspector.model_dump()}
    if cfg.inspector.kind == "shared":
        jobs.append(("inspector-shared", "squad.train.inspector_loop.train_shared_inspector", icfg, cfg.inspector.scaling))
    else:
        for c in policies:
            jobs.append((f"inspector-{c}", "squad.train.inspector_loop.train_finetuned_inspector",
                         {**icfg, "rows": {c: irows[c]}, "criterion": c}, cfg.inspector.scaling))
    hashes = _hashes(data)
    return policies, jobs, hashes


def aligner_jobs(cfg: TrainConfig, policies, data, common: dict) -> list[tuple[str, str, dict, ScalingSpec]]:
    """One job per policy: its train-split corrections, warm-up pairs and pairs to keep."""
    from squad.models.registry import resolve

    jobs = []
    a_base = str(resolve(cfg.aligner.base))
    for c, pol in policies.items():
        corr, good = data[c].split("train")
        good = good[: cfg.aligner.warmup_limit] if cfg.aligner.warmup_limit else good  # only these are used
        jobs.append((f"aligner-{c}", "squad.train.aligner_loop.train_aligner",
                     {**common, "criterion": c, "base_dir": a_base, "instruction": pol.instruction,
                      "corrections": _rows(corr, cfg.limit), "good": _rows(good, cfg.limit),
                      "keep": _rows(data[c].keep.get("train", []), cfg.limit),
                      "spec": cfg.aligner.model_dump()}, cfg.aligner.scaling))
    return jobs


def _common(cfg: TrainConfig, root: Path) -> dict:
    """Settings every model's loop gets."""
    return {"seed": cfg.seed, "wandb": {"project": cfg.wandb.project, "mode": cfg.wandb.mode},
            "run_name": cfg.run_name, "wandb_dir": str((root / cfg.storage).resolve() / "wandb")}


def _hashes(data) -> dict[str, str]:
    """sha256 of every data file of the loaded policies, keyed ``criterion/file``."""
    return {k: v for d in data.values() for k, v in d.hashes.items()}


def _policies_dir(cfg: TrainConfig, root: Path) -> Path:
    return root / cfg.policies  # an absolute cfg.policies stays as it is


def add_probe(cfg: TrainConfig, root: Path, out: Path, log=print) -> None:
    """Fit the hidden-state judge on the policies' current data into the bundle at ``out``, and record
    it (settings, data hashes, time) in the manifest."""
    from squad.models.bundle import read_manifest
    from squad.train.probe_fit import fit_probe

    started = time.time()
    pdir = _policies_dir(cfg, root)
    manifest = read_manifest(out)
    policies = {c: e.policy for c, e in manifest.criteria.items()}
    missing = sorted(c for c in policies if not (pdir / c).is_dir())
    if missing:
        raise ValueError(f"{pdir} has no policy folder for the bundle's criteria {missing}")
    data = {c: load_policy_data(pdir / c) for c in policies}
    spec = fit_probe(cfg.probe, manifest.aligner.base, policies, data, out, cfg.limit, log)
    manifest.inspector.probe = spec
    hashes = _hashes(data)
    manifest.training["probe"] = {**cfg.probe.model_dump(), "data": hashes, "seconds": round(time.time() - started, 1)}
    write_manifest(out, manifest)


def _evaluate(cfg: TrainConfig, root: Path, out: Path, log=print) -> None:
    """Held-out metrics of the bundle at ``out``, stored in its manifest."""
    from squad.eval.metrics import evaluate, format_table, heldout_rows
    from squad.sdk.local import Squad

    squad = Squad.load(out)
    rows = heldout_rows(_policies_dir(cfg, root), squad.criteria)
    if cfg.limit:
        rows = rows[: 4 * cfg.limit]
    report = evaluate(squad, rows)
    write_manifest(out, squad.manifest.model_copy(update={"metrics": {"heldout": report}}))
    log(format_table(report))


def train_squad(cfg: TrainConfig, root: Path | None = None, log=print) -> Path:
    root = Path(root or os.getcwd())
    if cfg.only:  # the rest of the bundle stays; one part is fitted again
        from squad.models.bundle import resolve_bundle

        started = time.time()
        out = resolve_bundle(root / cfg.output)
        if cfg.only == "probe":
            add_probe(cfg, root, out, log)
        else:
            refit_aligners(cfg, root, out, log)
        if cfg.evaluate:
            _evaluate(cfg, root, out, log)
        log(f"[squad] {cfg.only} fitted into {out} in {time.time() - started:.0f}s")
        return out
    policies, jobs, hashes = plan_jobs(cfg, root)
    started = time.time()
    ckpts = fit_jobs(cfg, root, jobs, log)
    out = assemble_bundle(cfg, root, policies, ckpts, hashes, time.time() - started)
    if cfg.probe is not None:
        add_probe(cfg, root, out, log)
    if cfg.evaluate:
        _evaluate(cfg, root, out, log)
    log(f"[squad] bundle written to {out} in {time.time() - started:.0f}s")
    return out


def fit_jobs(cfg: TrainConfig, root: Path, jobs: list, log=print) -> dict[str, Path]:
    """Fit the jobs on Ray Train (a local Ray unless RAY_ADDRESS names one); each one's final checkpoint."""
    import ray

    storage = str((root / cfg.storage).resolve())
    started = time.time()
    own_ray = not ray.is_initialized()
    local = own_ray and (cfg.local_mode or not os.environ.get("RAY_ADDRESS"))  # a Ray started here, on this machine
    if own_ray:
        from squad.cluster import init_ray

        env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if local:
            # Six trainers starting at once on a small busy machine can take minutes to get their workers
            # up; Ray Train's 60 s default then fails the run, so wait longer unless told otherwise.
            env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900")
        # Each model starts about four processes at once (the fit task, Ray Train's controller and
        # placement-group cleaner, its worker); Ray's default lets as many start at once as there are
        # cores, and on a small machine it then warns about a worker-startup storm that is just this.
        system = {"worker_maximum_startup_concurrency": 4 * len(jobs) + 2} if local else None
        init_ray(local=local, runtime_env={"env_vars": env}, _system_config=system)
    try:
        from squad.train.progress import Display, start_board

        fit = ray.remote(num_cpus=0)(_fit)
        board, board_name = start_board()
        for _, _, conf, _ in jobs:
            conf["progress_board"] = board_name
        # On a Ray we started here, models that do not all fit wait in the launcher, longest first, rather
        # than in Ray Train (whose worker-group start timeout fails a model that waits too long).
        capacity = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")} if local else None
        with Display(board):
            return run_jobs(jobs, capacity, lambda name, loop, conf, scaling: fit.remote(
                name, loop, conf, scaling.model_dump(), storage, cfg.run_name), log, started)
    finally:
        if own_ray:
            ray.shutdown()


def refit_aligners(cfg: TrainConfig, root: Path, out: Path, log=print) -> None:
    """Train the aligners of ``cfg.criteria`` (default all the bundle's) on the policies' current data and
    swap them into the bundle at ``out``; its inspectors and judge stay. The manifest takes each refitted
    criterion's current policy (its aligner learnt that instruction) and records the run under
    ``training.aligners``."""
    from squad.models.bundle import read_manifest

    started = time.time()
    manifest = read_manifest(out)
    if (cfg.aligner.base, cfg.aligner.mode) != (manifest.aligner.base, manifest.aligner.mode):
        raise ValueError(f"aligner.base/mode {cfg.aligner.base}/{cfg.aligner.mode} differ from the bundle's "
                         f"{manifest.aligner.base}/{manifest.aligner.mode} ({out}): retrain the whole bundle instead")
    pdir = _policies_dir(cfg, root)
    policies = load_policies(pdir, cfg.criteria or list(manifest.criteria))
    unknown = sorted(set(policies) - set(manifest.criteria))
    if unknown:
        raise ValueError(f"criteria {unknown} are not in the bundle at {out} (it has {sorted(manifest.criteria)})")
    data = {c: load_policy_data(pdir / c) for c in policies}
    ckpts = fit_jobs(cfg, root, aligner_jobs(cfg, policies, data, _common(cfg, root)), log)
    for c, pol in policies.items():
        tmp = out / "aligner" / f"{c}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        copy_aligner(cfg, ckpts[f"aligner-{c}"], tmp)
        shutil.rmtree(out / "aligner" / c)
        tmp.rename(out / "aligner" / c)
        manifest.criteria[c].policy = pol
    hashes = _hashes(data)
    manifest.training["aligners"] = {"criteria": sorted(policies), **cfg.aligner.model_dump(), "data": hashes,
                                     "seconds": round(time.time() - started, 1)}
    write_manifest(out, manifest)


def copy_aligner(cfg: TrainConfig, src: Path, dst: Path) -> None:
    """An aligner's weights and config from its checkpoint into a bundle folder, in ``save_dtype``."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix in (".json", ".safetensors") and f.name not in ("state.json", "optimizer.safetensors"):
            shutil.copy2(f, dst / f.name)
    if cfg.aligner.mode == "lora" and cfg.aligner.save_dtype != "float32":
        _cast_safetensors(dst / "adapter_model.safetensors", cfg.aligner.save_dtype)


def assemble_bundle(cfg: TrainConfig, root: Path, policies, ckpts: dict[str, Path], hashes: dict,
                    seconds: float) -> Path:
    from squad.inspector.classifier import Head, load_heads, save_heads

    out = (root / cfg.output) if not Path(cfg.output).is_absolute() else Path(cfg.output)
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "inspector").mkdir(parents=True)
    entries = {}
    for c, pol in policies.items():
        copy_aligner(cfg, ckpts[f"aligner-{c}"], tmp / "aligner" / c)
        entries[c] = CriterionEntry(policy=pol, aligner=f"aligner/{c}")
    if cfg.inspector.kind == "shared":
        shutil.copy2(ckpts["inspector-shared"] / "heads.safetensors", tmp / "inspector" / "heads.safetensors")
    else:
        heads: dict[str, Head] = {}
        for c in policies:
            src = ckpts[f"inspector-{c}"]
            heads.update(load_heads(src / "heads.safetensors", _dim(cfg), cfg.inspector.hidden))
            # Weights and config only, like the aligners (peft also writes a generic model card).
            shutil.copytree(src / "adapter", tmp / "inspector" / "adapters" / c,
                            ignore=lambda _d, names: [n for n in names if not n.endswith((".json", ".safetensors"))])
            entries[c].inspector_adapter = f"inspector/adapters/{c}"
        save_heads(heads, tmp / "inspector" / "heads.safetensors")
    manifest = Manifest(
        criteria=entries,
        aligner=AlignerSpec(base=cfg.aligner.base, mode=cfg.aligner.mode, max_new_tokens=cfg.aligner.max_new_tokens),
        inspector=InspectorSpec(base=cfg.inspector.base, kind=cfg.inspector.kind, dim=_dim(cfg),
                                hidden=cfg.inspector.hidden, max_length=cfg.inspector.max_length,
                                features=cfg.inspector.features, quantize=cfg.inspector.quantize),
        max_steps=cfg.max_steps, training={**cfg.model_dump(), "seconds": round(seconds, 1)}, data=hashes,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    write_manifest(tmp, manifest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _cast_safetensors(path: Path, dtype: str) -> None:
    """Rewrite a safetensors file with its floating-point tensors in ``dtype``."""
    import torch
    from safetensors.torch import load_file, save_file

    to = getattr(torch, dtype)
    save_file({k: v.to(to) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}, str(path))


def _dim(cfg: TrainConfig) -> int:
    """Head input width."""
    from transformers import AutoConfig

    from squad.inspector.classifier import feature_dim
    from squad.models.registry import resolve

    return feature_dim(AutoConfig.from_pretrained(resolve(cfg.inspector.base)).hidden_size, cfg.inspector.features)
