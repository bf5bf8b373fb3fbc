"""Where trials run: a W&B agent (logged in and reachable), or Ray Tune locally with one offline
W&B run per trial through Ray's ``WandbLoggerCallback``. In local mode the ``Evaluator`` is a Ray
actor (0 CPUs, one call at a time) that Tune's function trials call in turn, so no trial
recomputes another's model calls."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from pathlib import Path
from typing import Callable

from squad.errors import SquadError
from squad.sweep.config import METRICS, SweepConfig, grid_size, tune_space
from squad.sweep.evaluator import Evaluator
from squad.tracking import QUIET_WANDB



def wandb_reachable(timeout: float = 3.0) -> bool:
    import httpx

    try:
        httpx.get(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"), timeout=timeout)
        return True
    except httpx.HTTPError:
        return False


def choose_backend(force_local: bool = False) -> tuple[str, str]:
    from squad.tracking import logged_in

    mode = os.environ.get("WANDB_MODE")
    if force_local:
        return "local", "--local given"
    if mode in ("offline", "disabled", "dryrun"):
        return "local", f"WANDB_MODE={mode}"
    if not logged_in():
        return "local", "not logged in to W&B (no WANDB_API_KEY or netrc entry)"
    if not wandb_reachable():
        return "local", "W&B is not reachable"
    return "wandb", "logged in and W&B reachable"


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _tune_trial(config: dict, evaluator) -> None:
    import ray
    from ray import tune

    tune.report(ray.get(evaluator.trial.remote(config)))


def _bayes(seed: int):
    """Tune's Optuna or HyperOpt searcher when either library is installed, else None."""
    import importlib.util

    if importlib.util.find_spec("optuna"):
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=seed)
    if importlib.util.find_spec("hyperopt"):
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=seed)
    return None


def run_local(cfg: SweepConfig, evaluator, out: Path, trials: int | None, log: Callable) -> list[dict]:
    # Tune warns when a callback takes over 0.5 s (read once, at import). Starting a trial's offline W&B
    # run took 14-21 s on 2 busy cores: noise beside the sweep's own per-trial log, so warn past 60 s.
    with _environ({"TUNE_WARN_THRESHOLD_S": os.environ.get("TUNE_WARN_THRESHOLD_S", "60")}):
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback
        from ray.tune.search.basic_variant import BasicVariantGenerator

    method, alg = cfg.method, None
    if method == "bayes":
        alg = _bayes(cfg.squad.seed)
        log(f"[sweep] bayes: {type(alg).__name__} through Ray Tune" if alg else
            "[sweep] bayes: neither optuna nor hyperopt is installed, so locally this is random search "
            "(W&B's Bayesian search runs on its server; `pip install optuna` for TPE here)")
    limit = cfg.squad.max_concurrent_trials
    if alg is None:  # grid and random: Tune's own generator, which takes the concurrency limit itself
        alg, limit = BasicVariantGenerator(max_concurrent=limit, random_state=cfg.squad.seed), None
    n = 1 if method == "grid" else trials or cfg.run_cap or 20
    log(f"[sweep] {grid_size(cfg.parameters) if method == 'grid' else n} trials, {method} search")

    class _Progress(tune.Callback):
        def __init__(self, metric: str):
            self.metric = metric

        def __reduce__(self):  # Tune pickles its callbacks: a plain one stands in, the log stays here
            return (tune.Callback, ())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            log(f"[sweep] {trial.trial_id}: {json.dumps(_flat(trial.config))} -> {self.metric} "
                f"{result[self.metric]:.4f}, calls {result['aligner_calls']:.2f}, "
                f"aligner cache misses {result['aligner_misses']}")

    callbacks = [_Progress(cfg.metric.name), JsonLoggerCallback()]
    log_wandb = os.environ.get("WANDB_MODE") != "disabled"
    if log_wandb:  # one offline W&B run per trial, named by its trial id
        callbacks.append(_wandb_callback(project=cfg.project, group=cfg.name, mode="offline",
                                         dir=str((out / "wandb").resolve()), settings=QUIET_WANDB))
    fn = tune.with_parameters(_tune_trial, evaluator=evaluator)
    tuner = tune.Tuner(
        tune.with_resources(fn, {"cpu": 0.01}),  # trials only wait on the evaluator actor
        param_space=tune_space(cfg.parameters, method),
        tune_config=tune.TuneConfig(metric=cfg.metric.name, mode=cfg.metric.goal[:3], num_samples=n,
                                    search_alg=alg, max_concurrent_trials=limit,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=cfg.name, storage_path=str((out / "tune").resolve()), verbose=0,
                                  callbacks=callbacks))
    # JSON only (the CSV/TensorBoard loggers cost ~0.3 s a trial); local mode never goes online.
    env = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "WANDB_MODE": os.environ.get("WANDB_MODE") or "offline"}
    with _environ(env), contextlib.redirect_stdout(sys.stderr):  # Tune's banner would break `--json` on stdout
        grid = tuner.fit()
    if grid.errors:
        raise SquadError(f"{len(grid.errors)} sweep trial(s) failed; first: {grid.errors[0]}")
    return [{"trial": r.metrics["trial_id"], "config": r.config,
             **{k: r.metrics[k] for k in (*METRICS, "aligner_misses", "inspector_misses")},
             "wandb_run": r.metrics["trial_id"] if log_wandb else None}
            for r in grid]


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_agent(cfg: SweepConfig, ev: Evaluator, trials: int | None, log: Callable) -> list[dict]:
    import wandb

    sweep_id = wandb.sweep(cfg.wandb_dict(), project=cfg.project)
    log(f"[sweep] W&B sweep {sweep_id}: running its agent here")
    rows: list[dict] = []

    def one() -> None:
        with wandb.init(project=cfg.project) as run:
            config = copy.deepcopy(dict(run.config))
            m = ev.trial(config)
            run.log(m)
            rows.append({"trial": run.name, "config": config, **m, "wandb_run": run.id})

    wandb.agent(sweep_id, function=one, project=cfg.project, count=trials or cfg.run_cap)
    return rows


def _wandb_callback(**kwargs):
    """Ray Tune's ``WandbLoggerCallback``, with per-trial logging actors that are not restarted.

    Ray (2.60) makes them with ``max_restarts=-1``, and Ray core then prints an error-level line
    for each one ("constructor arguments in the object store and max_restarts > 0", ray#57733). A
    trial's logger that dies ends that trial's offline W&B log either way; the trial itself goes on.
    ``_logger_actor_cls`` is the class Ray's callback makes its actors from."""
    import ray
    from ray.air.integrations.wandb import WandbLoggerCallback
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    class Callback(WandbLoggerCallback):
        def setup(self, *args, **kw):
            super().setup(*args, **kw)
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)  # W&B's files
            env = {k: os.environ[k] for k in ("WANDB_API_KEY",) if k in os.environ}
            self._remote_logger_class = ray.remote(num_cpus=0, max_restarts=0, scheduling_strategy=here,
                                                   runtime_env={"env_vars": env})(self._logger_actor_cls)

    return Callback(**kwargs)

