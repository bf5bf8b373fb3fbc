"""Threshold sweeps (``squad sweep``): trials replayed from one cache, logged to W&B, a Pareto front out."""
from squad.sweep.config import SweepConfig
from squad.sweep.run import SweepResult, run_sweep
from squad.sweep.write_back import write_back

__all__ = ["SweepConfig", "SweepResult", "run_sweep", "write_back"]
