"""Sweep configs: a W&B sweep YAML (method, metric, parameters) plus the ``squad:`` section of this
project, validated into pydantic models; the search space for Ray Tune and its size."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from squad.errors import ConfigError

METRICS = ("objective", "quality", "win_rate", "pass_rate", "aligner_calls", "latency_ms", "alignment_tax",
           "pass_rate_own")
LATENCY_NOTE = ("latency_ms is estimated: the per-item cost of each inspector and aligner call on a sample's "
                "path, as measured (batched) when that call filled the cache")


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


class Param(_Strict):
    """One W&B sweep parameter: ``value``, ``values``, a ``min``/``max`` distribution, or nested ``parameters``."""

    value: Any = None
    values: list[Any] | None = None
    min: int | float | None = None
    max: int | float | None = None
    distribution: Literal["constant", "categorical", "int_uniform", "uniform", "q_uniform",
                          "log_uniform_values"] | None = None
    q: float | None = Field(None, gt=0, description="Step of q_uniform.")
    parameters: dict[str, "Param"] | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [self.value is not None, self.values is not None, self.min is not None or self.max is not None,
                 self.parameters is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of value, values, min/max or parameters")
        if kinds[2] and (self.min is None or self.max is None or self.min > self.max):
            raise ValueError("min and max must both be set, with min <= max")
        return self

    @property
    def dist(self) -> str:
        if self.distribution:
            return self.distribution
        if self.values is not None:
            return "categorical"
        return "int_uniform" if isinstance(self.min, int) and isinstance(self.max, int) else "uniform"


class Metric(_Strict):
    name: str = Field("objective", description=f"One of {', '.join(METRICS)}.")
    goal: Literal["maximize", "minimize"] = "maximize"

    @model_validator(mode="after")
    def _known(self):
        if self.name not in METRICS:
            raise ValueError(f"metric.name must be one of {list(METRICS)}, got {self.name!r}")
        return self


class Objective(_Strict):
    """objective = win_rate*w + pass_rate*w - aligner_calls*w - latency_s*w (per sample)."""

    win_rate: float = Field(1.0, ge=0, description="Weight of the win rate against the references (misaligned rows).")
    pass_rate: float = Field(1.0, ge=0, description="Weight of the share of rows passing every inspector at the reference thresholds.")
    aligner_calls: float = Field(0.1, ge=0, description="Penalty per aligner call per sample.")
    latency_s: float = Field(0.0, ge=0, description="Penalty per estimated second per sample.")
    reference_thresholds: dict[str, float] | None = Field(
        None, description="'Passing every inspector' is judged at these (default: the bundle's), not at the trial's own.")


class SquadSweep(_Strict):
    """The ``squad:`` section: our settings, stripped before the config goes to W&B."""

    bundle: str = Field("default", description="'default' or a bundle directory.")
    data: str | None = Field(None, description="Eval rows {question, answer, correction?, criterion?}; default: the held-out split.")
    policies: str | None = Field(None, description="Policies folder for the held-out split (default: the repo's).")
    rows: int | None = Field(None, ge=1, description="Use this many rows, evenly spaced over the data.")
    output: str = Field("out/sweep", description="Trials table, pareto.json, plot, W&B runs, Tune storage.")
    objective: Objective = Field(default_factory=Objective)
    max_concurrent_trials: int = Field(1, ge=1, description="Tune trials at once (the evaluator runs one at a time).")
    seed: int = 0


class SweepConfig(BaseModel):
    """A W&B sweep configuration (method, metric, parameters, run_cap, ...) plus a ``squad:`` section."""

    model_config = {"extra": "allow"}  # other W&B keys (program, command, entity, early_terminate) pass through
    name: str = "squad-thresholds"
    project: str = "aligner-squad"
    method: Literal["grid", "random", "bayes"]
    metric: Metric = Field(default_factory=Metric)
    parameters: dict[str, Param]
    run_cap: int | None = Field(None, ge=1)
    squad: SquadSweep = Field(default_factory=SquadSweep)

    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, Param]) -> dict[str, Param]:
        unknown = set(v) - {"thresholds", "max_steps"}
        if unknown:
            raise ValueError(f"unknown {sorted(unknown)}; use thresholds (nested, one per criterion) and max_steps")
        if "thresholds" in v and v["thresholds"].parameters is None:
            raise ValueError("thresholds needs nested `parameters:` with one entry per criterion")
        checks = [(f"thresholds.{c}", p, 0, 1) for c, p in (v["thresholds"].parameters.items() if "thresholds" in v else [])]
        for name, p, lo, hi in checks + ([("max_steps", v["max_steps"], 1, 99)] if "max_steps" in v else []):
            vals = p.values if p.values is not None else [p.value] if p.value is not None else [p.min, p.max]
            if p.parameters is not None or not all(isinstance(x, (int, float)) and lo <= x <= hi for x in vals):
                raise ValueError(f"{name}: every value must be a number in [{lo}, {hi}]")
        return v

    def wandb_dict(self) -> dict:
        d = self.model_dump(exclude={"squad"}, exclude_none=True)
        d["parameters"] = {k: v.model_dump(exclude_none=True) for k, v in self.parameters.items()}
        return d


# ---------------------------------------------------------------------------------------------
# Search space: W&B parameters -> Ray Tune


def _grid_values(name: str, p: Param) -> list:
    if p.values is not None:
        return list(p.values)
    if p.dist == "int_uniform":
        return list(range(int(p.min), int(p.max) + 1))
    if p.dist == "q_uniform" and p.q:
        n = int(round((p.max - p.min) / p.q))
        return [round(p.min + i * p.q, 10) for i in range(n + 1)]
    raise ConfigError(f"parameter {name}: grid search needs values (or int_uniform / q_uniform), not {p.dist}")


def tune_space(params: dict[str, Param], method: str) -> dict:
    """The Tune param_space of a W&B ``parameters`` block (nesting kept)."""
    from ray import tune

    def one(name: str, p: Param):
        if p.parameters is not None:
            return {k: one(f"{name}.{k}", v) for k, v in p.parameters.items()}
        if p.value is not None:
            return p.value
        if method == "grid":
            return tune.grid_search(_grid_values(name, p))
        if p.values is not None:
            return tune.choice(list(p.values))
        lo, hi = p.min, p.max
        return {"uniform": lambda: tune.uniform(lo, hi), "int_uniform": lambda: tune.randint(int(lo), int(hi) + 1),
                "q_uniform": lambda: tune.quniform(lo, hi, p.q or 0.01),
                "log_uniform_values": lambda: tune.loguniform(lo, hi)}[p.dist]()

    return {k: one(k, v) for k, v in params.items()}


def grid_size(params: dict[str, Param]) -> int:
    n = 1
    for name, p in params.items():
        if p.parameters is not None:
            n *= grid_size(p.parameters)
        elif p.value is None:
            n *= len(_grid_values(name, p))
    return n

