# The spegel node image (docs/install.md):
#   docker build -t REGISTRY/spegel:0.1.0 .
# Needs BuildKit (Docker's default builder since 23.0) or Buildah, for RUN --mount.
# Stage 1 builds the wheels of spegel and of everything it depends on; stage 2
# installs them from that directory alone (no index, no compiler, no build
# tools), so the final image holds the Python runtime, the installed packages
# and nothing used to make them.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY spegel_core ./spegel_core
COPY plugins ./plugins
# Every dependency has a binary wheel for CPython 3.11 on Linux (x86_64 and
# aarch64); pure-Python sdists are built by setuptools, without a compiler.
RUN pip wheel --wheel-dir /wheels . \
 && ls /wheels/spegel-*.whl

FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted for this one step, so they leave no layer behind.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/spegel-*.whl \
 && spegel --version \
 && groupadd --system --gid 65532 spegel \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin spegel
# Bytecode was compiled at install time; nothing writes to the (read-only) root.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root by default. containerd's socket is root:root 0660: the Kubernetes
# DaemonSet adds the root group (supplementalGroups: [0]) for the registry
# container, and runs only the `spegel configuration` / `spegel cleanup` init
# containers as uid 0, because they write the host's root-owned certs.d.
USER 65532:65532
# 5000 mirror (HTTP), 5001/udp DHT, 9090 metrics.
EXPOSE 5000 5001/udp 9090
ENTRYPOINT ["spegel"]
CMD ["--help"]
