"""The project's exceptions: one base class, so callers can catch them all.

Every message names the bad value, what was expected, and what to do.
"""


class BFlowError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(BFlowError):
    """A configuration value is missing or invalid."""


class LogFormatError(BFlowError):
    """A file is not a Zeek log, or its header cannot be used."""


class ModelError(BFlowError):
    """A model file cannot be loaded, or does not fit the data it must score."""
