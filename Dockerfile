# syntax=docker/dockerfile:1
# ontap-job-poller: `docker build -t ontap-job-poller .`, then `docker run ontap-job-poller run`
# (configured by POLLER_* env; see docs/operations.md). Two stages: wheels are built in the first,
# the final image installs them and has no compiler, no build tools and no root user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY poller ./poller
COPY schemas ./schemas
# The project's wheel and the wheels of all its dependencies, so the final stage needs no network.
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ontap-job-poller" \
      org.opencontainers.image.description="NetApp ONTAP asynchronous jobs as CloudEvents on RabbitMQ" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POLLER_LOG_FORMAT=json
RUN groupadd --system --gid 10001 poller \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin poller
# Bind-mounted, not copied: the wheels never become a layer of the final image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/ontap_job_poller-*.whl
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 9102
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POLLER_HTTP_PORT', '9102'), timeout=2)"]
ENTRYPOINT ["ontap-job-poller"]
CMD ["run"]
