# PayFlow gateway daemon image.
#
#   docker build -t payflow .
#   docker run --rm -p 8080:8080 \
#       -v "$PWD/payflow.toml:/etc/payflow/payflow.toml:ro" \
#       -e PAYFLOW_REDIS_URL=redis://redis-host:6379/0 payflow
#
# Inside a container, point PAYFLOW_REDIS_URL at a real Redis: it overrides the
# toml's `[redis] url = "embedded"` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# README.md is referenced by pyproject.toml (`readme = "README.md"`), so the build needs it.
COPY pyproject.toml README.md ./
COPY src/ ./src/
# the fast extra: uvloop, which the daemon runs on when it is installed
RUN pip install --no-cache-dir '.[fast]' \
    && rm -rf /app/build /app/src/*.egg-info

# Unprivileged runtime user; /etc/payflow is where the config file is mounted.
RUN groupadd --system --gid 10001 payflow \
    && useradd --system --uid 10001 --gid payflow --create-home --home-dir /home/payflow \
        --shell /usr/sbin/nologin payflow \
    && mkdir -p /etc/payflow
USER payflow
WORKDIR /home/payflow

EXPOSE 8080

# slim has no curl: probe /healthz with the standard library (urlopen raises on non-2xx).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PAYFLOW_HTTP_PORT', '8080') + '/healthz', timeout=4).close()"]

ENTRYPOINT ["payflow"]
CMD ["serve", "--config", "/etc/payflow/payflow.toml", "--host", "0.0.0.0", "--log-format", "json"]
