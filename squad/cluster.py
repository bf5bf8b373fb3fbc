"""Starting or joining the Ray cluster that ``squad batch``, ``squad sweep`` and ``squad train`` run on."""
from __future__ import annotations

import logging
import os


def init_ray(local: bool = False, **kwargs) -> None:
    """``ray.init`` on RAY_ADDRESS when set, else Ray's default (a new local cluster), without the dashboard;
    ``local``: always a new local cluster.
    Workers' output stays in Ray's session logs (``log_to_driver=False``).

    Ray (2.60 here) logs a warning on every start that token authentication is on, which is what
    we want; that one note is dropped here, at its logger, and nothing else."""
    import ray

    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = auth.level
    auth.setLevel(logging.ERROR)
    try:
        if os.environ.get("RAY_ADDRESS") and not local:
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, **kwargs)
        else:
            ray.init(address="local" if local else None, include_dashboard=False, log_to_driver=False, **kwargs)
    finally:
        auth.setLevel(level)
