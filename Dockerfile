# syntax=docker/dockerfile:1
# One image for every part: `extender serve` (default), `extender partition`, `extender sidecar`.
#
#   docker build -t extract-extender:dev .
#   docker run --rm -p 8888:8888 -p 8889:8889 -v "$PWD/config:/etc/extender:ro" extract-extender:dev
#
# Two stages: the build stage creates a virtualenv from the pinned pyproject.toml; the final stage
# copies only that virtualenv onto a fresh slim base, so pip, wheel caches and build tools never
# reach the running image. The dependencies are installed in their own layer, before the source is
# copied, so a code change does not re-download them.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/extender
ENV PATH=/opt/extender/bin:$PATH
WORKDIR /src
# The pinned runtime dependencies only (not the [dev] extra), read from pyproject.toml.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt \
    && pip install --only-binary=:all: -r requirements.txt
COPY README.md ./
COPY extender ./extender
RUN pip install --no-deps . \
    # Byte-compile now: the root filesystem is read-only at run time.
    && python -m compileall -q /opt/extender/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="extract-extender" \
      org.opencontainers.image.description="Metrics-aware Kubernetes scheduler extender, partition controller and deadline sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric UID/GID so that runAsNonRoot can verify it without resolving names.
RUN groupadd --system --gid 10001 extender \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin extender
COPY --from=build /opt/extender /opt/extender
ENV PATH=/opt/extender/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    # matplotlib (simulator plots) wants a writable cache; /tmp is an emptyDir in the manifests.
    MPLCONFIGDIR=/tmp/matplotlib \
    EXTENDER_CONFIG=/etc/extender/extender.yaml
USER 10001:10001
WORKDIR /tmp
# 8888: the scheduler's verbs; 8889: the Monitoring API, /metrics and health.
EXPOSE 8888 8889
ENTRYPOINT ["extender"]
CMD ["serve", "--config", "/etc/extender/extender.yaml", "--bind", "0.0.0.0:8888", \
     "--monitoring-bind", "0.0.0.0:8889", "--workers", "1"]
