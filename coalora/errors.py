"""Typed errors. The CLI turns any CoaloraError into a one-line message and exit code 2."""


class CoaloraError(Exception):
    """Base class for errors caused by user input (never a bug in coalora)."""


class ConfigError(CoaloraError, ValueError):
    """A configuration (or a field of one) is invalid: the message names field, value, allowed."""


class ModelMismatchError(CoaloraError):
    """An artefact (configuration, checkpoint) was made for another base model."""


class ModelLoadError(CoaloraError):
    """A base model could not be found or loaded offline."""


class DataError(CoaloraError):
    """A task or data split is unknown or cannot be read."""


class CheckpointError(CoaloraError):
    """A checkpoint folder is missing, incomplete, of an unknown format, or not safetensors."""


class OutputExistsError(CoaloraError):
    """An output folder already exists and overwriting was not asked for (--force)."""
