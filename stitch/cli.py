"""Helpers shared by the thin entry scripts, and their exit codes.

Exit codes: 0 every run ok; 1 a run failed (recorded as ``status: failed``, or a crash) or the
environment failed (``EnvironmentProblem``, or an ``OSError`` such as a full or read-only disk: one
line naming the path); 2 bad configuration (a user error: bad value, unknown layer, missing data or
donor, a device this machine lacks, a results_dir that cannot be written). A stitching
run claimed by another live process (``status: claimed``, see ``stitch/claims.py``) is neither
ok nor failed: it does not change the code.

Hydra drops the task function's return value, and a multirun may run its jobs in other
processes (joblib workers, submitit jobs), so the status travels three ways:

* ``@job`` wraps the function given to ``hydra.main``. The function returns its number of
  failed runs; ``job`` turns that, or a user error, into a status, keeps the worst status of
  the process and returns the status (so Hydra's JobReturn holds it).
* The ``ExitStatus`` Hydra callback (``hydra.callbacks.exit_status`` in the configs) writes
  each multirun job's status to ``<job output dir>/exit_status``; in the launching process it
  folds those files into the worst status when the multirun ends. This is how statuses of
  joblib and submitit jobs come back; under the basic launcher it agrees with the in-process
  worst status.
* ``main(entry)`` runs the ``hydra.main`` entry point, then exits with the worst status.

A user error stops a single run, and a sequential (basic launcher) multirun, at once with
exit 2: it is found before the job does any work, and the sweep's remaining jobs would
usually fail the same way. Under a parallel launcher the other jobs are already running: the
failing job ends, the others finish, and the process exits 2 at the end (submitit: the job's
message is in its ``.submitit/<id>/*.err``). A crash (any other exception) is Hydra's: it
prints it and exits 1, in a multirun after the batch of jobs. Errors Hydra itself reports
(an unknown key, a bad override, a missing config option) exit 2. A config without the
``exit_status`` callback still gets honest codes from single runs and the basic launcher.
"""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import EnvironmentProblem, StitchError

OK, FAILED, BAD_CONFIG = 0, 1, 2
STATUS_FILE = "exit_status"
_SEQUENTIAL_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
_worst = OK


def _note(status: int) -> None:
    global _worst
    _worst = max(_worst, status)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _parallel_multirun() -> bool:
    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and hc.launcher.get("_target_") != _SEQUENTIAL_LAUNCHER


def job(fn: Callable[[DictConfig], int]) -> Callable[[DictConfig], int]:
    """Wrap the function given to ``hydra.main``: it returns its number of failed runs.

    User errors (``StitchError``, ``ValueError``, unresolvable config) print one ``error:``
    message, no traceback; ``--verbose``/debug logging keeps a plain ValueError's traceback.
    """

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> int:
        try:
            status = FAILED if fn(cfg) else OK
        except (StitchError, ValueError, OmegaConfBaseException, OSError) as e:
            if _debugging() and not isinstance(e, StitchError):  # keep the traceback of a plain ValueError
                raise
            env = isinstance(e, (EnvironmentProblem, OSError))
            print(f"error: {describe_os_error(e) if isinstance(e, OSError) else e}", file=sys.stderr)
            status = FAILED if env else BAD_CONFIG
            if not _parallel_multirun():
                sys.exit(status)
        _note(status)
        return status

    return wrapper


def _debugging() -> bool:
    """``--verbose``/debug logging or ``HYDRA_FULL_ERROR=1``: show tracebacks of environment errors too."""
    import os

    return logging.getLogger().level <= logging.DEBUG or os.environ.get("HYDRA_FULL_ERROR") == "1"


def describe_os_error(e: OSError) -> str:
    """One line for a file-system failure: what went wrong, on which path, and what to do."""
    import errno

    what = e.strerror or type(e).__name__
    path = e.filename if e.filename is not None else "?"
    extra = f" -> {e.filename2}" if e.filename2 else ""
    hint = {errno.ENOSPC: "free some space (finished results are intact) and run again: finished runs are skipped",
            errno.EDQUOT: "free some space (finished results are intact) and run again: finished runs are skipped",
            errno.EROFS: "point results_dir (or store) at a writable directory",
            errno.EACCES: "check its permissions, or point results_dir (or store) elsewhere",
            errno.EPERM: "check its permissions, or point results_dir (or store) elsewhere"}.get(e.errno, "")
    return f"{what}: {path}{extra}" + (f" ({hint})" if hint else "")


class ExitStatus(Callback):
    """Brings multirun job statuses back to the launching process through the sweep directory."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        for f in Path(config.hydra.sweep.dir).glob(f"**/{STATUS_FILE}"):  # a rerun into the same sweep dir
            f.unlink()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        status = job_return.return_value if job_return.status == JobStatus.COMPLETED else FAILED  # else: it raised
        (Path(config.hydra.runtime.output_dir) / STATUS_FILE).write_text(f"{status}\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for f in Path(config.hydra.sweep.dir).glob(f"**/{STATUS_FILE}"):
            _note(int(f.read_text()))


def main(entry: Callable[[], Any]) -> None:
    """Run a ``hydra.main`` entry point and exit with the worst status of its jobs."""
    try:
        entry()
    except SystemExit as e:
        # Hydra reports its own errors (unknown key, bad override, missing config file) and exits 1
        # while handling the exception, which therefore is the SystemExit's __context__
        if e.code == 1 and isinstance(e.__context__, HydraException):
            if "Ambiguous value" in str(e.__context__):  # method=tlm,dm without -m
                print("hint: a comma-separated value is a sweep, which needs -m (python stitch.py -m method=tlm,dm); "
                      "for one run over a list use brackets: method=[tlm,dm]", file=sys.stderr)
            sys.exit(BAD_CONFIG)
        raise
    sys.exit(_worst)
