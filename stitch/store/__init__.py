"""The model store: donors keyed by data set / model / seed (or name), trained here or imported.

Layout::

    <root>/<data>/<model tag>/seed<seed>/model.pt    # trained here: state dict only (tensors)
    <root>/<data>/<model tag>/<name>/model.pt        # imported under a name (e.g. in0)
    <root>/<data>/<model tag>/<...>/meta.json        # config, metrics, code version, sha256, provenance

``model.pt`` holds tensors only and is always read with ``torch.load(...,
weights_only=True)``: a checkpoint can never execute code. Its sha256 is checked against
the metadata on every load, so a swapped or truncated file is refused. A donor directory
is written whole into a temporary sibling and renamed into place: ``model.pt`` and
``meta.json`` become visible together or not at all, also when a forced retrain replaces
a donor.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import models
from ..errors import CheckpointError
from ..fileio import read_json, save_torch, sha256, write_json
from ..version import code_version

log = logging.getLogger(__name__)

DEFAULT_ROOT = "models"


def store_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get("STITCH_STORE", DEFAULT_ROOT)).expanduser()


def _seed(seed: Any) -> int | str:
    """Seeds are ints (donors trained here); imported donors may be named instead (``in0``)."""
    if isinstance(seed, bool):
        raise ValueError(f"a donor seed must be an integer or a name, got {seed!r}")
    if isinstance(seed, int):
        return seed
    s = str(seed).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    if not s or not all(c.isalnum() or c in "-_." for c in s) or s.startswith("."):
        raise ValueError(f"a donor name may only hold letters, digits, '-', '_' and '.', got {seed!r}")
    return s


@dataclass(frozen=True)
class DonorKey:
    data: str
    model: str
    options: tuple[tuple[str, Any], ...] = ()
    seed: int | str = 0

    @classmethod
    def make(cls, data: str, model: str, seed: int | str, options: dict | None = None) -> "DonorKey":
        # cut-point options (models.CUT_POINT_OPTIONS) do not change the weights: one donor for any of them
        options = {k: v for k, v in (options or {}).items() if k not in models.CUT_POINT_OPTIONS}
        return cls(data, model, tuple(sorted(options.items())), _seed(seed))

    @classmethod
    def of(cls, model, data: str, seed: int | str | None = None) -> "DonorKey":
        """The key of donor ``model`` (a ``ModelSpec``, or a ``conf/model`` dict with its ``seed``) trained or
        imported on data set ``data``: the one way a study, a training and an import name a donor."""
        get = model.get if isinstance(model, dict) else lambda k, d=None: getattr(model, k, d)
        return cls.make(data, get("name"), get("seed", 0) if seed is None else seed, dict(get("options") or {}))

    @property
    def tag(self) -> str:
        return models.model_tag(self.model, **dict(self.options))

    @property
    def imported(self) -> bool:
        """Named donors can only come from ``python -m stitch.store import``."""
        return isinstance(self.seed, str)

    @property
    def leaf(self) -> str:
        return f"seed{self.seed}" if isinstance(self.seed, int) else self.seed

    def directory(self, root: str | Path | None = None) -> Path:
        return store_root(root) / self.data / self.tag / self.leaf

    def _store_arg(self, root: str | Path | None) -> str:
        r = store_root(root)
        return "" if str(r) == DEFAULT_ROOT and root in (None, DEFAULT_ROOT) else f" store={r}"

    def import_command(self, root: str | Path | None = None, source: str = "<checkpoint.pt>",
                       force: bool = False) -> str:
        """The ``python -m stitch.store import`` command that makes this (named) donor from ``source``."""
        parts = ["python -m stitch.store import", str(source), f"--data {self.data}", f"--model {self.model}",
                 *(f"--option {k}={v}" for k, v in self.options), f"--name {self.seed}"]
        if force:
            parts.append("--force")
        if self._store_arg(root):
            parts.append(f"--store {store_root(root)}")
        return " ".join(parts)

    def train_command(self, root: str | Path | None = None) -> str:
        """The command that (re)makes this donor: a training run, or an import for a named donor."""
        if self.imported:
            return self.import_command(root)
        opts = " ".join(f"model.options.{k}={v}" for k, v in self.options)
        return (f"python train_models.py data={self.data} model={self.model} seed={self.seed} {opts}".strip()
                + self._store_arg(root))

    def __str__(self) -> str:
        return f"{self.data}/{self.tag}/{self.leaf}"


def save(key: DonorKey, model: torch.nn.Module, meta: dict, root: str | Path | None = None) -> Path:
    """Write ``model.pt`` and ``meta.json`` so that both appear (or are replaced) in one rename."""
    d = key.directory(root)
    d.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(root)  # folders of saves that crashed (killed mid-write): each holds a model.pt
    tmp = d.parent / f".{d.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        save_torch(tmp / "model.pt", state)
        meta = dict(meta, key=str(key), model=key.model, options=dict(key.options), data=key.data, seed=key.seed,
                    code_version=code_version(), sha256=sha256(tmp / "model.pt"))
        write_json(tmp / "meta.json", meta)
        old = None
        if d.exists():  # forced retrain: move the old donor aside first; a crash leaves no donor, never a wrong one
            old = d.parent / f".{d.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(d, old)
        os.replace(tmp, d)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return d


def exists(key: DonorKey, root: str | Path | None = None) -> bool:
    d = key.directory(root)
    return (d / "meta.json").is_file() and (d / "model.pt").is_file()


def _missing_message(key: DonorKey, root: str | Path | None) -> str:
    verb = "import" if key.imported else "train"
    return (f"no donor {key} in the model store {store_root(root).resolve()}; {verb} it with:\n  "
            f"{key.train_command(root)}")


def load_meta(key: DonorKey, root: str | Path | None = None) -> dict:
    d = key.directory(root)
    if not exists(key, root):
        raise CheckpointError(_missing_message(key, root))
    return read_meta(d / "meta.json", key.train_command(root))


META_REQUIRED = ("num_classes", "sha256")


def read_meta(path: Path, redo: str) -> dict:
    """A donor's ``meta.json``, or a CheckpointError naming the file and the command that remakes it
    (truncated, emptied, not JSON, or missing the fields a load needs)."""
    try:
        meta = read_json(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"donor metadata {path} is damaged ({type(e).__name__}: {str(e)[:120]}); remake the "
                              f"donor with --force (or delete {path.parent}):\n  {redo}") from None
    missing = [k for k in META_REQUIRED if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"donor metadata {path} is damaged (no {', '.join(missing)}); remake the donor with "
                              f"--force (or delete {path.parent}):\n  {redo}")
    return meta


LEFTOVER_AGE_S = 15 * 60  # a save takes seconds: a temporary folder this old was left by a crash


def leftovers(root: str | Path | None = None, min_age_s: float = 0.0) -> list[Path]:
    """Temporary folders of interrupted saves (``.<seed>.tmp-*``, ``.<seed>.old-*``), at least ``min_age_s`` old."""
    base = store_root(root)
    if not base.is_dir():
        return []
    now = time.time()
    out = []
    for pattern in ("*/*/.*.tmp-*", "*/*/.*.old-*"):
        for p in base.glob(pattern):
            try:
                if p.is_dir() and now - p.stat().st_mtime >= min_age_s:
                    out.append(p)
            except OSError:
                pass
    return sorted(out)


def remove_leftovers(root: str | Path | None = None, min_age_s: float = LEFTOVER_AGE_S) -> list[Path]:
    """Delete what :func:`leftovers` finds (each may hold a full ``model.pt``); returns them."""
    found = leftovers(root, min_age_s)
    for p in found:
        shutil.rmtree(p, ignore_errors=True)
    if found:
        log.info("removed %d leftover folder(s) of interrupted donor saves: %s", len(found),
                 ", ".join(str(p) for p in found))
    return found


def load_state(path: Path, redo: str) -> dict:
    """A state dict of tensors from ``path`` (never code), or a CheckpointError naming ``redo``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or a pickle with code in it
        raise CheckpointError(f"checkpoint {path} is corrupt or unsafe to load ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); {redo}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning/training checkpoint: its weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors; {redo}")
    return state


