# The retraining bundle. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# make run EXECUTOR=celery (or local) switches the local stack's executor; unset keeps the current one.
STACK := $(if $(EXECUTOR),RETRAIN_EXECUTOR=$(EXECUTOR) )$(PY) deploy/stack.py
INSTALLED := $(VENV)/.installed

.DEFAULT_GOAL := help

## Show this help
.PHONY: help
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-z][a-z-]*:/{if(doc){split($$1,t,":"); printf "  make %-12s %s\n", t[1], doc}; doc=""}' $(MAKEFILE_LIST)

$(INSTALLED): requirements.txt requirements-local.txt requirements-dev.txt constraints.txt
	@deploy/bootstrap.sh $(PYTHON) $(VENV)
	@touch $@

## Create .venv and install the pinned requirements
.PHONY: venv
venv: $(INSTALLED)

## Run every shipped retraining pipeline once, end to end, on the local stack (EXECUTOR=celery: two Celery workers)
.PHONY: run
run: up
	@$(STACK) exec -- $(PY) -m include.retrain_airflow.cli run-all

## Start the local stack (PostgreSQL, S3 endpoint, Airflow) without running pipelines
.PHONY: up
up: $(INSTALLED)
	@$(STACK) up

## Stop the local stack (the S3 endpoint's objects live in memory and are lost)
.PHONY: down
down:
	@if [ -x $(PY) ]; then $(STACK) down; fi

## Show the health of every component (the VM service and/or the local stack)
.PHONY: status
status:
	@found=; \
	if [ -e "$${RETRAIN_ETC:-/etc/airflow-retrain}/airflow.env" ]; then found=1; $(PYTHON) deploy/install.py status; fi; \
	if [ -e "$${RETRAIN_STACK_DIR:-.stack}/airflow.env" ] && [ -x $(PY) ]; then found=1; $(STACK) status; fi; \
	if [ -z "$$found" ]; then echo "nothing deployed here and no local stack: make deploy or make up"; fi

## Install as a systemd service on this VM (run as root; idempotent, keeps secrets and data; ROLE=worker: a Celery worker VM)
.PHONY: deploy
deploy:
	@$(PYTHON) deploy/install.py deploy --role $(or $(ROLE),main)

## Remove the service; keeps the database unless DROP_DATABASE=1 (REMOVE_USER=1: the user too)
.PHONY: undeploy
undeploy:
	@$(PYTHON) deploy/install.py undeploy $(if $(DROP_DATABASE),--drop-database) $(if $(REMOVE_USER),--remove-user)

## List the current model of every series in the model store
.PHONY: models
models: $(INSTALLED)
	@$(STACK) exec -- $(PY) -m include.retrain_airflow.cli models

## Inspect or change the model registry: make registry ARGS="list" (show, promote, rollback, verify)
.PHONY: registry
registry: $(INSTALLED)
	@$(STACK) exec -- $(PY) -m include.retrain_airflow.registry_cli $(ARGS)

## Render airflow.cfg from airflow.cfg.template (creates the env file on first use)
.PHONY: config
config: $(INSTALLED)
	@$(STACK) config

## Run every test in random order on two workers (replay the last: ARGS=--randomly-seed=last); starts PostgreSQL, S3, Airflow; installs Chromium when missing
# Two workers, whole files each, a live stack each: the fault tests' waits overlap the rest of the suite.
.PHONY: test
test: $(INSTALLED)
	@tests/browser/ensure-chromium.sh
	@$(PY) -m pytest -n 2 --dist loadfile --durations=15 $(ARGS)

## The quick loop (under 2 minutes): all but the live-stack (marker e2e) and make deploy (marker deploy) tests
.PHONY: test-fast
test-fast: $(INSTALLED)
	@$(PY) -m pytest -q -m "not e2e and not deploy" $(ARGS)

## Lint with ruff, including the Airflow 3 migration rules (AIR3)
.PHONY: lint
lint: $(INSTALLED)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

## Measure Airflow's overhead, artifact sizes and memory; writes bench/results.json (ARGS="--only runs")
.PHONY: bench
bench: $(INSTALLED)
	@$(PY) benchmarks/bench.py $(ARGS)

## Load test: 20 pipelines x 8 series due at once on a stack of its own (ARGS="--pipelines 4 --series 4")
.PHONY: load
load: $(INSTALLED)
	@$(PY) benchmarks/load.py $(ARGS)

## Regenerate constraints.txt from the current virtualenv (then run make test)
.PHONY: constraints
constraints: $(INSTALLED)
	@{ echo "# Every package of a tested install (make test passed with exactly these); regenerate with"; \
	   echo "# 'make constraints' after changing requirements*.txt, then run make test. Pins must also"; \
	   echo "# install on Debian 12's Python 3.11.2 (make deploy uses it): soupsieve stays at 2.10 for that."; \
	   $(PY) -m pip freeze --exclude-editable | grep -v '^pip==' | sed 's/^soupsieve==.*/soupsieve==2.10/'; } > constraints.txt

## Stop the stack and delete the virtualenv, the local state and caches
.PHONY: clean
clean: down
	rm -rf $(VENV) .stack .stack-test .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
