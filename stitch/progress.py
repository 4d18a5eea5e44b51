"""Progress of a study: one log line when a run starts and one when it ends, with an ETA.

    [3/16] layer=bn3 -> bn3 tlm  start
    [3/16]   epoch 12/30  loss 0.412
    [3/16] layer=bn3 -> bn3 tlm  ok  12.3s  elapsed 0:40  ETA 2:10

``run_study`` makes one ``StudyProgress`` for its runs; each run gets a ``RunProgress``
from ``start`` and ends with ``done``; runs that are not performed (finished earlier,
claimed by another process) are counted with ``skip``. The ETA is the mean duration of
the runs performed so far times the runs not yet reached. Lines go to the
``stitch.progress`` logger at INFO (console and the Hydra job log). Epochs of a training
run (``RunProgress.epoch``) show as a tqdm bar when stderr is a terminal, else as a log
line at most every ``every_s`` seconds (0: every epoch).
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("stitch.progress")


def duration(seconds: float | None) -> str:
    """``0:40``, ``12:05``, ``1:02:03``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StudyProgress:
    def __init__(self, total: int, every_s: float = 30.0, start: float | None = None, tty: bool | None = None,
                 logger: logging.Logger = log):
        self.total = total
        self.every_s = float(every_s)
        self.start_time = time.time() if start is None else start
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.log = logger
        self.index = 0              # runs reached so far (performed or skipped)
        self.durations: list[float] = []

    def _prefix(self) -> str:
        return f"[{self.index}/{self.total}]"

    def eta(self) -> float | None:
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * (self.total - self.index)

    def start(self, label: str) -> "RunProgress":
        self.index += 1
        self.log.info("%s %s  start", self._prefix(), label)
        return RunProgress(self, self._prefix(), label)

    def skip(self, label: str, why: str) -> None:
        self.index += 1
        self.log.info("%s %s  %s", self._prefix(), label, why)


class RunProgress:
    def __init__(self, study: StudyProgress, prefix: str, label: str):
        self.study, self.prefix, self.label = study, prefix, label
        self.start_time = self._last = time.time()
        self._bar = None

    def epoch(self, epoch: int, epochs: int, values: dict | None = None) -> None:
        """Epoch ``epoch`` (1-based) of ``epochs`` has ended; ``values`` e.g. {"loss": 0.41}."""
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (values or {}).items())
        if self.study.tty:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=epochs, desc=f"{self.prefix} {self.label}", leave=False, file=sys.stderr,
                                 dynamic_ncols=True)
            self._bar.update(epoch - self._bar.n)
            if text:
                self._bar.set_postfix_str(text, refresh=True)
            return
        now = time.time()
        if now - self._last >= self.study.every_s:
            self._last = now
            self.study.log.info("%s   epoch %d/%d  %s", self.prefix, epoch, epochs, text)

    def done(self, status: str, seconds: float | None = None) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        seconds = time.time() - self.start_time if seconds is None else seconds
        self.study.durations.append(seconds)
        st = self.study
        st.log.info("%s %s  %s  %.1fs  elapsed %s  ETA %s", self.prefix, self.label, status, seconds,
                    duration(time.time() - st.start_time), duration(st.eta()))
