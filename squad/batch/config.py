"""``squad batch`` settings (configs/batch.yaml): resources per pipeline stage, as pydantic models."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from squad.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Config (configs/batch.yaml)


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


class StageResources(_Strict):
    concurrency: int = Field(1, ge=1, description="Most actors in each pool of this stage (pools start with one).")
    batch_size: int = Field(32, ge=1, description="Rows per map_batches call (one model call).")
    num_cpus: float = Field(0.25, ge=0, description="CPUs reserved per actor; fractional so every stage's pool fits a small machine.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (GPU clusters); the model then runs on CUDA.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per actor.")
    memory_gb: float = Field(0.75, ge=0, description="Memory (GiB) Ray reserves per actor, so a cluster places actors "
                                                     "where they fit; 0: no reservation.")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * 2**30)

    def ray_args(self) -> dict:
        """Ray resources each actor of this stage requests (``map_batches`` keyword arguments)."""
        args: dict = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        if self.memory_gb:
            args["memory"] = self.memory_bytes
        return args


class AlignerStage(StageResources):
    engine: Literal["auto", "ct2", "ct2-int8", "hf", "vllm"] = Field(
        "auto", description="auto: vLLM through ray.data.llm when num_gpus > 0, vllm is installed and the "
                            "aligners are LoRA adapters; CTranslate2 on CPU; HF transformers otherwise. "
                            "ct2 (float32), ct2-int8, hf, vllm: that engine (see squad.aligner.engine.load_engine).")


class BatchConfig(_Strict):
    layout: Literal["auto", "staged", "fused"] = Field(
        "auto", description="staged: one actor pool per stage (inspectors, then one per round: aligners and "
                            "re-scoring), each scaling on its own; fused: one pool whose actors run every round "
                            "(aligner resources), one model load per actor; auto: staged when the cluster has the "
                            "CPUs (GPUs) to run every stage at once, fused otherwise (a few cores).")
    chunk_rows: int = Field(2048, ge=1, description="Valid rows per streamed pipeline run; bounds driver memory.")
    inspector: StageResources = Field(default_factory=lambda: StageResources(batch_size=256))
    aligner: AlignerStage = Field(default_factory=lambda: AlignerStage(batch_size=256, num_cpus=0.3, torch_threads=2,
                                                                         memory_gb=3.5))
    engine_batch: int = Field(32, ge=1, description="Rows decoding together in an aligner actor (continuous batching slots).")
    progress: bool = Field(True, description="Show a progress bar over rows (stderr).")
    actor_restarts: int = Field(
        0, ge=-1, description="Times Ray may restart a crashed stage actor (-1: no limit). 0: a crash fails the run "
                              "at once. Above 0 Ray prints an error-level note at every actor start, because Ray "
                              "Data passes constructor arguments through the object store (ray#57733).")


def load_batch_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BatchConfig:
    """``path`` (default: the built-in defaults, which configs/batch.yaml spells out) plus key=value overrides."""
    from squad.config.loading import load_config

    if path is None:
        from omegaconf import OmegaConf

        try:
            if any("=" not in o for o in overrides or []):
                raise ValueError(f"overrides must be key=value, got {overrides}")
            raw = OmegaConf.merge(OmegaConf.create(BatchConfig().model_dump()), OmegaConf.from_dotlist(list(overrides or [])))
            return BatchConfig.model_validate(OmegaConf.to_container(raw, resolve=True))
        except Exception as e:
            raise ConfigError(f"batch config: {e}") from None
    return load_config(path, BatchConfig, overrides)
