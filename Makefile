# Model stitching: every command sets up its own virtualenv (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCALE ?= smoke

.PHONY: help setup demo test test-fast clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_.-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-24s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision first, in one resolve, so pip picks a matching pair
	$(PY) -m pip install --quiet "torch>=2.2,<=2.14.1" "torchvision>=0.17,<=0.29.1"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the package with its test extras

demo: $(STAMP)  ## train Tiny-10 donors on the embedded digits set and stitch every layer (TLM and DM)
	$(PY) stitch.py

test: $(STAMP)  ## run the test suite
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)  ## the test suite without the slow end-to-end runs
	$(PY) -m pytest -q -m "not slow"

clean:  ## remove results, logs and trained models (keeps .venv)
	rm -rf results outputs multirun figures models lightning_logs wandb

# ---------------------------------------------------------------------------------------------
# Paper figures (docs/sweeps.md). Each target runs its study, conf/experiment/<study>_$(SCALE).yaml,
# as one Hydra multirun (finished runs are skipped, so an interrupted target resumes), then draws
# it with sweep.py into $(FIGURES)/<target>/$(SCALE)/ (PNG, PDF, CSV and Parquet tables).
#   make fig-p1-2                    # smoke scale: digits, Tiny-10 / ResNet-20, minutes on a CPU
#   make fig-p1-2 SCALE=paper        # the published setting (CIFAR-10 etc.), for GPUs
#   make fig-p1-2 SCALE=released     # paper 1's released networks + real CIFAR-10 on a CPU (figs 2, 4, 6, 7, 8, LMC;
#                                    # needs ../shared/data, see docs/reproduction.md; skipped without it)
#   make fig-p2-2 SCALE=paper LAUNCHER=joblib ARGS="hydra.launcher.n_jobs=4"   # 4 GPUs, one job each
# ARGS: extra stitch.py overrides; SWEEP_ARGS: extra sweep.py overrides; LAUNCHER: a conf/hydra/launcher
# config (joblib | submitit_local | submitit_slurm). Smoke donors live in $(STORE)/smoke.
RESULTS ?= results
FIGURES ?= figures
STORE ?= models
LAUNCHER ?=
ARGS ?=
SWEEP_ARGS ?=
# SCALE=released: paper 1's released networks and real CIFAR-10 from the workplace's shared data
SHARED ?= ../shared/data
RELEASED_DIR ?= $(SHARED)/released-drfrankenstein
CIFAR10_JPEG ?= $(SHARED)/cifar10-jpeg
SVHN_TEST ?= $(SHARED)/svhn-test
CELEBA_10K ?= $(SHARED)/celeba-10k
FIG_STORE = $(if $(filter smoke released celeba,$(SCALE)),$(STORE)/$(SCALE),$(STORE))
SCALE_ARGS = $(if $(filter released,$(SCALE)),data.root=$(CIFAR10_JPEG),$(if $(filter celeba,$(SCALE)),data.root=$(CELEBA_10K),))
HAVE_RELEASED = $(filter 4,$(words $(wildcard $(RELEASED_DIR)/tiny10-cifar10 $(RELEASED_DIR)/resnet20-w1-cifar10 \
	$(CIFAR10_JPEG)/train.npz $(CIFAR10_JPEG)/test.npz)))
