"""Weights & Biases: online when the user is logged in, offline otherwise (never a prompt)."""
from __future__ import annotations

import netrc
import os

QUIET_WANDB = {"silent": True, "console": "off"}  # wandb.init settings: no banner, no console capture


def logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str = "auto") -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if logged_in() else "offline"
    return mode


def init_run(project: str, name: str, mode: str, config: dict, directory: str | None = None, group: str | None = None):
    """Start a W&B run, or return None when disabled."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    if directory:
        os.makedirs(directory, exist_ok=True)
    return wandb.init(project=project, name=name, mode=mode, config=config, dir=directory, group=group,
                      reinit="finish_previous", settings=QUIET_WANDB)
