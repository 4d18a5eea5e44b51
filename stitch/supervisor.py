"""A native crash loses one run, not the study: ``stitch.py`` runs its study in a child process.

A segmentation fault or abort inside a C++ kernel (oneDNN, BLAS, CUDA) kills the whole
Python process; no ``except`` sees it. So ``stitch-run`` (``python stitch.py``) starts a
small parent that does nothing but this: it runs the same command line in a child process
and, when the child dies from a signal, looks at the run the child had marked as in flight
(``RUN_MARKER``, a JSON file the runner writes before a run's fit and removes after its
record), writes that run's record as ``status: failed`` (with the signal, e.g. SIGSEGV), and
starts the child again, which skips finished runs and those that crashed in this invocation
(``CRASHED_RUNS``). The study goes on; its exit code is 1, as for any failed run. A later
invocation retries the crashed runs, like any failed run.

A child killed outside any run (while loading data or donors) ends the invocation with exit
1 and a line saying so. The parent imports no torch and forwards SIGTERM and SIGINT to the
child; the child dies with its parent (``PR_SET_PDEATHSIG`` on Linux), so killing the
parent never leaves a study running in the background. ``STITCH_SUPERVISE=0`` runs the
study in the calling process (e.g. under a debugger).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

RUN_MARKER = "STITCH_RUN_MARKER"        # the child writes its in-flight run here
CRASHED_RUNS = "STITCH_CRASHED_RUNS"    # run ids that crashed in this invocation: skipped on restart
SUPERVISE = "STITCH_SUPERVISE"
LAUNCHER_PID = "STITCH_LAUNCHER_PID"    # the parent's pid, recorded next to the child's
MAX_RESTARTS = 1000                     # each restart records one more crashed run, so this only bounds a bug


def mark_run(info: dict | None) -> None:
    """In the child: record (``info``: ``record_path``, ``claim_path`` and the record's head) or clear the run in
    flight. A no-op when not supervised."""
    path = os.environ.get(RUN_MARKER)
    if not path:
        return
    if info is None:
        Path(path).unlink(missing_ok=True)
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, default=str)
    os.replace(tmp, path)


def launcher_pid() -> int:
    """The pid of the process the user started (the supervising parent; this process when unsupervised)."""
    return int(os.environ.get(LAUNCHER_PID) or os.getpid())


def crashed_runs() -> set[str]:
    """In the child: run ids that killed an earlier child of this invocation."""
    return {r for r in os.environ.get(CRASHED_RUNS, "").split(",") if r}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_name(code: int) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
    return f"{name} (out of memory?)" if name == "SIGKILL" else name


def _record_crash(marker: Path, code: int) -> str | None:
    """Write the in-flight run's record as failed; returns its run id (None: no run was in flight)."""
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    name = _signal_name(code)
    rec = {**info["head"], "status": "failed", "native_crash": name,
           "error": f"NativeCrash: the process died from {name} during this run (a crash inside a native "
                    f"kernel, not a Python exception); the study went on without it, and a rerun retries it",
           "ended": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path = Path(info["record_path"])  # written here, not with stitch.fileio: that module loads torch
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    os.replace(tmp, path)
    if info.get("claim_path"):
        Path(info["claim_path"]).unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    return rec["run"]


def supervise(run: Callable[[], None]) -> None:
    """Call ``run`` in this process when already supervised (or ``STITCH_SUPERVISE=0``), else run this
    command line in a child process, restarting it after each native crash inside a run; exits with the
    child's code."""
    if RUN_MARKER in os.environ or os.environ.get(SUPERVISE, "1") == "0":
        run()
        return
    crashed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="stitch-supervisor-") as tmp:
        marker = Path(tmp) / "run.json"
        for _ in range(MAX_RESTARTS):
            env = {**os.environ, RUN_MARKER: str(marker), CRASHED_RUNS: ",".join(crashed), LAUNCHER_PID: str(os.getpid())}
            child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            forward = lambda sig, _frame: child.send_signal(sig)  # noqa: E731
            old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                code = child.wait()
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
            if code >= 0 or -code in (signal.SIGTERM, signal.SIGINT):
                sys.exit(code if code >= 0 else 128 - code)  # ended, or stopped on purpose: passed on as it is
            run_id = _record_crash(marker, code)
            if run_id is None:
                print(f"error: the study process died from {_signal_name(code)} outside any run (while setting up "
                      f"data, donors or detectors); nothing was recorded for it", file=sys.stderr)
                sys.exit(1)
            print(f"error: run {run_id} crashed the process ({_signal_name(code)}); recorded as failed, "
                  f"going on with the rest of the study", file=sys.stderr)
            crashed.append(run_id)
    sys.exit(1)
