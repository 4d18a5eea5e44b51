"""User-facing errors: the entry scripts print these as one clear message, no traceback.

Exit codes (``stitch/cli.py``): a :class:`StitchError` exits 2 (the configuration: a bad value, missing
data or donor, a device this machine lacks) unless it is an :class:`EnvironmentProblem`, which exits 1
(the machine or the files on it: no network, a full or read-only disk, a damaged file)."""


class StitchError(Exception):
    """Base class of errors caused by the user's input or environment (not by a bug)."""


class DataNotFoundError(StitchError):
    """A data set is not where the configuration says; the message says where to put it."""


class CheckpointError(StitchError):
    """A donor checkpoint is missing, corrupt or does not match the requested model."""


class ConfigError(StitchError):
    """An invalid combination of options."""


class EnvironmentProblem(StitchError):
    """The machine or its files failed (no network, disk full, read-only, damaged file): exit 1.

    The message names the file, path or URL and what to do."""

    exit_code = 1


class DownloadError(EnvironmentProblem):
    """A download the user asked for (``data.download=true``) could not be made."""


class DamagedFileError(EnvironmentProblem):
    """A file this program wrote earlier (a donor's meta.json, a saved stitching layer) cannot be read."""
