# The nodeipam controller image: `docker build -t nodeipam:0.1.0 .`
# The Helm chart runs it as `nodeipam run ...` (the console script is the entrypoint).

# --- builder: build the wheel and install it with its dependencies into a virtualenv ---
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/nodeipam
WORKDIR /src
# .dockerignore keeps this to pyproject.toml, the controller package and the docs.
COPY . .
RUN /opt/nodeipam/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/nodeipam/bin/pip install /wheels/*.whl \
 && /opt/nodeipam/bin/nodeipam --help >/dev/null

# --- final: the same base, the virtualenv, a non-root user ---
FROM python:3.11-slim
LABEL org.opencontainers.image.title="nodeipam" \
      org.opencontainers.image.description="Node IPAM controller for Kubernetes: a disjoint pod CIDR for every Node" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
COPY --from=builder /opt/nodeipam /opt/nodeipam
# The root filesystem is read-only in the chart: no bytecode writes at run time (pip compiled it).
ENV PATH="/opt/nodeipam/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 9254
ENTRYPOINT ["nodeipam"]
CMD ["--help"]
