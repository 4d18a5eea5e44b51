"""Atomic file writes and file hashes: a crash never leaves a half-written result."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should read like any other file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable_dir(path: Path | str, key: str) -> None:
    """Prove, before any work, that directory ``path`` can be made and written: it, or the nearest part of it
    that exists, must be a writable directory (a file is proven by writing one there and removing it; nothing
    is created). A ``results_dir`` that is a file, lies under a file, or is read-only or not ours is a
    :class:`ConfigError` naming ``key``; a full disk is found by the first real write (exit 1, finished
    results intact)."""
    import errno

    from .errors import ConfigError

    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = "it is a file" if probe == path else f"{probe} is a file"
        raise ConfigError(f"{key}={path}: {where}, not a directory; point {key} at a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return  # the disk is full: no config problem; the first record write says so (exit 1)
        raise ConfigError(f"{key}={path}: cannot write there ({e.strerror}); point {key} at a writable "
                          f"directory") from None


def write_json(path: Path | str, obj: Any) -> None:
    data = json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode()
    _atomic(Path(path), lambda f: f.write(data))


def save_torch(path: Path | str, obj: Any) -> None:
    _atomic(Path(path), lambda f: torch.save(obj, f))


def read_json(path: Path | str) -> Any:
    with open(path) as f:
        return json.load(f)


def sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
