"""The column names of the runs table (:func:`stitch.sweep.collect.collect`) that reporting reads.

One home for each name: :mod:`stitch.sweep.collect` writes the columns it adds under these names, and
the figures and tables read them through these constants, never a string of their own. Each figure
declares the columns it reads (``register(..., reads=...)``), and the smoke tests check them against
the records a real study writes (``tests/test_figures.py``), so a field the record writer renames
fails there, by name. The LMC and TLM-history tables share the names of the columns they copy
(``layer``, ``relative_acc``, ``run``, ...).

A record's top-level fields keep their names; nested ones are flattened to dotted names
(``model1.tag``, ``method_config.rank``); metrics keep their own (``relative_acc``, ``ood/auroc``);
:func:`stitch.sweep.collect.aggregate` adds ``<column>.mean`` / ``.std`` per condition.
"""
from __future__ import annotations

# --- what a run is (every record)
RUN = "run"
STUDY = "study"
STATUS = "status"            # "ok" or "failed"
ERROR = "error"
LAYER = "layer"              # model 1's cut (the source)
TARGET_LAYER = "target_layer"  # model 2's cut
LAYER_INDEX = "layer_index"  # forward positions: the order of matrix rows and columns
TARGET_LAYER_INDEX = "target_layer_index"
METHOD = "method"            # tlm, dm, ... with the recipe's name in VARIANT
KIND = "kind"                # tlm | dm | identity | random
VARIANT = "variant"
SEED = "seed"
DATA = "data"
SELF_STITCH = "self_stitch"
MODEL1_TAG = "model1.tag"
MODEL2_TAG = "model2.tag"
MODEL1_NAME = "model1.name"
MODEL1_WIDTH = "model1.options.width"
MODEL1_VARIANT = "model1.options.variant"

# --- where its files are (added by collect)
RECORD_PATH = "record_path"
STITCH_PATH = "stitch_path"
N_HISTORY = "n_history"      # tracked TLM steps
CONDITION = "condition"      # the run's config without its replicate keys: what aggregate groups by

# --- the method's settings (method_config.<field of TLMSettings / DMSettings>)
TLM_INIT = "method_config.init"
TLM_EPOCHS = "method_config.epochs"
CKA_PENALTY = "method_config.cka_penalty"
L1 = "method_config.l1"
RANK = "method_config.rank"
ZERO_THRESHOLD = "method_config.zero_threshold"
DM_SOLVER = "method_config.solver"
DM_ALPHA = "method_config.alpha"
DM_SAMPLES = "method_config.samples"  # a DM fit's training images (None: the whole split)
SPARSITY = "fit.sparsity"

# --- its results (stitch.evaluation and stitch.ood metrics)
RELATIVE_ACC = "relative_acc"
STITCHED_ACC = "stitched_acc"
CROSS_ENTROPY = "cross_entropy"                # nats per sample
CROSS_ENTROPY_PAPER1 = "cross_entropy_paper1"  # paper 1's unit, H(p2, q) / C
OOD_AUROC = "ood/auroc"
OOD_SANITY_AUROC = "ood/sanity_auroc"
OOD_TRUSTED = "ood/detector_trusted"

# --- added by aggregate (one row per condition)
N_RUNS = "n_runs"
N_OK = "n_ok"
N_FAILED = "n_failed"

# what names a run in every figure: which networks, which cut, which method, where its record is
RUN_IDENTITY = (RUN, STUDY, STATUS, LAYER, TARGET_LAYER, LAYER_INDEX, METHOD, KIND, SEED, DATA, MODEL1_TAG,
                MODEL2_TAG, MODEL1_NAME, RECORD_PATH)


def mean(column: str) -> str:
    """The aggregate's mean over a condition's runs."""
    return f"{column}.mean"


def std(column: str) -> str:
    """The aggregate's standard deviation (ddof=1; NaN for one run)."""
    return f"{column}.std"


def identity(column: str) -> str:
    """The "no transformation" baseline of a metric (model 1's activations fed to model 2 as they are)."""
    return f"identity_{column}"


def similarity(index: str, raw: bool = False) -> str:
    """A similarity index between the stitched representation and model 2's (``raw``: A against B)."""
    return f"{'sim_raw' if raw else 'sim'}/{index}"
