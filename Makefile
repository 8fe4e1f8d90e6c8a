# The verbs people type. `make demo` and `make test` work on a fresh machine:
# each creates .venv and installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP = $(VENV)/.installed-$(1)
export PYTHONPATH := $(CURDIR)/operator:$(CURDIR)/trainer_image:$(CURDIR)/eval_image
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
export DS_ACCELERATOR ?= cpu
WORKDIR ?= polypythia-work

.PHONY: help demo test test-e2e test-faults lint format bench install-dev install-local prometheus chromium images clean generate

help:
	@echo "make demo    run the tiny sweep on this machine (creates .venv)"
	@echo "make test    lint + the test suite (creates .venv, installs Prometheus)"
	@echo "make test-e2e  the user stories end to end with real training (minutes each; make test leaves them out)"
	@echo "make test-faults  the long fault-injection cases make test leaves out (kills, a full disk)"
	@echo "make bench   benchmarks, JSON lines"
	@echo "make images  build the operator, trainer and eval images (podman or docker; docs/images.md)"
	@echo "make test-images  build the images (cached), run them as the pods do (IMAGE_BASE=standin: no registry)"
	@echo "make test-cluster  tests against a real control plane (builds it with Go once; docs/cluster-tests.md)"
	@echo "make cluster-up / cluster-down  start / stop that control plane (.cluster/kubeconfig)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch is pinned (2.13.0): an unpinned torch pulls a multi-GB CUDA build.
$(call STAMP,local): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[local]'
	touch $@

$(call STAMP,dev): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@ $(call STAMP,local)

install-local: $(call STAMP,local)
install-dev: $(call STAMP,dev)

# Prometheus server and promtool (Debian) for the alert-rule tests and the end-to-end test.
prometheus:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus (Debian package) for promtool and the e2e tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v promtool >/dev/null || { echo "promtool missing after install"; exit 1; }

# Headless Chromium (Debian) for the report's browser test.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package) for the report's browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@command -v chromium >/dev/null || { echo "chromium missing after install"; exit 1; }

demo: install-local
	$(PY) -m polypythia.cli run manifests/examples/sweep-tiny.yaml --workdir $(WORKDIR)

lint: install-dev
	$(VENV)/bin/ruff check operator trainer_image eval_image tests bench tools
	$(VENV)/bin/ruff format --check operator trainer_image eval_image tests bench tools

format: install-dev
	$(VENV)/bin/ruff format operator trainer_image eval_image tests bench tools
	$(VENV)/bin/ruff check --fix operator trainer_image eval_image tests bench tools

test: install-dev prometheus chromium lint
	POLYPYTHIA_REQUIRE_BROWSER=1 $(PY) -m pytest -q --durations=15 -m "not fault_suite and not e2e"

# The user stories end to end (the demo sweep, a sweep with evaluations and a failing run,
# Ctrl-C and resume, a branch, an init study, Prometheus alerts, a rewind): real training,
# minutes each, so apart from `make test`; CI runs both.
test-e2e: install-dev prometheus chromium
	POLYPYTHIA_REQUIRE_BROWSER=1 $(PY) -m pytest -q --durations=15 -m e2e

# The long fault-injection cases (trainer and driver killed at random points, a full disk):
# minutes each, so apart from `make test`; CI runs both.
test-faults: install-dev
	$(PY) -m pytest -q --durations=15 -m fault_suite tests/faults

bench: install-dev
	@mkdir -p bench-results
	@for script in bench/bench_*.py; do PYTHONPATH=$(PYTHONPATH):$(CURDIR)/tests $(PY) $$script || exit 1; done

-include mk/images.mk
-include mk/cluster.mk

clean:
	rm -rf $(VENV) $(WORKDIR) bench-results .pytest_cache

# Regenerate what is derived from the CRD, the chart and the metric catalogue.
generate: install-dev
	$(PY) tools/sync_chart_crd.py
	$(PY) tools/gen_sweep_reference.py
	$(PY) tools/render_kustomize_base.py
	$(PY) -m polypythia.monitoring.catalog --markdown > docs/metrics.md
