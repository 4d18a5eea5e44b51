"""Run claims: two processes working on one study never do the same run twice.

Before a run starts, ``run_study`` claims it with a file next to the records,
``<results_dir>/claims/<run>.claim``, created atomically and complete: the claimant's host,
PID, process start time and start time are written to a temporary file first, which is then
hard-linked to the claim's name (``link`` fails if the name exists: of two processes exactly
one creates it). A claim file therefore never exists empty or half-written; an unreadable
one (left by a crash on a file system without hard links, where claims are written in place
with ``O_CREAT | O_EXCL``, or damaged) holds nothing once it is a few seconds old. The claim is removed when the run's record is written (ok or
failed) and on any exception.

Another process that finds the claim skips the run while the claim is *live*:

* same host: the PID is alive (and is the same process: its start time matches);
* other host: the claim is younger than ``timeout_s`` (``claim_timeout_s``, default 6 h;
  another host's PIDs cannot be checked).

A claim that is not live is *stale* (its process was killed, or the host went away) and is
taken over: the stale file is removed under a short takeover lock (``<run>.claim.takeover``,
also ``O_EXCL``) so that only one of several processes replaces it, then claimed as usual.
A takeover lock older than a minute (its process died in that instant) is removed.

Host names must be unique among the machines sharing a results directory (containers
that share a host name and a PID namespace look like one host).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 6 * 3600.0
_WRITING_GRACE_S = 5.0      # an unreadable claim younger than this may be being written in place (no hard links)
_TAKEOVER_LOCK_S = 60.0
_can_link: bool = True       # False once the file system refused a hard link (written in place from then on)


_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}


def claim_path(results_dir: str | Path, run: str) -> Path:
    return Path(results_dir) / "claims" / f"{run}.claim"


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and, given its start time, is that same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    except OSError:
        return False
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False  # a zombie: dead, not yet reaped
    except (OSError, IndexError):
        pass
    if start is not None:
        now = _process_start(pid)
        if now is not None and now != start:
            return False  # the PID was reused by a newer process
    return True


@dataclass
class Holder:
    """Who holds a claim (as read from its file)."""

    host: str
    pid: int
    started: float
    token: str = ""
    pid_start: int | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"

    @classmethod
    def me(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), time.time(), uuid.uuid4().hex, _process_start(os.getpid()))

    def to_json(self) -> dict:
        return {"host": self.host, "pid": self.pid, "started": self.started,
                "started_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "token": self.token, "pid_start": self.pid_start}


def read_holder(path: Path) -> Holder | None:
    """The claim's holder; None when the file is gone, empty or not (yet) valid."""
    try:
        d = json.loads(path.read_text())
        return Holder(str(d["host"]), int(d["pid"]), float(d["started"]), str(d.get("token", "")),
                      d.get("pid_start"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_stale(holder: Holder | None, timeout_s: float = DEFAULT_TIMEOUT_S, now: float | None = None,
             path: Path | None = None) -> bool:
    """Whether a claim may be taken over (see the module docstring)."""
    now = time.time() if now is None else now
    if holder is None:  # unreadable: left torn or damaged (a linked claim is never incomplete), unless another
        try:            # process on a file system without hard links is writing it in place right now
            return path is None or now - path.stat().st_mtime > _WRITING_GRACE_S
        except OSError:
            return True
    if holder.host == socket.gethostname():
        return not pid_alive(holder.pid, holder.pid_start)
    return now - holder.started > timeout_s


class Claim:
    """A claim this process holds; ``release()`` removes it (only while it is still ours)."""

    def __init__(self, path: Path, holder: Holder):
        self.path, self.holder = path, holder

    def release(self) -> None:
        current = read_holder(self.path)
        if current is not None and current.token == self.holder.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _take_over(path: Path, seen: bytes, timeout_s: float) -> bool:
    """Remove the stale claim ``path`` (whose content was ``seen``) unless someone else is replacing it."""
    lock = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - lock.stat().st_mtime > _TAKEOVER_LOCK_S:
                lock.unlink()  # left by a process that died while taking over
        except OSError:
            pass
        return False
    try:
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            return True  # gone meanwhile: free to claim
        if current != seen or not is_stale(read_holder(path), timeout_s, path=path):
            return False  # replaced by a live claim meanwhile
        holder = read_holder(path)
        log.warning("taking over the stale claim %s (held by %s)", path.name,
                    holder if holder is not None else "an unreadable claim")
        path.unlink()
        return True
    finally:
        os.close(fd)
        try:
            lock.unlink()
        except OSError:
            pass


def acquire(path: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Claim | None, Holder | None]:
    """Claim a run: ``(claim, None)``, or ``(None, holder)`` while another live process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder: Holder | None = None
    for _ in range(3):
        me = Holder.me()
        try:
            _create(path, json.dumps(me.to_json()).encode())
        except FileExistsError:
            try:
                seen = path.read_bytes()
            except FileNotFoundError:
                continue  # released meanwhile: try again
            holder = read_holder(path)
            if not is_stale(holder, timeout_s, path=path):
                return None, holder or Holder("?", 0, time.time())
            _take_over(path, seen, timeout_s)
            continue
        return Claim(path, me), None
    holder = read_holder(path)  # several processes contend for a stale claim; one of them has it
    return None, holder or Holder("?", 0, time.time())


def _create(path: Path, content: bytes) -> None:
    """Create ``path`` with ``content``, complete or not at all; FileExistsError if it exists.

    Written to a temporary file, then hard-linked to ``path``: a full disk or a crash leaves
    no claim (the temporary file is removed), never an empty one that would look held."""
    global _can_link
    tmp = path.with_name(f".c-{uuid.uuid4().hex[:12]}.tmp")  # short: a long run id stays within NAME_MAX
    if _can_link:
        try:
            with open(tmp, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                raise
            except OSError as e:
                if e.errno not in _NO_LINKS:  # a full disk, an I/O error: the caller's problem, not the mode's
                    raise
                _can_link = False  # no hard links on this file system (some network and FUSE mounts)
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, content)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)  # never leave it empty
        raise
    os.close(fd)
