# dfmod developer entry points. `make demo` and `make test` set up everything they need themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Everything the demo and tests need ships with the repository (YuNet weights as package data) or its dev extra
# (the astronaut portrait in scikit-image). Optional extras (SCRFD weights): DFMOD_SHARED_DIR, see tests/conftest.py.
PYTEST_ARGS ?=

.PHONY: help setup tools schemas engine images images-train demo test test-unit test-integration test-k8s lint stack-up stack-down stack-status bench bench-neardup soak clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	deploy/local/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	timeout 900 $(BIN)/pip install -q --upgrade pip
	timeout 1800 $(BIN)/pip install -q -e ".[train,dev,scrfd]"
	# insightface pulls opencv-python, whose cv2 would shadow contrib's (CascadeClassifier): contrib must win.
	timeout 600 $(BIN)/pip install -q --force-reinstall --no-deps \
		"opencv-contrib-python-headless==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opencv-contrib-python-headless"))')"
	touch $@

setup: $(VENV)/.installed  ## create .venv with the worker, training and dev dependencies

tools:  ## build pinned helm and kubeconform into .tools/bin (from the Go module proxy, cached)
	timeout 1200 deploy/tools.sh

schemas: setup  ## regenerate values.schema.json from WorkerSettings and the vendored CRD/K8s schemas
	PYTHONPATH=. $(BIN)/python deploy/helm/values_schema.py
	$(BIN)/python deploy/crds/generate.py

engine:  ## a container engine for the image tests: Docker if its daemon answers, else podman from apt (configured)
	timeout 1800 deploy/images.sh engine || echo "images: no container engine: the needs_container_engine tests will be deselected"

images:  ## build dfmod-worker with deploy/docker (Docker or podman; bases from Debian where no registry answers)
	timeout 3600 deploy/images.sh build worker

images-train:  ## opt-in: build dfmod-train too (torch from PyPI is the CUDA build: GBs, see deploy/docker/README.md)
	timeout 3600 deploy/images.sh build train

demo: setup  ## start the local stack, stream sample media through a worker, print verdicts, stop everything
	timeout 1200 $(BIN)/python deploy/local/demo.py

test: setup tools lint engine  ## lint, then every test: unit, chart validation, integration on real Kafka/Redis/Triton, the worker image
	timeout 3600 $(BIN)/pytest $(PYTEST_ARGS)

test-unit: setup  ## unit tests only (no servers)
	timeout 1200 $(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

test-integration: setup  ## integration tests only
	timeout 2400 $(BIN)/pytest -m integration $(PYTEST_ARGS)

test-k8s: setup tools  ## the chart's renderings, server-side dry run on a real kube-apiserver (built from the Go proxy, cached)
	timeout 3600 $(BIN)/pytest tests/deploy/test_chart_apiserver.py $(PYTEST_ARGS)

lint: setup  ## ruff, mypy and the worker's import layers (import-linter)
	$(BIN)/ruff check worker train tests deploy
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

stack-up: setup  ## start Kafka, Redis and Triton on 127.0.0.1 (idempotent)
	deploy/local/stack.sh up

stack-down:  ## stop what stack-up started
	deploy/local/stack.sh down

stack-status:
	deploy/local/stack.sh status

bench-neardup: setup  ## near-duplicates: PDQ/vPDQ recall and false matches per transform, hashing CPU per still/video (no stack)
	timeout 1800 nice $(BIN)/python deploy/local/neardup_bench.py $(BENCH_ARGS)

bench: setup  ## performance dashboard: CPU s per stage per media, worker vs bare model vs naive loop, cache, RSS, sizing (MODEL=ViT-B-32 for the ratios)
	timeout 5400 nice $(BIN)/python deploy/local/bench.py --model $(or $(MODEL),tiny) $(BENCH_ARGS)

soak: setup  ## mixed traffic with kill -9/restart cycles: events, verdicts, DLQ, lost, duplicates, latency, RSS
	timeout 3600 $(BIN)/python deploy/local/soak.py $(SOAK_ARGS)

clean: stack-down
	rm -rf .stack .demo
