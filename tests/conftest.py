"""Shared fixtures: one local Ray cluster per session, and a tiny trained bundle built on it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SERVE_TOKEN = "test-token-123"


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
                                       "SQUAD_TEST_TOKEN": SERVE_TOKEN, "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_bundle(ray_cluster, tmp_path_factory) -> Path:
    """A bundle trained end to end on tiny random models through the real Ray Train launcher, from the
    repository's policies with every criterion rewriting (the shipped ones flag some only), so the
    tests reach multi-step corrections."""
    import shutil

    from squad.config.loading import load_config
    from squad.train.config import TrainConfig
    from squad.train.launcher import train_squad

    work = tmp_path_factory.mktemp("tiny_train")
    policies = shutil.copytree(ROOT / "policies", work / "policies")
    for f in policies.glob("*/policy.yaml"):
        f.write_text(f.read_text(encoding="utf-8").replace("\nrewrite: false\n", "\nrewrite: true\n"), encoding="utf-8")
    cfg = load_config(ROOT / "configs" / "train_tiny.yaml", TrainConfig,
                      [f"policies={policies}", f"output={work / 'bundle'}", f"storage={work / 'runs'}"])
    return train_squad(cfg, root=ROOT, log=lambda *_: None)
