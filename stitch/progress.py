"""Progress of a study: one log line when a run starts and one when it ends, with an ETA.

    [3/16] layer=bn3 -> bn3 tlm  start
    [3/16]   epoch 12/30  loss 0.412
    [3/16] layer=bn3 -> bn3 tlm  ok  12.3s  elapsed 0:40  ETA 2:10

``run_study`` makes one ``StudyProgress`` for its runs; each run gets a ``RunProgress``
from ``start`` and ends with ``done``; runs that are not performed (finished earlier,
claimed by another process) are counted with ``skip``. The ETA weighs the runs not yet
reached by their expected cost (``weights``, e.g. a TLM run's epochs times the share of model 2
it trains through, a DM run a small constant) at the seconds per unit of weight measured so far,
separately for each kind of run (``kinds``: tlm, dm) where that kind has finished a run; without
weights it is the mean duration times the runs left. Lines go to the
``stitch.progress`` logger at INFO (console and the Hydra job log). Epochs of a training
run (``RunProgress.epoch``) show as a tqdm bar when stderr is a terminal, else as a log
line at most every ``every_s`` seconds (0: every epoch); inside a long epoch ``RunProgress.step``
adds a line every ``every_s`` seconds (steps done, of how many), so a log never goes quiet.
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
                 logger: logging.Logger = log, weights: list[float] | None = None, kinds: list[str] | None = None):
        self.total = total
        if weights is not None and len(weights) != total or kinds is not None and len(kinds) != total:
            raise ValueError(f"{len(weights or [])} run weights and {len(kinds or [])} kinds for {total} runs")
        self.weights = list(weights) if weights is not None else [1.0] * total
        self.kinds = list(kinds) if kinds is not None else [""] * total
        self.done_runs: list[tuple[str, float, float]] = []  # (kind, weight, seconds) of performed runs
        self.every_s = float(every_s)
        self.start_time = time.time() if start is None else start
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.log = logger
        self.index = 0              # runs reached so far (performed or skipped)
        self.durations: list[float] = []

    def _prefix(self) -> str:
        return f"[{self.index}/{self.total}]"

    def eta(self) -> float | None:
        """Seconds left: each run not yet reached, at its kind's measured seconds per unit of weight."""
        if not self.done_runs:
            return None
        total_rate = sum(t for _, _, t in self.done_runs) / max(1e-9, sum(w for _, w, _ in self.done_runs))
        rate = {}
        for kind in {k for k, _, _ in self.done_runs}:
            w = sum(w for k, w, _ in self.done_runs if k == kind)
            rate[kind] = sum(t for k, _, t in self.done_runs if k == kind) / max(1e-9, w)
        return sum(rate.get(k, total_rate) * w for k, w in zip(self.kinds[self.index:], self.weights[self.index:]))

    def start(self, label: str) -> "RunProgress":
        self.index += 1
        self.log.info("%s %s  start", self._prefix(), label)
        i = self.index - 1
        return RunProgress(self, self._prefix(), label, self.kinds[i] if i < self.total else "",
                           self.weights[i] if i < self.total else 1.0)

    def skip(self, label: str, why: str) -> None:
        self.index += 1
        self.log.info("%s %s  %s", self._prefix(), label, why)


class RunProgress:
    def __init__(self, study: StudyProgress, prefix: str, label: str, kind: str = "", weight: float = 1.0):
        self.study, self.prefix, self.label = study, prefix, label
        self.kind, self.weight = kind, weight
        self.start_time = self._last = time.time()
        self._bar = None

    def step(self, step: int, steps: int, epoch: int, epochs: int) -> None:
        """Step ``step`` of ``steps`` (all epochs) is done: a line when ``every_s`` passed since the last one."""
        if self.study.tty or self.study.every_s <= 0:
            return
        now = time.time()
        if now - self._last >= self.study.every_s:
            self._last = now
            self.study.log.info("%s   epoch %d/%d  step %d/%d  %s", self.prefix, epoch, epochs, step, steps,
                                duration(now - self.start_time))

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

    def done(self, status: str, seconds: float | None = None, one_off_s: float = 0.0) -> None:
        """The run ended; ``one_off_s`` of its time was work no later run repeats (e.g. training the OOD
        detector of its target layer): left out of the rate the ETA extrapolates."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        seconds = time.time() - self.start_time if seconds is None else seconds
        self.study.durations.append(seconds)
        self.study.done_runs.append((self.kind, self.weight, max(0.0, seconds - one_off_s)))
        st = self.study
        st.log.info("%s %s  %s  %.1fs  elapsed %s  ETA %s", self.prefix, self.label, status, seconds,
                    duration(time.time() - st.start_time), duration(st.eta()))


def run_weight(kind: str, target_index: int, target_layers: int, epochs: int = 1) -> float:
    """A run's expected cost, in arbitrary units (only ratios between runs of one kind matter): TLM trains
    through model 2 from its target layer on, ``epochs`` times (the share of the network left after layer
    ``target_index`` of ``target_layers``), plus its evaluation; other kinds (DM: one solve) count 1."""
    if kind != "tlm":
        return 1.0
    share = (target_layers - target_index) / max(1, target_layers)
    return max(1, epochs) * (0.1 + share) + 0.5
