"""Starting or joining the Ray cluster that ``squad batch`` and ``squad sweep`` run on."""
from __future__ import annotations

import logging
import os


def init_ray(**kwargs) -> None:
    """``ray.init`` on RAY_ADDRESS when set, else a local cluster, without the dashboard.

    Ray (2.60 here) logs a warning on every start that token authentication is on, which is what
    we want; that one note is dropped here, at its logger, and nothing else."""
    import ray

    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = auth.level
    auth.setLevel(logging.ERROR)
    try:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, **kwargs)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    finally:
        auth.setLevel(level)
