# The two commands a newcomer needs: `make run` (local mode on the examples) and `make test`.
# Both create the virtual environment on first use; nothing else is assumed on the machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXAMPLES ?= examples/echo/endpoint.yaml examples/iris/endpoint.yaml examples/slow-job/endpoint.yaml examples/token-streamer/endpoint.yaml

.PHONY: run test lint typecheck unit integration e2e crds bench clean cluster

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bundleserve run $(EXAMPLES)

lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest tests

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

crds: $(STAMP)
	$(BIN)/python -m bundleserve.api.crd > crds/endpoints.bundleserve.dev.yaml
	cp crds/endpoints.bundleserve.dev.yaml charts/bundleserve/files/crds/endpoints.bundleserve.dev.yaml

# A real Kubernetes control plane on loopback (built from the pinned Go modules in tests/cluster/ on first use), in the
# foreground until Ctrl-C; its admin kubeconfig is .cluster/kubeconfig.
cluster: $(STAMP)
	$(BIN)/python -m tests.support.cluster .cluster/kubeconfig

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/router.py
	$(BIN)/python bench/async_queue.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
