"""Checkpoint helpers shared by the training loops: safetensors only, no pickles.

A checkpoint directory holds the model artifact (adapter or full model), ``optimizer.safetensors``
(AdamW moments, flattened) and ``state.json`` (epoch counters).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    flat = {}
    for idx, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            flat[f"{idx}.{k}"] = t.detach().cpu().contiguous()
    save_file(flat, str(path))


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    if not path.is_file():
        return
    flat = load_file(str(path))
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, t in flat.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = t
    sd["state"] = state
    opt.load_state_dict(sd)


def starting_checkpoint(config: dict):
    """Ray Train's own checkpoint after a worker restart, else the one the launcher found on disk."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("resume_from"):
        ckpt = ray.train.Checkpoint.from_directory(config["resume_from"])
    return ckpt


def write_state(folder: Path, **state) -> None:
    (folder / "state.json").write_text(json.dumps(state))


def read_state(folder: Path) -> dict:
    p = folder / "state.json"
    return json.loads(p.read_text()) if p.is_file() else {}
