# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Offline by design: no telemetry from Great Expectations, MLflow or Ray.
export GX_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := 1
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test lint format bench clean protos

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pipeline demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench
	$(BIN)/lint-imports
	$(BIN)/vulture

format: $(STAMP)
	$(BIN)/ruff format pipeline tests bench
	$(BIN)/ruff check --fix pipeline tests bench

bench: $(STAMP)
	$(BIN)/python bench/synth_speed.py

clean:
	rm -rf data mlruns/* bench/results

# The image the KubeRay manifests run (ray_cluster/kuberay/), tagged with the project's
# version from pyproject.toml. Needs a Docker engine (DOCKER=podman works too).
IMAGE   ?= federated-diabetes/pipeline
VERSION  = $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml | head -n 1)
DOCKER  ?= docker

.PHONY: image
image:
	$(DOCKER) build --tag $(IMAGE):$(VERSION) .

# The gRPC stubs of XGBoost's federated protocol, from pipeline/protocol/federated.proto
# (committed; regenerate after editing the .proto).
protos: $(STAMP)
	$(BIN)/python -m pip install --quiet 'grpcio-tools>=1.85.4'
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. pipeline/protocol/federated.proto
