# The two commands a newcomer needs: `make run` (local mode on the examples) and `make test`.
# Both create the virtual environment on first use; nothing else is assumed on the machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXAMPLES ?= examples/echo/endpoint.yaml examples/iris/endpoint.yaml examples/slow-job/endpoint.yaml examples/token-streamer/endpoint.yaml

.PHONY: run test lint typecheck unit integration e2e crds bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# `make run` needs only the package and the examples' extra (scikit-learn for iris), not the test tools.
RUN_STAMP := $(VENV)/.installed-run
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[examples]'
	touch $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/bundleserve run $(EXAMPLES)

lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck browser
	$(BIN)/pytest tests

# headless Chromium for the /docs page test (tests/integration/test_gateway_docs_browser.py)
browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

crds: $(STAMP)
	$(BIN)/python -m bundleserve.api.crd > crds/endpoints.bundleserve.dev.yaml
	cp crds/endpoints.bundleserve.dev.yaml charts/bundleserve/files/crds/endpoints.bundleserve.dev.yaml

bench: $(STAMP)
	command -v nginx >/dev/null && command -v wrk >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq nginx wrk; }
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/router.py
	$(BIN)/python bench/async_queue.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
