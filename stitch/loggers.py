"""Experiment loggers. wandb is imported only when the W&B logger is chosen.

W&B mode: ``online`` only when asked for or when an API key is configured;
otherwise ``offline`` (sync later with ``wandb sync``). The API key is never
written to configs, logs or results.

W&B never blocks or fails a study: the mode is decided once per process, up front
(``decide_wandb_mode``): an online mode first checks that the W&B host answers (a TCP
connect with a ~2 s timeout, ``check_host``/``check_timeout_s`` in
``conf/logger/wandb.yaml``) and falls back to offline with a warning when it does not.
``WandbRun`` turns any exception from wandb (import, init, log, finish) into a warning,
kept in ``WandbRun.warnings`` (stitching runs copy them into their record).
"""
from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .settings import LoggerSettings

log = logging.getLogger(__name__)

DEFAULT_HOST = "api.wandb.ai"
DEFAULT_CHECK_TIMEOUT_S = 2.0
_decided: dict[tuple, tuple[str, str | None]] = {}  # (mode, host, port, timeout) -> (mode, warning)


def wandb_mode(requested: str | None) -> str:
    if requested:
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        rc = netrc.netrc(os.path.expanduser("~/.netrc"))
        if rc.authenticators(DEFAULT_HOST):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def logger_settings(cfg: LoggerSettings | dict[str, Any] | None) -> LoggerSettings:
    """The typed logger settings (``conf/logger/*.yaml``); a dict is checked, unset keys take
    ``LoggerSettings``' defaults (the one place they live), None is no logger."""
    from .settings import LoggerSettings, Problems, _raise

    if isinstance(cfg, LoggerSettings):
        return cfg
    problems = Problems()
    s = LoggerSettings.parse(cfg or {"name": "none"}, "logger.", problems)
    _raise(problems)
    return s


def check_target(cfg: LoggerSettings | dict[str, Any] | None) -> tuple[str, int] | None:
    """The (host, port) the connectivity check connects to; None: no check.

    ``check_host``: ``auto`` (``WANDB_BASE_URL``, else api.wandb.ai:443), ``host:port``, or
    ``none``/null/false to skip the check."""
    spec = logger_settings(cfg).check_host
    if spec in (None, False, "none", "off", ""):
        return None
    if spec == "auto":
        url = urlsplit(os.environ.get("WANDB_BASE_URL") or f"https://{DEFAULT_HOST}")
        return url.hostname or DEFAULT_HOST, url.port or (80 if url.scheme == "http" else 443)
    host, _, port = str(spec).rpartition(":")
    if not host:
        return str(spec), 443
    return host.strip("[]"), int(port)


def reachable(host: str, port: int, timeout_s: float = DEFAULT_CHECK_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_wandb_installed(cfg: LoggerSettings | dict[str, Any] | None, where: str = "logger") -> None:
    """``logger=wandb`` (any mode but disabled) without the package: a ConfigError before any work,
    instead of a whole study that logs nothing with a warning per run."""
    import importlib.util

    s = logger_settings(cfg)
    if s.name != "wandb" or "disabled" in (wandb_mode(s.mode), os.environ.get("WANDB_MODE")):
        return
    if importlib.util.find_spec("wandb") is None:
        from .errors import ConfigError

        raise ConfigError(f"{where}=wandb: the wandb package is not installed; pip install wandb (or "
                          f"pip install -e '.[wandb]'), or use {where}=none or {where}=csv")


def decide_wandb_mode(cfg: LoggerSettings | dict[str, Any] | None) -> tuple[str, str | None]:
    """(mode, warning): the requested/auto mode, or ``offline`` when online is unreachable.

    Decided once per process for each setting (a sweep's jobs in one process check once)."""
    s = logger_settings(cfg)
    mode = wandb_mode(s.mode)
    if mode != "online":
        return mode, None
    target = check_target(s)
    if target is None:
        return mode, None
    timeout = float(s.check_timeout_s)
    key = (mode, *target, timeout)
    if key not in _decided:
        if reachable(*target, timeout):
            _decided[key] = (mode, None)
        else:
            msg = (f"W&B host {target[0]}:{target[1]} did not answer within {timeout:g} s: logging offline "
                   f"instead (upload later with `wandb sync <run dir>`)")
            log.warning(msg)
            _decided[key] = ("offline", msg)
    return _decided[key]


def lightning_logger(cfg: LoggerSettings | dict[str, Any] | None, name: str, config: dict | None = None):
    """A Lightning logger from the logger settings (False for none)."""
    s = logger_settings(cfg)
    kind = s.name
    if kind == "none":
        return False
    save_dir = Path(s.save_dir or "outputs")
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=str(save_dir), name=name, version="")
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
        mode, _ = decide_wandb_mode(s)
        return WandbLogger(project=s.project, entity=s.entity, group=s.group, name=name, save_dir=str(save_dir),
                           tags=list(s.tags or []), mode=mode, config=config)
    raise ValueError(f"unknown logger {kind!r}; use csv, wandb or none")


class WandbRun:
    """A plain W&B run for non-Lightning code (stitching runs, sweep reports) that never raises.

    A failure of wandb (not installed, init, log, finish) is logged once as a warning and kept
    in ``warnings``; the run then does nothing more (``active`` is False)."""

    def __init__(self, cfg: LoggerSettings | dict[str, Any], name: str, config: dict | None = None,
                 job_type: str = "stitch"):
        self.warnings: list[str] = []
        self.wandb = None
        self.run = None
        s = logger_settings(cfg)
        mode, note = decide_wandb_mode(s)
        if note:
            self.warnings.append(note)
        try:
            import wandb

            self.wandb = wandb
            os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
            self.run = wandb.init(project=s.project, entity=s.entity, group=s.group, name=name,
                                  dir=str(s.save_dir or "outputs"), tags=list(s.tags or []), mode=mode, config=config,
                                  job_type=job_type,
                                  reinit="finish_previous")
        except Exception as e:  # noqa: BLE001 - W&B must never stop the work it records
            self._failed("init", e)

    @property
    def active(self) -> bool:
        return self.run is not None

    def _failed(self, what: str, e: BaseException) -> None:
        msg = f"W&B {what} failed ({type(e).__name__}: {str(e).strip()[:300]}); going on without W&B for this run"
        log.warning(msg)
        self.warnings.append(msg)

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            self._failed(what, e)
            self.finish(quiet=True)

    def define_metric(self, name: str, step_metric: str) -> None:
        self._call("define_metric", lambda: self.run.define_metric(name, step_metric=step_metric))

    def log(self, metrics: dict, step: int | None = None) -> None:
        self._call("log", lambda: self.run.log(metrics, step=step))

    def summary(self, metrics: dict) -> None:
        def put():
            for k, v in metrics.items():
                self.run.summary[k] = v

        self._call("summary", put)

    def finish(self, exit_code: int = 0, quiet: bool = False) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001
            if not quiet:
                self._failed("finish", e)
