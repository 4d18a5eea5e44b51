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
