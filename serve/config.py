"""Typed arguments of the Serve app builder (the ``args:`` of squad.yaml)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from squad.config.loading import EngineName


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


class DeploymentOptions(_Strict):
    """Options for one deployment; squad.yaml's ``deployments:`` section can override them too."""

    num_replicas: int | Literal["auto"] = 1
    num_cpus: float = Field(0.25, ge=0, description="CPUs reserved per replica (fractional for light deployments).")
    num_gpus: float = Field(0, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
    autoscaling_config: dict[str, Any] | None = None

    def serve_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
                                "max_ongoing_requests": self.max_ongoing_requests}
        if self.autoscaling_config:
            opts["autoscaling_config"] = self.autoscaling_config
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


class UpstreamConfig(_Strict):
    """The model whose answers /v1/chat/completions corrects."""

    base_url: str | None = Field(None, description="Any OpenAI-compatible base URL; None: an in-app deployment of the embedded SmolLM2.")
    api_key_env: str = Field("UPSTREAM_API_KEY", description="Environment variable holding the upstream key.")
    model: str = Field("smollm2-135m-instruct", description="Model name sent upstream (or the local registry name/dir).")
    max_tokens: int = Field(160, ge=1, le=4096)
    timeout_s: float = Field(60.0, gt=0)


class AuthConfig(_Strict):
    token_env: str | None = Field(None, description="Env var with the bearer token; unset: no auth. /healthz stays open.")


class LimitsConfig(_Strict):
    max_text_chars: int = Field(8000, ge=1, description="Longest question, answer or message accepted (413 beyond).")
    max_body_bytes: int = Field(1_000_000, ge=1, description="Largest request body accepted (413 beyond).")
    max_pairs: int = Field(64, ge=1, description="Most pairs in one /v1/correct batch.")
    max_messages: int = Field(64, ge=1)


class RuntimeConfig(_Strict):
    """The ``user_config`` of the router: changing it in squad.yaml reconfigures live replicas."""

    thresholds: dict[str, float] = Field(default_factory=dict)
    max_steps: int | None = Field(None, ge=1)
    criteria: list[str] | None = None
    fail_closed: bool = False
    aligner_timeout_s: float = Field(60.0, gt=0)

    @field_validator("thresholds")
    @classmethod
    def _range(cls, v: dict[str, float]) -> dict[str, float]:
        for k, x in v.items():
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"threshold for {k!r} must be in [0, 1], got {x}")
        return v


class SquadAppArgs(_Strict):
    bundle: str = Field("default", description="'default' or a bundle directory.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    ingress: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.1))
    inspector: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.5))
    aligner: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.5, max_ongoing_requests=16))
    upstream_deployment: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.25, max_ongoing_requests=16))
    aligner_layout: Literal["multiplexed", "per_criterion"] = Field(
        "multiplexed", description="One Aligner deployment holding every adapter, or one deployment per criterion.")
    inspector_layout: Literal["auto", "shared", "per_criterion"] = Field(
        "auto", description="One Inspector deployment for every criterion, or one per criterion; auto: per "
                            "criterion when the bundle's inspectors are fine-tuned and it has no hidden-state judge "
                            "(nothing shared between criteria), else shared. "
                            "Per criterion, each deployment reserves an equal part of inspector.num_cpus.")
    inspector_batch_size: int = Field(32, ge=1)
    aligner_engine: EngineName = Field(
        "auto", description="How the aligners and the local upstream decode: ct2 (CTranslate2, CPU), ct2-int8, hf (PyTorch); "
                            "auto: CTranslate2 on CPU where it loads, else PyTorch.")
    aligner_batch_size: int = Field(16, ge=1, description="Decode slots: pairs from concurrent requests decoded together (PyTorch: one continuous batch, all criteria, pairs join and leave it at any step; CTranslate2: the pairs queued while a batch decodes form the next).")
    aligner_batch_wait_s: float = Field(0.02, ge=0, description="How long an idle aligner waits for more pairs before it starts decoding.")
    inspector_batch_wait_s: float = Field(0.005, ge=0)
