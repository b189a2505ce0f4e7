# The two commands a newcomer needs: `make run` (local mode on the examples) and `make test`.
# Both create the virtual environment on first use; nothing else is assumed on the machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXAMPLES ?= examples/echo/endpoint.yaml examples/iris/endpoint.yaml examples/slow-job/endpoint.yaml examples/token-streamer/endpoint.yaml

.PHONY: run test lint typecheck unit integration e2e fuzz crds bench clean mutation

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
	$(BIN)/lint-imports

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

# Bounded, derandomized fuzzing of the fast edge's parser and the JSON edge (also part of `make test`).
fuzz: $(STAMP)
	$(BIN)/pytest tests/fuzz

crds: $(STAMP)
	$(BIN)/python -m bundleserve.api.crd > crds/endpoints.bundleserve.dev.yaml
	cp crds/endpoints.bundleserve.dev.yaml charts/bundleserve/files/crds/endpoints.bundleserve.dev.yaml

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/router.py
	$(BIN)/python bench/async_queue.py

# Mutation testing of the modules listed in pyproject's [tool.mutmut] (minutes; not part of `make test`).
# The score is printed and written to .mutation/score.json; docs/testing.md records the last one.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[mutation]'
	$(BIN)/python tests/mutation/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .mutation
