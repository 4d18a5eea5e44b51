"""User-facing errors: the entry scripts print these as one clear message, no traceback."""


class StitchError(Exception):
    """Base class of errors caused by the user's input or environment (not by a bug)."""


class DataNotFoundError(StitchError):
    """A data set is not where the configuration says; the message says where to put it."""


class CheckpointError(StitchError):
    """A donor checkpoint is missing, corrupt or does not match the requested model."""


class ConfigError(StitchError):
    """An invalid combination of options."""
