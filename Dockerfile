# dt-collector container image: Debian's python3 with the collector in a venv.
#
#   docker build -t dt-collector .
#   docker run -d --name dt-collector \
#     -v "$PWD/config.yaml:/etc/dt-collector/config.yaml:ro" \
#     -e DT_API_TOKEN dt-collector
#
# Config: /etc/dt-collector/config.yaml (the image ships config/collector.example.yaml
# there; mount yours over it). Token: DT_API_TOKEN, or a secret file in /run/secrets/
# named by `token_file:` (a relative name is looked up in /run/secrets, as under systemd
# in $CREDENTIALS_DIRECTORY). Health: /healthz on 127.0.0.1:9464 (health.listen).
# See docs/ops.md.

# ---------------------------------------------------------------- builder
FROM debian:bookworm-slim AS builder

# Debian's CA store for pip (it then also trusts a proxy CA added to the base image).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

# Unpinned on purpose: a stable release only takes fixes, and exact pins would break
# the build at every Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/dt-collector

WORKDIR /src
COPY pyproject.toml README.md* ./
COPY collector ./collector
# The project's wheel, then its dependencies. Each has a binary wheel for CPython 3.11
# on amd64 and arm64, so not even the builder needs a compiler (--only-binary keeps it
# so). pip itself leaves the venv: nothing installs at run time.
RUN /opt/dt-collector/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/dt-collector/bin/pip install --only-binary=:all: /wheels/*.whl \
 && /opt/dt-collector/bin/dt-collector --version \
 && /opt/dt-collector/bin/pip uninstall --yes pip setuptools

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="dt-collector" \
      org.opencontainers.image.description="SNMP and MQTT metrics pushed to Dynatrace as custom devices" \
      org.opencontainers.image.licenses="Apache-2.0"

# python3 only: no compiler, no pip. ca-certificates for HTTPS to Dynatrace.
# (Unpinned, as above.)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 dt-collector \
 && useradd --uid 10001 --gid dt-collector --no-create-home \
        --home-dir /var/lib/dt-collector --shell /usr/sbin/nologin dt-collector \
 && install -d -o dt-collector -g dt-collector -m 0700 /var/lib/dt-collector

# The venv's python is a symlink to /usr/bin/python3: same base image, same Python.
COPY --from=builder /opt/dt-collector /opt/dt-collector
COPY config/collector.example.yaml /etc/dt-collector/config.yaml

ENV PATH=/opt/dt-collector/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DT_COLLECTOR_CONFIG=/etc/dt-collector/config.yaml \
    CREDENTIALS_DIRECTORY=/run/secrets \
    DT_COLLECTOR_HEALTHCHECK_URL=http://127.0.0.1:9464/healthz

# Numeric, so an orchestrator can check runAsNonRoot.
USER 10001:10001
WORKDIR /var/lib/dt-collector
VOLUME ["/etc/dt-collector"]

# The daemon flushes its buffer on SIGTERM (buffer.shutdown_timeout, 10s by default);
# give `docker stop` a -t above that.
STOPSIGNAL SIGTERM
# Same network namespace as the daemon, so its default 127.0.0.1:9464 is reachable.
# urllib raises on a 503, which makes the check fail.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['DT_COLLECTOR_HEALTHCHECK_URL'], timeout=4)"]

ENTRYPOINT ["dt-collector"]
CMD ["run"]