def match_state(net: torch.nn.Module, state: dict, path: Path | str, redo: str) -> None:
    """Load ``state`` strictly, or raise a CheckpointError naming every missing, unexpected and misshapen key."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in expected
              if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing keys: {_some(missing, ', ')}" if missing else "",
                 f"unexpected keys: {_some(unexpected, ', ')}" if unexpected else "",
                 f"shape mismatches: {_some(shapes, '; ')}" if shapes else ""]
        prefix = _wrapper_prefix(missing, unexpected)
        hint = (f"; the file's keys carry the prefix {prefix!r} (a training wrapper's): import with --strip-prefix "
                f"{prefix}" if prefix else "")
        raise CheckpointError(f"checkpoint {path} does not match the model ({' | '.join(p for p in parts if p)})"
                              f"{hint}; {redo}")
    net.load_state_dict(state)


def _some(items: list[str], sep: str, most: int = 8) -> str:
    """The first ``most`` items: a whole-model mismatch would otherwise list a hundred keys."""
    more = f"{sep}… ({len(items) - most} more)" if len(items) > most else ""
    return sep.join(items[:most]) + more


def _wrapper_prefix(missing: list[str], unexpected: list[str]) -> str | None:
    """``module.`` (DataParallel), ``model.`` (Lightning), …: a prefix that turns every missing key into a file key."""
    if not missing or not unexpected:
        return None
    ends = [u[: -len(missing[0])] for u in unexpected if u.endswith(missing[0]) and u != missing[0]]
    for prefix in ends:
        if all(prefix + m in set(unexpected) for m in missing):
            return prefix
    return None


def _redo(key: DonorKey, meta: dict, root: str | Path | None) -> str:
    """The command that remakes a damaged donor: the same import again (forced), or a retrain."""
    source = (meta.get("provenance") or {}).get("source")
    if source:
        return "import it again with:\n  " + key.import_command(root, source, force=True)
    return "delete it and retrain with:\n  " + key.train_command(root)


def load(key: DonorKey, root: str | Path | None = None, device: str | torch.device = "cpu"
         ) -> tuple[models.StitchableNetwork, dict]:
    """Build the donor's network, load its weights (tensors only, hash checked) and return (model in eval mode, meta)."""
    meta = load_meta(key, root)
    path = key.directory(root) / "model.pt"
    redo = _redo(key, meta, root)
    digest = sha256(path)
    if meta.get("sha256") and digest != meta["sha256"]:
        raise CheckpointError(f"checkpoint {path} has sha256 {digest[:16]}… but its metadata records "
                              f"{meta['sha256'][:16]}…: the file was replaced or damaged after it was stored; {redo}")
    state = load_state(path, redo)
    net = models.build(key.model, num_classes=meta["num_classes"], in_channels=meta.get("in_channels", 3),
                       **dict(key.options))
    if set(state) != set(net.state_dict()):
        state = net.upgrade_state_dict(state)  # a donor saved by an earlier version of the family
    match_state(net, state, path, f"it was made by other code or options; {redo}")
    return net.to(device).eval(), meta


def sanity_floor(num_classes: int, multilabel: bool = False, majority_acc: float | None = None) -> float:
    """Accuracy below which a donor is taken as untrained or broken: 1.5x chance (single-label); for
    multi-label tasks half a point above always predicting each attribute's majority value (when
    known; CelebA's is ~0.80), else 0.5."""
    if multilabel:
        return min(0.999, majority_acc + 0.005) if majority_acc is not None else 0.5
    return min(0.99, 1.5 / num_classes)
