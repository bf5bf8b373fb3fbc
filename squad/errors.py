"""Errors a user can act on: each message names what is wrong and where."""


class SquadError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(SquadError):
    """A config or policy file is invalid."""


class DataError(SquadError):
    """A data row is invalid; the message names file, line and field."""


class ModelNotFoundError(SquadError):
    """A model could not be found locally; the message says how to install it."""
