"""One stitching study: validated settings -> one assembly -> runs -> records.

* :mod:`.assembly` -- :class:`Study`: device, precision, data, donors (one network when
  model 1 is model 2), activation cache and the layer pairs, built once from
  :class:`~stitch.settings.StudySettings`; the runner, the LMC step and ``bench/`` use it.
* :mod:`.records` -- a run's identity, where its record and stitching layer live, what counts
  as finished.
* :mod:`.runner` -- :func:`run_study`: every (layer pair, method) fitted, evaluated, recorded.
* :mod:`.lmc` -- :func:`run_lmc` (``step=lmc``): linear mode connectivity of the saved stitching
  layers of finished runs, one record per pair of runs in ``<results_dir>/lmc/``.
* :mod:`.probing` -- :func:`run_probing` (``step=probing``): Ding et al.'s specificity and sensitivity
  tests of the finished study's indices, one record per model pair in ``<results_dir>/probing/``.

Method fitting lives with the methods (``stitch/matching/fitting.py``).
"""
from .assembly import Study
from .layer_checks import layer_pairs
from .lmc import format_lmc_table, run_lmc
from .records import format_table, run_identity
from .runner import run_study

__all__ = ["Study", "format_lmc_table", "format_table", "layer_pairs", "run_identity", "run_lmc",
           "run_study"]
