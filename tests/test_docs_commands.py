"""Every command in README.md and docs/*.md is one that runs as written.

Commands are taken from the fenced code blocks (continuation lines joined, comments dropped). Running
them all would take hours, so each is *validated*: ``stitch.py`` / ``train_models.py`` commands are
composed from the real configs with their overrides (a sweep's first value) and checked by the typed
settings, exactly as the scripts do before any work; ``make`` targets must exist; ``python -m
stitch.store`` commands must parse; ``sweep.py`` must compose. A typo, a renamed key or a removed
target in the documentation fails here.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from stitch.errors import ConfigError

from .test_configs import _resolved

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(text: str) -> list[str]:
    """The fenced code blocks that hold shell commands (```bash, ```sh, ```console or unlabelled)."""
    blocks, current, lang = [], None, ""
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\S*)", line)
        if fence:
            if current is None:
                current, lang = [], fence.group(1)
            else:
                if lang in ("", "bash", "sh", "console", "shell"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


STARTS = ("python", "make", "stitch-run", "stitch-train", "stitch-sweep")


def commands() -> list[tuple[str, str, str | None]]:
    """(where, command, the ``error:`` line the docs show it printing, if any) for every command in the docs."""
    out = []
    for doc in DOCS:
        for block in _blocks(doc.read_text()):
            lines = re.sub(r"\\\n\s*", " ", block).splitlines()
            for i, line in enumerate(lines):
                line = line.strip()
                if line.startswith("$ "):
                    line = line[2:]
                try:
                    parts = _env_and_args(shlex.split(line, comments=True))
                except ValueError:
                    continue
                if not parts or parts[0] not in STARTS:
                    continue
                shown = lines[i + 1].strip() if i + 1 < len(lines) else ""
                out.append((doc.name, " ".join(shlex.quote(p) for p in parts),
                            shown if shown.startswith("error:") else None))
    return out


def _env_and_args(parts: list[str]) -> list[str]:
    while parts and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", parts[0]):  # SVHN_ROOT=... python ...
        parts = parts[1:]
    return parts


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """``k=a,b`` -> ``k=a`` (a multirun's first job); ``k=[a,b]`` stays a list."""
    out = []
    for o in overrides:
        if "=" in o:
            k, v = o.split("=", 1)
            if "," in v and not v.startswith(("[", "{", "'", '"')):
                v = v.split(",")[0]
            o = f"{k}={v}"
        out.append(o)
    return out


def _short(v) -> str:
    v = "" if v is None else str(v)
    return v if len(v) < 70 else v[:67] + "..."


CMDS = commands()
SCRIPTS = {"stitch.py": "stitch", "train_models.py": "train", "sweep.py": "sweep", "stitch-run": "stitch",
           "stitch-train": "train", "stitch-sweep": "sweep"}


def test_the_docs_have_commands_to_check():
    kinds = {c.split()[1] if c.startswith("python") else c.split()[0] for _, c, _ in CMDS}
    assert {"stitch.py", "train_models.py", "make", "sweep.py"} <= kinds and len(CMDS) > 30


@pytest.mark.parametrize("where,cmd,error", [c for c in CMDS if any(s in c[1].split()[:2] for s in SCRIPTS)],
                         ids=_short)
def test_a_documented_script_command_composes_and_passes_the_settings_checks(where, cmd, error, tmp_path):
    """... or, where the docs show it printing an ``error:`` line, fails with that very line."""
    parts = shlex.split(cmd)
    if parts[0] == "python":
        parts = parts[1:]
    script, args = parts[0], parts[1:]
    config = SCRIPTS[script]
    if "--help" in args or "--cfg" in args or "-h" in args:
        return
    overrides = _first_of_sweeps([a for a in args if a not in ("-m", "--multirun") and not a.startswith("hydra")
                                  and "=" in a])
    overrides = [o.replace("path/to/", str(tmp_path) + "/") for o in overrides]
    try:
        cfg = _resolved(config, overrides, tmp_path)
    except Exception as e:  # noqa: BLE001 - Hydra's own rejection: a key or group that does not exist
        pytest.fail(f"{where}: `{cmd}` does not compose: {e}")
    try:
        if config == "stitch":
            from stitch.settings import study_settings

            study_settings(cfg)
        elif config == "train":
            from stitch.settings import check_train

            check_train(cfg)
    except ConfigError as e:
        if error is not None and f"error: {e}" == error:
            return
        pytest.fail(f"{where}: `{cmd}` fails the settings check: {e}")
    assert error is None, f"{where}: `{cmd}` is shown failing with {error!r} but passes the checks"


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("where,cmd", [c[:2] for c in CMDS if c[1].startswith("make ")],
                         ids=_short)
def test_a_documented_make_target_exists(where, cmd):
    targets = [a for a in shlex.split(cmd)[1:] if "=" not in a and not a.startswith("-")]
    missing = [t for t in targets if t not in _make_targets()]
    assert not missing, f"{where}: `{cmd}` names make targets that do not exist: {missing}"


@pytest.mark.parametrize("where,cmd", [c[:2] for c in CMDS if "stitch.store" in c[1].split()],
                         ids=_short)
def test_a_documented_store_command_parses(where, cmd, monkeypatch):
    from stitch.store import __main__ as store_cli

    parts = shlex.split(cmd)
    args = parts[parts.index("stitch.store") + 1:]
    called = []
    for name in ("_import", "_list", "_verify"):
        monkeypatch.setattr(store_cli, name, lambda a, name=name: called.append(name) or 0)
    try:
        assert store_cli.main(args) == 0
    except SystemExit as e:  # argparse: an unknown option or sub-command
        pytest.fail(f"{where}: `{cmd}` does not parse (exit {e.code})")
    assert called, f"{where}: `{cmd}` runs no sub-command"
