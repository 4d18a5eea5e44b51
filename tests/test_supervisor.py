"""A native crash inside one run (a segfault in a C++ kernel) loses that run, not the study.

The crash is injected end to end: a ``sitecustomize`` on the child's path makes the direct-matching
fit of one layer dereference a null pointer, exactly as a faulty kernel would.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from stitch.results import load_records

from .conftest import SYNTH_OVERRIDES, run_script

pytestmark = pytest.mark.slow

CRASH_AT = """
import ctypes, os
if os.environ.get("STITCH_RUN_MARKER"):  # only in the supervised study process
    import stitch.matching.fitting as fitting
    plain = fitting.fit_direct
    def fit_direct(ctx, m):
        if ctx.L == "{layer}":
            ctypes.string_at(0)  # SIGSEGV
        return plain(ctx, m)
    fitting.fit_direct = fit_direct
    import stitch.study.runner as runner
    runner.fit_direct = fit_direct
"""


def _stitch(tmp_path: Path, store: Path, *args: str, env: dict | None = None):
    return run_script("stitch.py", f"store={store}", f"results_dir={tmp_path}/res", f"hydra.run.dir={tmp_path}/out",
                      f"hydra.sweep.dir={tmp_path}/multi", *SYNTH_OVERRIDES, "method=dm", "similarity.samples=32",
                      "similarity.indices=[cka]", "print_table=true", *args, env=env)


def test_a_segfault_in_one_run_is_recorded_and_the_study_goes_on(donor_store, tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(CRASH_AT.format(layer="relu7"))
    r = _stitch(tmp_path, donor_store, "layer=[relu6,relu7,relu8]", env={"PYTHONPATH": str(inject)})
    assert r.returncode == 1, r.stderr[-3000:]  # a run failed: 1, not 139 and not 0
    assert "crashed the process (SIGSEGV)" in r.stderr
    recs = {rec["layer"]: rec for rec in load_records(tmp_path / "res", status=None)}
    assert {k: v["status"] for k, v in recs.items()} == {"relu6": "ok", "relu7": "failed", "relu8": "ok"}
    assert recs["relu7"]["native_crash"] == "SIGSEGV" and "SIGSEGV" in recs["relu7"]["error"]
    assert recs["relu7"]["method"] == "dm" and recs["relu7"]["target_layer"] == "relu7"
    assert list((tmp_path / "res" / "claims").glob("*.claim")) == []  # the dead run's claim is gone
    assert re.search(r"relu7 +relu7 +dm +failed", r.stdout), r.stdout  # the table shows it

    # a later invocation retries the crashed run (and only it)
    r = _stitch(tmp_path, donor_store, "layer=[relu6,relu7,relu8]")
    assert r.returncode == 0, r.stderr[-3000:]
    again = {rec["layer"]: rec for rec in load_records(tmp_path / "res", status=None)}
    assert all(v["status"] == "ok" for v in again.values()) and "native_crash" not in again["relu7"]
    assert again["relu6"]["pid"] == recs["relu6"]["pid"] and again["relu8"]["pid"] == recs["relu8"]["pid"]


def test_a_crash_outside_any_run_ends_with_one_line_and_exit_1(donor_store, tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import ctypes, os\n"
        "if os.environ.get('STITCH_RUN_MARKER'):\n"
        "    import stitch.study.assembly as a\n"
        "    a.Study.assemble = classmethod(lambda cls, s: ctypes.string_at(0))\n")
    r = _stitch(tmp_path, donor_store, "layer=relu8", env={"PYTHONPATH": str(inject)})
    assert r.returncode == 1
    assert "died from SIGSEGV outside any run" in r.stderr
    assert load_records(tmp_path / "res", status=None) == []
