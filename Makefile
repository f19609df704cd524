# Circuit-analysis notebooks. `make help` lists the targets and the variables they take.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

TASK ?= ioi
TASKS ?= numseq months days letters
MODEL ?=
DEVICE ?= auto
DTYPE ?= float32
N ?=
SEED ?=
TEMPLATES ?=
MODELS ?=
RAY_ADDRESS ?=
CPUS_PER_JOB ?= 1
GPUS_PER_JOB ?= 0
RERUN ?=
PYTEST_ARGS ?=

# Values are quoted so a path with spaces stays one argument (TASK="my tasks/x.yaml" works).
OPTIONS = --device "$(DEVICE)" --dtype "$(DTYPE)" $(if $(MODEL),--model "$(MODEL)") \
	$(if $(N),--n "$(N)") $(if $(SEED),--seed "$(SEED)") $(if $(TEMPLATES),--templates "$(TEMPLATES)")

.PHONY: help setup run run-all compare sweep html test check bench lab clean

help: ## list the targets and variables
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (make run TASK=ioi MODEL=demo N=16 ...):"
	@echo "  TASK=$(TASK)       a task name in params/ or a path to a task .yaml file; several: TASK=\"numseq months\""
	@echo "  TASKS=\"$(TASKS)\"  the tasks make compare compares (and make sweep runs)"
	@echo "  MODELS=\"...\"    the models make sweep runs every task on (hub names, local directories, demo)"
	@echo "  RAY_ADDRESS=... make sweep on an existing Ray cluster (host:port or auto); default: a local Ray"
	@echo "  CPUS_PER_JOB=$(CPUS_PER_JOB) GPUS_PER_JOB=$(GPUS_PER_JOB)  the Ray resources each sweep job asks for"
	@echo "  RERUN=1        make sweep runs pairs whose results are current too"
	@echo "  MODEL=...      override the task's model: a hub name (gpt2), a local directory, or demo"
	@echo "  DEVICE=$(DEVICE)    auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps"
	@echo "  DTYPE=$(DTYPE) float32, float16 or bfloat16"
	@echo "  N=...          override the number of prompts"
	@echo "  SEED=...       override the task's seed"
	@echo "  TEMPLATES=...  comma-separated subset of templates/ (default: all)"
	@echo "  PYTEST_ARGS=.. extra arguments for make test (e.g. -m 'not slow')"
	@echo "  VENV=$(VENV)     where the environment lives; PYTHON=$(PYTHON) creates it"

# The environment is created on first use and refreshed when requirements change. Install the torch
# build that suits your machine into $(VENV) first if you want one (CI pre-installs the CPU wheel).
$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -e .
	@touch $@

setup: $(VENV)/.installed ## create the environment (run and test do it for you)

run: setup ## execute every template on TASK (one or several) into notebooks/<task>/
	$(PY) -m helpers.run --task "$(TASK)" $(OPTIONS)

run-all: setup ## run every task in params/; a failing task does not stop the others
	$(PY) -m helpers.run --all $(OPTIONS)

compare: setup ## compare TASKS' heads into notebooks/compare/ (runs tasks without results first)
	$(PY) -m helpers.run --compare $(TASKS) $(OPTIONS)

sweep: setup ## run every TASKS x MODELS pair as a job on Ray, then compare them into notebooks/sweep/
	$(PY) -m helpers.run --sweep $(TASKS) --models $(MODELS) --cpus-per-job "$(CPUS_PER_JOB)" \
		--gpus-per-job "$(GPUS_PER_JOB)" $(if $(RAY_ADDRESS),--ray-address "$(RAY_ADDRESS)") $(if $(RERUN),--rerun) $(OPTIONS)

html: setup ## re-export TASK's notebooks as offline HTML pages (and its index), without re-running
	$(PY) -m helpers.run --html "$(TASK)" $(if $(MODEL),--model "$(MODEL)")

test: setup ## run the test suite, offline
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

check: setup ## lint helpers/ and tests/ with ruff
	$(VENV)/bin/ruff check helpers tests

bench: setup ## time the patching engine and the copy scores against straightforward versions, circuit discovery and a whole run against their budgets
	$(PY) tests/bench_patching.py
	$(PY) tests/bench_copy_scores.py
	$(PY) tests/bench_graph.py
	$(PY) tests/bench_suite.py

lab: setup ## open JupyterLab at TASK's executed notebooks (notebooks/<task>/, or <task>@<model>/ with MODEL=)
	$(PY) -m helpers.run --lab "$(TASK)" $(if $(MODEL),--model "$(MODEL)")

clean: ## remove caches and the demo model (not the environment, not notebooks/)
	rm -rf .cache .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
