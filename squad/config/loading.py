"""Configs: pydantic models are the source of truth; YAML is read through omegaconf.

``load_config(path, Model, ["a.b=1", ...])`` merges ``key=value`` overrides (omegaconf dotlist,
interpolation resolved), validates into ``Model``, and reports errors by file and field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar, get_args

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

# How the aligners decode on this process's device: see squad.aligner.engine.load_engine.
EngineName = Literal["auto", "ct2", "ct2-int8", "hf"]
ENGINES: tuple[str, ...] = get_args(EngineName)

from squad.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def load_config(path: str | Path, model: type[M], overrides: list[str] | None = None) -> M:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = OmegaConf.load(path)
        for o in overrides or []:
            if "=" not in o:
                raise ConfigError(f"override {o!r} is not key=value")
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        raw = OmegaConf.to_container(cfg, resolve=True)
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        errs = "; ".join(f"field '{'.'.join(map(str, x['loc']))}': {x['msg']}" for x in e.errors())
        raise ConfigError(f"{path}: {errs}") from None
