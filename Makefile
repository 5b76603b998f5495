# shallowmimic runbook. `make run` and `make test` set everything up on a fresh machine.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# CPU build of torch: on this kind of machine it is on local disk; set TORCH= to let pip choose (e.g. CUDA).
TORCH  ?= torch==2.13.0
ARGS   ?=
HOST   ?= 127.0.0.1
PORT   ?= 5000
STORE  ?= sqlite:///$(CURDIR)/outputs/mlflow.db
TRAIN  := $(PY) -m shallowmimic.train

.PHONY: help install run teacher baseline mimic report ui test lint clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c 'import torch' 2>/dev/null || { [ -z "$(TORCH)" ] || $(PIP) install "$(TORCH)"; }
	$(PIP) install -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv and install the package with its dev tools

run: install  ## the whole pipeline on MNIST-1D: teacher, baseline, mimic, then the table
	$(TRAIN) --multirun experiment=teacher,baseline,mimic $(ARGS)
	$(PY) -m shallowmimic.report

teacher: install  ## train the deep teacher (ARGS="trainer.max_epochs=..." to override)
	$(TRAIN) experiment=teacher $(ARGS)

baseline: install  ## train the shallow net on the labels
	$(TRAIN) experiment=baseline $(ARGS)

mimic: install  ## train the shallow mimic on the newest teacher's logits
	$(TRAIN) experiment=mimic $(ARGS)

report: install  ## print the table of the newest sweep (or pipeline) in the store
	$(PY) -m shallowmimic.report $(ARGS)

ui: install  ## the MLflow UI over the project's store on http://$(HOST):$(PORT)
	mkdir -p outputs
	$(VENV)/bin/mlflow ui --backend-store-uri $(STORE) --default-artifact-root $(CURDIR)/outputs/mlartifacts \
		--host $(HOST) --port $(PORT)

test: install  ## the test suite (tiny data, CPU)
	$(PY) -m pytest -q $(ARGS)

lint: install  ## ruff
	$(VENV)/bin/ruff check src tests

clean:  ## remove outputs (runs, store, caches) and the venv
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
