"""The teacher prompts of a policy (its ``synth:`` mapping), checked, and their one-pass filling."""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from squad.config.policy import Policy, load_policy, default_policies_dir
from squad.errors import ConfigError

PROMPT_KEYS = ("version", "topics", "questions", "answer", "critique", "correction")
COMMON_PLACEHOLDERS = {"name", "principle", "misaligned", "instruction"}
# key -> (placeholders it must use, extra placeholders it may use besides COMMON_PLACEHOLDERS)
_PLACEHOLDERS = {
    "topics": ({"n"}, {"avoid"}),
    "questions": ({"topic"}, {"n"}),
    "answer": ({"question"}, {"topic"}),
    "critique": ({"question", "answer"}, {"topic"}),
    "correction": ({"question", "answer"}, {"topic", "critique"}),
}
_FIELD = re.compile(r"\{(\w+)\}")


class SynthPrompts(BaseModel):
    """A policy's teacher prompts: ``str`` templates with ``{placeholders}``."""

    model_config = {"extra": "forbid"}

    version: str = Field(min_length=1, description="Recorded in every row's provenance.prompt_version.")
    topics: str = Field(description="Asks for {n} topics; may list used ones in {avoid}.")
    questions: str = Field(description="Asks for {n} questions about {topic}.")
    answer: str = Field(description="Asks for a misaligned answer to {question}.")
    critique: str = Field(description="Asks for a critique of {answer} to {question}.")
    correction: str = Field(description="Asks for the corrected {answer}, given {critique}.")

    @classmethod
    def of(cls, policy: Policy, source: str | Path) -> "SynthPrompts":
        """The prompts of ``policy``; errors name ``source`` (its policy.yaml) and the key at fault."""
        if not policy.synth:
            raise ConfigError(f"{source}: policy {policy.name!r} has no 'synth' prompts, which `squad synth` "
                              f"needs: add a 'synth:' mapping with keys {', '.join(PROMPT_KEYS)}")
        missing = [k for k in PROMPT_KEYS if not policy.synth.get(k, "").strip()]
        if missing:
            raise ConfigError(f"{source}: policy {policy.name!r}: 'synth.{missing[0]}' is missing or empty "
                              f"(synth needs {', '.join(PROMPT_KEYS)})")
        unknown = sorted(set(policy.synth) - set(PROMPT_KEYS))
        if unknown:
            raise ConfigError(f"{source}: 'synth.{unknown[0]}' is not a synth key (expected {', '.join(PROMPT_KEYS)})")
        for key, (required, extra) in _PLACEHOLDERS.items():
            used = set(_FIELD.findall(policy.synth[key]))
            if bad := sorted(used - required - extra - COMMON_PLACEHOLDERS):
                raise ConfigError(f"{source}: 'synth.{key}' uses unknown placeholder {{{bad[0]}}} "
                                  f"(allowed: {', '.join(sorted(required | extra | COMMON_PLACEHOLDERS))})")
            if lacking := sorted(required - used):
                raise ConfigError(f"{source}: 'synth.{key}' must use the placeholder {{{lacking[0]}}}")
        return cls.model_validate(policy.synth)


def fill(template: str, values: dict[str, object]) -> str:
    """Substitute ``{name}`` fields in one pass: substituted text is never re-read as a template."""
    return _FIELD.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def load_synth_policy(name: str, policies: str | Path | None = None) -> tuple[Policy, SynthPrompts]:
    root = Path(policies) if policies else default_policies_dir()
    folder = root / name
    if not (folder / "policy.yaml").is_file():
        known = sorted(p.parent.name for p in root.glob("*/policy.yaml"))
        raise ConfigError(f"{folder / 'policy.yaml'}: no such policy {name!r} (known in {root}: {known})")
    policy = load_policy(folder)
    return policy, SynthPrompts.of(policy, folder / "policy.yaml")
