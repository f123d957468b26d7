# syntax=docker/dockerfile:1
# ontap-job-poller: `docker build -t ontap-job-poller .`, then `docker run ontap-job-poller run`
# (configured by POLLER_* env; see docs/operations.md). Two stages: wheels are built in the first,
# the final image installs them and has no compiler, no build tools and no root user.
#
# Offline, from a directory of wheels made beforehand (`pip wheel --wheel-dir DIR . hatchling`):
#   docker build --build-context wheelhouse=DIR --build-arg PIP_NO_INDEX=1 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Empty unless replaced by `--build-context wheelhouse=DIR`.
FROM scratch AS wheelhouse

FROM ${PYTHON_IMAGE} AS build
# pip reads both from the environment: 1 installs from the wheelhouse alone, never from an index.
ARG PIP_NO_INDEX=0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_FIND_LINKS=/wheelhouse
WORKDIR /src
COPY pyproject.toml README.md ./
COPY poller ./poller
COPY schemas ./schemas
# The project's wheel and the wheels of all its dependencies, so the final stage needs no network.
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    python3 -m pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ontap-job-poller" \
      org.opencontainers.image.description="NetApp ONTAP asynchronous jobs as CloudEvents on RabbitMQ" \
      org.opencontainers.image.licenses="Apache-2.0"
# A virtual environment: it works on any Python base image, including a distribution's python3,
# whose system site-packages pip refuses to install into (PEP 668).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POLLER_LOG_FORMAT=json \
    PATH=/opt/ontap-job-poller/bin:$PATH
RUN groupadd --system --gid 10001 poller \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin poller
# Bind-mounted, not copied: the wheels never become a layer of the final image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/ontap-job-poller \
    && /opt/ontap-job-poller/bin/pip install --no-index --find-links=/wheels /wheels/ontap_job_poller-*.whl
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 9102
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POLLER_HTTP_PORT', '9102'), timeout=2)"]
ENTRYPOINT ["ontap-job-poller"]
CMD ["run"]
