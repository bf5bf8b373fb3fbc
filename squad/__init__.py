"""Aligner Squad: inspectors score answers per criterion, aligners correct only what fails."""
from squad.core.correction import Correction, Step
from squad.errors import ConfigError, DataError, ModelNotFoundError, SquadError

__all__ = ["Squad", "Correction", "Step", "SquadError", "ConfigError", "DataError", "ModelNotFoundError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The SDK pulls in torch; load it on first use so `squad --help` and data commands start fast.
    if name == "Squad":
        from squad.sdk.local import Squad

        return Squad
    raise AttributeError(f"module 'squad' has no attribute {name!r}")
