"""Squad bundles: a directory with manifest.json and safetensors artifacts.

Layout::

    manifest.json                      criteria, bases, artifacts, thresholds, training config,
                                       data hashes, eval metrics
    inspector/heads.safetensors        one MLP head per criterion
    inspector/adapters/<criterion>/    (finetuned inspectors only) LoRA adapter per criterion
    inspector/probe.safetensors        (optional) the hidden-state judge's head per criterion
    aligner/<criterion>/               LoRA adapter (adapter_config.json, adapter_model.safetensors)
                                       or a full model directory (aligner.mode = "full")
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from squad.errors import ConfigError
from squad.config.policy import Policy

FORMAT = 1
MANIFEST = "manifest.json"


class AlignerSpec(BaseModel):
    base: str = Field(description="Registry name or model directory of the aligner base.")
    mode: Literal["lora", "full"] = Field("lora", description="LoRA adapter per criterion, or full models.")
    max_new_tokens: int = Field(160, ge=1, description="Generation budget per correction.")


class ProbeSpec(BaseModel):
    """The hidden-state judge (squad.inspector.probe) blended into every inspector score."""
    base: str = Field(description="Registry name or model directory whose hidden states it reads (the aligner base).")
    layer: int = Field(ge=1, description="Hidden states after this many layers are read; the layers above are never run.")
    heads: str = Field("inspector/probe.safetensors", description="Its heads file, relative to the bundle.")
    weight: float = Field(0.5, ge=0.0, le=1.0, description="Its share of the blended logit; the inspector has the rest.")
    inspector_cap: float | None = Field(None, gt=0, description=(
        "Clip the inspector's logit to +-this before blending (none: no clip). Off its training data a "
        "fine-tuned inspector is often confidently wrong, and an unclipped logit then outvotes the judge."))
    max_question_tokens: int = Field(64, ge=1)
    max_answer_tokens: int = Field(128, ge=1)


class InspectorSpec(BaseModel):
    base: str = Field(description="Registry name or model directory of the encoder.")
    kind: Literal["shared", "finetuned"] = "shared"
    heads: str = Field("inspector/heads.safetensors", description="Heads file, relative to the bundle.")
    dim: int = Field(384, description="Head input width (encoder width x 4 for 'pair' features).")
    hidden: int = 256
    max_length: int = 256
    features: Literal["joint", "pair", "span"] = Field("joint", description="What the heads read; see squad.inspector.")
    quantize: Literal["none", "int8"] = Field(
        "none", description="Run the encoders' int8 copies on ONNX Runtime (faster; the eval metrics say which ran).")
    probe: ProbeSpec | None = Field(None, description="The hidden-state judge, if the bundle has one.")


class CriterionEntry(BaseModel):
    policy: Policy
    aligner: str = Field(description="Aligner artifact directory, relative to the bundle.")
    inspector_adapter: str | None = None


class Manifest(BaseModel):
    format: int = FORMAT
    criteria: dict[str, CriterionEntry]
    aligner: AlignerSpec
    inspector: InspectorSpec
    max_steps: int = Field(3, ge=1)
    training: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, str] = Field(default_factory=dict, description="sha256 of each training data file.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: str | None = None

    @property
    def thresholds(self) -> dict[str, float]:
        return {c: e.policy.threshold for c, e in self.criteria.items()}


def default_bundle_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "bundles" / "default"


def resolve_bundle(name_or_dir: str | Path) -> Path:
    if str(name_or_dir) == "default":
        path = default_bundle_dir()
        if not (path / MANIFEST).is_file():
            raise ConfigError(f"the default bundle is missing from {path}; rebuild it with `make default-bundle`")
        return path
    path = Path(name_or_dir).expanduser()
    if not (path / MANIFEST).is_file():
        raise ConfigError(f"{path}: not a squad bundle (no {MANIFEST}); pass 'default' or a bundle directory")
    return path


def read_manifest(bundle_dir: str | Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as e:
        raise ConfigError(f"{path}: invalid manifest: {e}") from None


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    path = Path(bundle_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path
