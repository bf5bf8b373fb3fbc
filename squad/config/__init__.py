"""Configuration: YAML read through omegaconf into pydantic models, and the per-criterion policies."""
from squad.config.loading import ENGINES, EngineName, load_config
from squad.config.policy import Policy, load_policies, load_policy

__all__ = ["ENGINES", "EngineName", "Policy", "load_config", "load_policies", "load_policy"]
