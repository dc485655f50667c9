# The nodeipam controller image: `docker build -t nodeipam:0.1.0 .`
# The Helm chart runs it as `nodeipam run ...` (the console script is the entrypoint).
#
# BASE is pinned by digest (python:3.11-slim, the multi-platform index) so that a build is
# reproducible and a changed base is a reviewed change. To move it:
#   docker buildx imagetools inspect python:3.11-slim   # prints "Digest: sha256:..."
# and replace the digest below. Both stages use the same base, so the virtualenv's interpreter
# path matches. `--build-arg BASE=...` builds on another base with the same layout.
ARG BASE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# --- builder: the runtime dependencies from hashed pins, then the project itself, into a virtualenv ---
FROM ${BASE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/nodeipam
WORKDIR /src
# .dockerignore keeps this to pyproject.toml, requirements.lock, the controller package and the docs.
COPY . .
# Every dependency is pinned with its hashes (requirements.lock): a changed or substituted file fails
# the build. The project goes in last, without dependencies, so nothing unpinned is installed.
RUN /opt/nodeipam/bin/pip install --require-hashes -r requirements.lock \
 && /opt/nodeipam/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/nodeipam/bin/pip install --no-deps /wheels/*.whl \
 && /opt/nodeipam/bin/pip check \
 && /opt/nodeipam/bin/nodeipam --help >/dev/null \
 && /opt/nodeipam/bin/python -m pip uninstall --yes pip setuptools \
 && ! /opt/nodeipam/bin/python -c "import pip" 2>/dev/null

# --- final: the same base without pip, the virtualenv, a non-root user ---
FROM ${BASE}
LABEL org.opencontainers.image.title="nodeipam" \
      org.opencontainers.image.description="Node IPAM controller for Kubernetes: a disjoint pod CIDR for every Node" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing installs packages at run time: take pip (and setuptools, wheel) out of the base interpreter too.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && rm -f /usr/local/bin/pip /usr/local/bin/pip3* \
 && ! python -c "import pip" 2>/dev/null \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
COPY --from=builder /opt/nodeipam /opt/nodeipam
# The root filesystem is read-only in the chart: no bytecode writes at run time (pip compiled it).
ENV PATH="/opt/nodeipam/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# https: /metrics (a bearer token allowed to get it), /healthz, /livez, /readyz (anonymous).
EXPOSE 9254
ENTRYPOINT ["nodeipam"]
CMD ["--help"]
