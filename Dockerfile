# The bundleserve image: the operator, the router sidecar and the Python bundle runtime share it; `bundleserve` is
# the entrypoint and the sub-command picks the role (`operator`, `router ...`, `bundle serve ...`).
#   docker build -t ghcr.io/bundleserve/bundleserve:0.1.0 .
# (`make image` builds it without Docker or a registry: see docs/install.md.)
# Model images build FROM it: see docs/bundles.md ("Building a model image").
# The base is pinned to an exact Python patch release and Debian release; bump both deliberately.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Exactly the lock (requirements/image.txt: the dependencies plus the s3 extra, so BUNDLESERVE_RESULTS_URL=s3://...
# works in the router sidecar), every file checked against its hash, wheels only (no compiler needed). `make lock`
# refreshes it. The dependencies come first so that a change of the sources alone reuses their layer.
COPY requirements/image.txt requirements/build.txt ./requirements/
RUN python -m venv /opt/bundleserve \
    && /opt/bundleserve/bin/pip install --no-compile --require-hashes --only-binary=:all: -r requirements/image.txt \
    && python -m venv /opt/build \
    && /opt/build/bin/pip install --no-compile --require-hashes --only-binary=:all: -r requirements/build.txt
# The project itself, built with the locked build backend (no build isolation fetching a newer one) and installed
# without dependencies: they are all in the lock above. The build stage, its tools and pip's caches stay behind.
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/bundleserve/bin/pip install --no-compile --no-deps --no-index /tmp/dist/bundleserve-*.whl \
    && find /opt/bundleserve -name '__pycache__' -type d -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="bundleserve" \
      org.opencontainers.image.description="Serve model bundles on Kubernetes: operator, router and bundle runtime" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 bundleserve \
    && useradd --system --uid 10001 --gid bundleserve --home-dir /srv --no-create-home --shell /usr/sbin/nologin bundleserve
COPY --from=build /opt/bundleserve /opt/bundleserve
ENV PATH=/opt/bundleserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /srv
USER 10001:10001
# 8080: router, gateway and operator health; 5005: the bundle runtime (localhost only by default).
EXPOSE 8080 5005
ENTRYPOINT ["bundleserve"]
CMD ["--help"]
