"""What every record says about how it was made, and how a failed unit of work is recorded.

Stitching runs, LMC pairs, probing records and OOD detectors all carry the same provenance fields
(``provenance``), and a run, a pair or a step that raises is recorded as failed with its error and
traceback while the study goes on (``failure_recorded``): one definition of both.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import traceback
from contextlib import contextmanager
from typing import Callable, Iterator

from .errors import ConfigError
from .hardware import hardware_name
from .version import code_version

HOST = socket.gethostname()


def now() -> str:
    """The current UTC time, to the second, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(device, precision: str | None = None) -> dict:
    """The code, machine and process a record was computed with, and when it started."""
    out = {"code_version": code_version(), "device": str(device), "hardware": hardware_name(device), "host": HOST,
           "pid": os.getpid(), "started": now()}
    if precision is not None:
        out["precision"] = precision
    return out


@contextmanager
def failure_recorded(rec: dict, what: str, log: logging.Logger,
                     on_abort: Callable[[], None] | None = None) -> Iterator[dict]:
    """Run the body; an exception is recorded in ``rec`` (``status: failed``, the error, the traceback) and
    logged, and the caller goes on. An interrupt or a configuration error stops everything (``on_abort`` first):
    every later unit would fail the same way."""
    try:
        yield rec
    except (KeyboardInterrupt, ConfigError):
        if on_abort is not None:
            on_abort()
        raise
    except Exception as e:  # noqa: BLE001 - recorded, and the study goes on
        log.error("%s failed: %s", what, e)
        rec.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
