"""Helpers shared by the thin entry scripts."""
from __future__ import annotations

import functools
import logging
import sys

from omegaconf import DictConfig, OmegaConf

from .errors import StitchError


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def user_errors_as_messages(fn):
    """Print user errors (missing data, checkpoints, bad names) as one message and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (StitchError, ValueError) as e:
            debugging = logging.getLogger().level <= logging.DEBUG
            if debugging and not isinstance(e, StitchError):  # keep the traceback of a plain ValueError
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
