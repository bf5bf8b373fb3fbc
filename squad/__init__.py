"""Aligner Squad: inspectors score answers per criterion, aligners correct only what fails."""
from squad.correction import Correction, Step
from squad.errors import ConfigError, DataError, ModelNotFoundError, SquadError
from squad.sdk import Squad

__all__ = ["Squad", "Correction", "Step", "SquadError", "ConfigError", "DataError", "ModelNotFoundError"]
__version__ = "0.1.0"
