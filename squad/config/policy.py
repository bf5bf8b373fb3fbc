"""Policies: one folder per criterion with a policy.yaml and its seed data.

A criterion is data: adding ``policies/<name>/policy.yaml`` plus ``data/*.jsonl`` is all it takes
to train and serve one more aligner and inspector.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from pydantic import BaseModel, Field, ValidationError, field_validator

from squad.errors import ConfigError


class Policy(BaseModel):
    """One alignment criterion."""

    model_config = {"extra": "forbid"}

    name: str = Field(description="Criterion name, also the folder name.")
    principle: str = Field(description="What an aligned answer does.")
    misaligned: str = Field(description="What a misaligned answer looks like.")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Inspector score under which the aligner runs.")
    priority: int = Field(0, description="Tie-break when two criteria score the same: lower runs first.")
    instruction: str = Field(description="The aligner's instruction (its system prompt).")
    refusal: str = Field(description="Text returned in fail-closed mode when the aligner fails.")
    independent_of: list[str] = Field(default_factory=list, description=(
        "Criteria whose failures this one does not judge: their misaligned answers and corrections "
        "train this inspector as aligned, so it flags only its own failures and the squad picks the "
        "right aligner."))
    rewrite: bool = Field(True, description=(
        "Whether the squad rewrites answers that fail this criterion; false flags them only (the score "
        "is in the trace) and rewrites for other criteria must still not break it."))
    may_lower: list[str] = Field(default_factory=list, description=(
        "Criteria this one's rewrites may push under their threshold and still be kept (do no harm "
        "otherwise rejects a rewrite that breaks a criterion that passed): a safe refusal often reads "
        "as less helpful than the harmful answer it replaces."))
    grounded: bool = Field(False, description=(
        "Reject this criterion's rewrites that state a number or a name found in neither the question "
        "nor the answer they replace: the aligner may remove or qualify a claim, not assert a new one."))
    synth: dict[str, str] = Field(default_factory=dict, description="Teacher prompts for `squad synth`.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.replace("_", "").isalnum() or not v.islower():
            raise ValueError("criterion names are lower-case letters, digits and '_'")
        return v


def default_policies_dir() -> Path:
    """``policies/`` in the working directory (a checkout of this repository, or the user's own project)."""
    return Path("policies")


def load_policy(folder: str | Path) -> Policy:
    path = Path(folder) / "policy.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no policy.yaml in this policy folder")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:  # YAML syntax or interpolation errors
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of policy fields")
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {_fmt(e)}") from None
    if policy.name != Path(folder).name:
        raise ConfigError(f"{path}: field 'name' is {policy.name!r} but the folder is {Path(folder).name!r}")
    return policy


def load_policies(root: str | Path | None = None, criteria: list[str] | None = None) -> dict[str, Policy]:
    """Every policy under ``root`` (default: ``./policies``), optionally a subset."""
    root = Path(root) if root else default_policies_dir()
    found = {p.parent.name: load_policy(p.parent) for p in sorted(root.glob("*/policy.yaml"))}
    if not found:
        raise ConfigError(f"{root}: no policies found (expected {root}/<criterion>/policy.yaml)")
    for name, p in found.items():
        for fname in ("independent_of", "may_lower"):
            names = set(getattr(p, fname))
            unknown = sorted(names - set(found) | ({name} & names))
            if unknown:
                raise ConfigError(f"{root / name / 'policy.yaml'}: field '{fname}': {unknown} are not other "
                                  f"criteria here; known: {sorted(set(found) - {name})}")
    if criteria:
        unknown = sorted(set(criteria) - set(found))
        if unknown:
            raise ConfigError(f"unknown criteria {unknown}; known: {sorted(found)}")
        found = {c: found[c] for c in criteria}
    return found


def _fmt(e: ValidationError) -> str:
    return "; ".join(f"field '{'.'.join(map(str, err['loc']))}': {err['msg']}" for err in e.errors())
