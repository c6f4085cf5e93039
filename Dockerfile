# syntax=docker/dockerfile:1
# One image for every metermesh process; the command names the module to run (ENTRYPOINT is `python -m`):
#   services.ingest | services.ingest.writer | services.anomaly | services.forecast | services.billing
#   services.alerts | gateway | services.common.migrate | services <cli args> (the `metermesh` CLI)
# e.g.  docker run --rm ghcr.io/metermesh/metermesh:0.1.0 services.ingest
#
# Build from the repository root (the dashboard must already be built into gateway/static/, as the
# gateway's own instructions describe):
#   docker build -t ghcr.io/metermesh/metermesh:0.1.0 .
# The tag is the version in pyproject.toml; k8s/base/kustomization.yaml pins the same tag.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the project and its pinned dependencies --------------------------------
FROM ${PYTHON_IMAGE} AS build
# PyTorch's CPU-only wheel index. torch from PyPI drags in several GB of CUDA wheels that a CPU-only
# service never uses; the CPU build (2.13.0+cpu) satisfies the project's `torch==2.13.0` pin, so the
# project install below keeps it.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gen/ gen/
COPY services/ services/
COPY gateway/ gateway/
# A regular (not editable) install: the image holds no source tree, only the installed packages with
# their data files (migrations, tariffs, the dashboard).
RUN pip install . \
    && pip check \
    && python -c "import torch; assert torch.version.cuda is None, 'a CUDA build of torch slipped in'" \
    && python -c "import gateway, pathlib; p = pathlib.Path(gateway.__file__).parent / 'static' / 'index.html'; \
assert p.is_file(), f'{p} missing: build the dashboard first, and list gateway/static as package data'" \
    && python -m compileall -q /opt/venv/lib

# ---- runtime: the venv on a clean slim Python, no compilers, no pip cache, a non-root user -----------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="metermesh" \
      org.opencontainers.image.description="Smart electricity metering platform: one image for every service" \
      org.opencontainers.image.source="https://github.com/metermesh/metermesh" \
      org.opencontainers.image.licenses="Apache-2.0"
# Numeric uid/gid so Kubernetes can verify runAsNonRoot; /tmp is the only place written at run time
# (an emptyDir in Kubernetes: the root filesystem is mounted read-only), so HOME points there too.
RUN groupadd --system --gid 10001 metermesh \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin metermesh
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp
# An empty, root-owned working directory: `python -m` puts it first on sys.path.
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["python", "-m"]
CMD ["services", "--help"]