HAVE_CELEBA = $(wildcard $(CELEBA_10K)/celeba.npz)
SKIP = $(if $(filter released,$(SCALE)),$(if $(HAVE_RELEASED),,1),$(if $(filter celeba,$(SCALE)),$(if $(HAVE_CELEBA),,1),))
SKIP_MESSAGE = $(if $(filter celeba,$(SCALE)),$(CELEBA_SKIP),skipped: SCALE=released needs paper 1's released networks \
	in $(RELEASED_DIR) and CIFAR-10 (train.npz, test.npz) in $(CIFAR10_JPEG); set SHARED=<dir holding both> or \
	RELEASED_DIR / CIFAR10_JPEG)
CELEBA_SKIP = skipped: SCALE=celeba needs the packed CelebA faces $(CELEBA_10K)/celeba.npz; set SHARED=<dir holding \
	celeba-10k> or CELEBA_10K
# smoke LMC ends are short TLM runs: keep pairs below paper 1's 80 % relative-accuracy cut
LMC_ARGS = $(if $(filter smoke,$(SCALE)),lmc.min_relative_acc=0.3,)

# paper 2 at SCALE=released: both figures share one results directory (Fig. 2's intra-network Tiny-10 runs are
# Fig. 1's: same run ids, done once) and the real SVHN test digits are the detectors' sanity set
P2_RELEASED = $(and $(filter released,$(SCALE)),$(filter p2_%,$(1)))
study_results = $(RESULTS)/$(if $(P2_RELEASED),p2,$(1))_$(SCALE)
study_env = $(if $(P2_RELEASED),SVHN_ROOT=$(SVHN_TEST) )

# $(call figure,<study>,<sweep figure>,<target>[,<sweep.py defaults>[,<extra stitch.py run>[,<a step after
# the study: stitch.py overrides, one plain run (no -m, no launcher) before sweep.py>[,<a second extra run>]]]])
define figure_run
	$(if $(filter released,$(SCALE)),$(MAKE) --no-print-directory released-donors STORE=$(STORE))
	$(if $(filter celeba,$(SCALE)),$(MAKE) --no-print-directory celeba-donors STORE=$(STORE))
	$(study_env)$(PY) stitch.py -m +experiment=$(1)_$(SCALE) results_dir=$(study_results) store=$(FIG_STORE) \
		$(SCALE_ARGS) $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(ARGS)
	$(if $(5),$(study_env)$(PY) stitch.py -m +experiment=$(1)_$(SCALE) results_dir=$(study_results) store=$(FIG_STORE) \
		$(SCALE_ARGS) $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(5) $(ARGS))
	$(if $(7),$(study_env)$(PY) stitch.py -m +experiment=$(1)_$(SCALE) results_dir=$(study_results) store=$(FIG_STORE) \
		$(SCALE_ARGS) $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(7) $(ARGS))
	$(if $(6),$(study_env)$(PY) stitch.py +experiment=$(1)_$(SCALE) results_dir=$(study_results) store=$(FIG_STORE) \
		$(SCALE_ARGS) $(6) $(filter-out hydra.launcher.% hydra/launcher=%,$(ARGS)))
	$(PY) sweep.py inputs=[$(study_results)] figures=[$(2)] out=$(FIGURES)/$(3)/$(SCALE) \
		$(4) $(SWEEP_ARGS)
endef
# a scale without a config for this figure is an error (exit 2), missing shared data a skip (exit 0)
NO_CONFIG = $(if $(wildcard stitch/conf/experiment/$(1)_$(SCALE).yaml),,1)
figure = $(if $(call NO_CONFIG,$(1)),@echo "$(3): no SCALE=$(SCALE) config (stitch/conf/experiment/$(1)_$(SCALE).yaml); \
	SCALE=released covers fig-p1-2 fig-p1-4 fig-p1-6 fig-p1-7 fig-p1-8 fig-p1-lmc fig-p2-1 fig-p2-2 fig-p2-probing; \
	SCALE=celeba covers fig-p1-2" >&2; exit 2,$(if $(SKIP),@echo "$(3): $(SKIP_MESSAGE)",$(figure_run)))

released-donors: $(STAMP)  ## import paper 1's released networks (shared data) into $(STORE)/released, once
	@if [ -z "$(HAVE_RELEASED)" ]; then echo "released-donors: $(SKIP_MESSAGE)"; exit 0; fi; \
	$(PY) -m stitch.store --store $(STORE)/released import $(RELEASED_DIR)/tiny10-cifar10/in*/110000.pt \
		--preset drfrankenstein-tiny10 --data-root $(CIFAR10_JPEG) && \
	$(PY) -m stitch.store --store $(STORE)/released import $(RELEASED_DIR)/resnet20-w1-cifar10/in*/110000.pt \
		--preset drfrankenstein-resnet20 --data-root $(CIFAR10_JPEG)

# paper 1's Inception V1 on real CelebA faces (SCALE=celeba): two donors, 64 px, 6 epochs each on the CPU; trained
# once (train_models.py skips donors already in the store, and resumes an interrupted training)
CELEBA_DONOR_ARGS ?= epochs=6
celeba-donors: $(STAMP)  ## train paper 1's two Inception V1 donors on the real CelebA faces (shared data), once
	@if [ -z "$(HAVE_CELEBA)" ]; then echo "celeba-donors: $(CELEBA_SKIP)"; exit 0; fi; \
	$(PY) train_models.py -m data=celeba data.root=$(CELEBA_10K) data.image_size=64 model=inception_v1 seed=0,1 \
		store=$(STORE)/celeba logger=none $(CELEBA_DONOR_ARGS)

FIG_TARGETS := fig-p1-2 fig-p1-3 fig-p1-4 fig-p1-5 fig-p1-6 fig-p1-7 fig-p1-8 fig-p1-lmc \
	fig-p2-1 fig-p2-2 fig-p2-probing fig-p2-3 fig-p2-4
.PHONY: figures released-donors celeba-donors $(FIG_TARGETS)

figures: $(FIG_TARGETS)  ## every paper figure below at SCALE=smoke|paper (released: fig-p1-2/4/6/7/8/lmc, fig-p2-1/2)

# SCALE=released: Tiny-10 at bn1..bn8 (the experiment), then ResNet-20 at its block outputs (3 TLM epochs)
P1_FIG2_RESNET = $(if $(filter released,$(SCALE)),model@model1=resnet20 layer=all tlm.epochs=3,)
fig-p1-2: $(STAMP)  ## paper 1 Fig. 2: relative accuracy + cross-entropy per layer, TLM vs least squares
	$(call figure,p1_fig2,p1_fig2,fig-p1-2,,$(P1_FIG2_RESNET))

fig-p1-3: $(STAMP)  ## paper 1 Fig. 3: relative accuracy vs ResNet-20 width, per layer
	$(call figure,p1_fig3,p1_fig3,fig-p1-3)

fig-p1-4: $(STAMP)  ## paper 1 Fig. 4: CKA, R^2, cross-entropy over TLM steps (init least squares)
	$(call figure,p1_fig4,p1_fig4,fig-p1-4)

fig-p1-5: $(STAMP)  ## paper 1 Fig. 5: TLM with a CKA penalty (self-stitch, identity init)
	$(call figure,p1_fig5,p1_fig5,fig-p1-5)

fig-p1-6: $(STAMP)  ## paper 1 Fig. 6: histogram of relative accuracy by TLM initialisation
	$(call figure,p1_fig6,p1_fig6,fig-p1-6)

fig-p1-7: $(STAMP)  ## paper 1 Fig. 7: low rank, TLM bottleneck vs reduced-rank least squares
	$(call figure,p1_fig7,p1_fig7,fig-p1-7)

fig-p1-8: $(STAMP)  ## paper 1 Fig. 8: sparsity vs relative accuracy, L1 TLM vs lasso DM
	$(call figure,p1_fig8,p1_fig8,fig-p1-8)

fig-p1-lmc: $(STAMP)  ## paper 1 Sec. 8: linear mode connectivity of stitching layers (study, step=lmc, figure)
	$(call figure,p1_lmc,p1_lmc,fig-p1-lmc,,,step=lmc $(LMC_ARGS))

fig-p2-1: $(STAMP)  ## paper 2 Fig. 1: intra-network TLM relative accuracy + OOD AUROC matrices
	$(call figure,p2_fig1,p2_fig1,fig-p2-1)

# SCALE=released: Tiny-10 (the experiment), the exact full-data least squares beside paper 2's K = 100, then
# ResNet-20 at its 9 block outputs (intra and inter, TLM and DM)
P2_FIG2_LS = $(if $(filter released,$(SCALE)),method=dm dm=least_squares,)
P2_FIG2_RESNET = $(if $(filter released,$(SCALE)),model@model1=resnet20 layer=all target_layer=all,)
fig-p2-2: $(STAMP)  ## paper 2 Fig. 2: intra/inter-network matrices, TLM vs DM, + OOD AUROC
	$(call figure,p2_fig2,p2_fig2,fig-p2-2,,$(P2_FIG2_LS),,$(P2_FIG2_RESNET))

# a Fig. 2 study for one model pair (at SCALE=released the same runs as Fig. 2's intra-network half), then
# Ding et al.'s probing step on it, then its figure
fig-p2-probing: $(STAMP)  ## paper 2: specificity + sensitivity of TLM, DM, CKA, PWCCA, OPD (step=probing)
	$(call figure,p2_probing,p2_probing,fig-p2-probing,,,step=probing)

fig-p2-3: $(STAMP)  ## paper 2 Fig. 3: same-size ResNet-18 self-stitching, TLM vs DM
	$(call figure,p2_fig3,p2_fig3,fig-p2-3)

fig-p2-4: $(STAMP)  ## paper 2 Fig. 4: ViT-Ti self-stitching, TLM vs DM
	$(call figure,p2_fig4,p2_fig4,fig-p2-4)
