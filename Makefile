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
TEACHER_ARGS ?=
HOST   ?= 127.0.0.1
PORT   ?= 5000
STORE  ?= sqlite:///$(CURDIR)/outputs/mlflow.db
# make server: its database (e.g. SERVER_STORE=postgresql://user@127.0.0.1:5432/mlflow); artifacts are served from here
SERVER_STORE ?= $(STORE)
SERVED_ARTIFACTS ?= $(CURDIR)/outputs/mlartifacts-served
TRAIN  := $(PY) -m shallowmimic.train

# make sweep: a grid of conf/sweep/ (GRID=objectives: labels vs mimic vs kd), with widths, ranks and seeds taken
# from the grid unless given here; JOBS>1 runs jobs in parallel
GRID   ?= width_rank
WIDTHS ?=
RANKS  ?=
SEEDS  ?=
JOBS   ?= 1
SWEEP   = $(if $(WIDTHS),model.width=$(WIDTHS)) $(if $(RANKS),model.rank=$(RANKS)) $(if $(SEEDS),seed=$(SEEDS)) \
          $(if $(filter-out 1,$(JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) threads=$(THREADS))
# torch threads per parallel job: the cores shared out, so jobs do not oversubscribe them
THREADS = $(shell n=$$(( $$(nproc) / $(JOBS) )); echo $$(( n > 0 ? n : 1 )))

# make test: pytest workers (pytest-xdist); the suite is mostly separate training processes, so 2 cores take 2
TEST_JOBS ?= 2

# make paper: the paper's study (conf/study/<SIZE>.yaml) on DATA, JOBS jobs at a time; TEACHER= your own net (a
# teacher.model: a .pt2/.pt/.ts file or a model URI) stands for the teachers the study would train
SIZE   ?= full
DATA   ?= mnist1d
TEACHER ?=

.PHONY: help install run teacher baseline mimic sweep paper report register bench bench-scale ui server test lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c 'import torch' 2>/dev/null || { [ -z "$(TORCH)" ] || $(PIP) install "$(TORCH)"; }
	$(PIP) install -e '.[dev]'
	mkdir -p outputs
	touch $@

install: $(VENV)/.installed  ## create .venv and install the package with its dev tools

run: install  ## the whole pipeline on MNIST-1D: teacher, then baseline + mimic as one sweep, then the table
	$(TRAIN) experiment=teacher $(TEACHER_ARGS)
	$(TRAIN) --multirun experiment=baseline,mimic $(ARGS)
	$(PY) -m shallowmimic.analysis.report

teacher: install  ## train the deep teacher (ARGS="trainer.max_epochs=..." to override)
	$(TRAIN) experiment=teacher $(ARGS) $(TEACHER_ARGS)

baseline: install  ## train the shallow net on the labels
	$(TRAIN) experiment=baseline $(ARGS)

mimic: install  ## train the shallow mimic on the newest teacher's logits
	$(TRAIN) experiment=mimic $(ARGS)

sweep: install  ## baseline + mimic over width x rank x seed (GRID=width_rank) under one MLflow parent, then the report
	$(TRAIN) --multirun sweep=$(GRID) $(SWEEP) $(ARGS)
	$(PY) -m shallowmimic.analysis.report

paper: install  ## the paper's study: Figures 1-3, bottleneck, controls, inference cost (SIZE=smoke DATA=... JOBS=2)
	$(PY) -m shallowmimic.analysis.study --size $(SIZE) --data $(DATA) --jobs $(JOBS) \
	  $(if $(TEACHER),--teacher '$(TEACHER)') $(ARGS)

report: install  ## print the table of the newest sweep (or pipeline) in the store
	$(PY) -m shallowmimic.analysis.report $(ARGS)

register: install  ## register the newest sweep's best net of each role (on validation) and its teacher, as @champion
	$(PY) -m shallowmimic.tracking.registry $(ARGS)

bench: install  ## throughput: plain loop vs our Lightning path vs the full train path, interleaved (ARGS="--extras")
	$(PY) -m shallowmimic.bench $(ARGS)

bench-scale: install  ## peak RSS at paper scale: 1M x 1845 float32 pool (7.4 GB), teacher, one mimic epoch
	$(PY) -m shallowmimic.bench --scale $(ARGS)

ui: install  ## the MLflow UI over the project's store on http://$(HOST):$(PORT)
	mkdir -p outputs
	@echo "open http://$(HOST):$(PORT)/#/experiments?workflowType=machine_learning (the model-training view)"
	$(VENV)/bin/mlflow ui --backend-store-uri $(STORE) --default-artifact-root $(CURDIR)/outputs/mlartifacts \
		--host $(HOST) --port $(PORT)

server: install  ## an MLflow tracking server on http://$(HOST):$(PORT) over SERVER_STORE, serving artifacts
	mkdir -p outputs
	$(VENV)/bin/mlflow server --backend-store-uri $(SERVER_STORE) --serve-artifacts \
		--artifacts-destination $(SERVED_ARTIFACTS) --host $(HOST) --port $(PORT)

test: install  ## the test suite (tiny data, CPU)
	$(PY) -m pytest -q -n $(TEST_JOBS) $(ARGS)

lint: install  ## ruff, and the import-linter contracts of pyproject.toml (the layers, no cycles)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/lint-imports

clean:  ## remove outputs (runs, store, caches) and the venv
	rm -rf outputs && mkdir -p outputs
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
