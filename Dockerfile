# syntax=docker/dockerfile:1
#
# rlm-service image: gRPC (h2c) on $PORT (8080), the HTTP/JSON face and progress
# page on $HTTP_PORT (8081), Prometheus /metrics on 9090.
# Build:  docker build -t rlm-service .
# Run:    docker run --rm -p 8080:8080 -p 8081:8081 -p 9090:9090 -e GEMINI_API_KEY rlm-service
#
# The base is pinned to a Python minor version and a Debian release so that
# rebuilds pick up security patches but never a different Python or a
# different bubblewrap major version.

# ---- builder: resolve and install the package into a self-contained venv ----
FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Metadata first: the dependency layer is reused while only code changes.
COPY pyproject.toml README.md* ./
COPY rlm_service ./rlm_service
RUN pip install --no-cache-dir .

# ---- runtime ---------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

# bubblewrap: the REPL sandbox runs each run's Python under `bwrap`.
# ca-certificates: TLS to the model APIs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap libseccomp2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid so Kubernetes/Cloud Run "runAsNonRoot" checks can verify it.
RUN groupadd --system --gid 10001 rlm \
    && useradd --system --uid 10001 --gid rlm --create-home --home-dir /home/rlm \
       --shell /usr/sbin/nologin rlm

# Same path as in the builder: the venv's interpreter symlinks stay valid.
COPY --from=builder /opt/venv /opt/venv

# The sandbox's "uid" layer (one throw-away host uid per REPL) needs the
# server to be root. This image runs as a non-root user instead, so each REPL
# gets "userns-uid" (a uid of its own inside its user namespace) and bubblewrap's
# user/PID namespaces keep it away from the server process. For the uid layer
# too, run as root (--user 0); see docs/operations.md and docs/security.md.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    HTTP_PORT=8081 \
    METRICS_PORT=9090

WORKDIR /home/rlm
USER 10001:10001

EXPOSE 8080 8081 9090

# Docker/Compose only; Cloud Run ignores HEALTHCHECK and uses the gRPC
# startup/liveness probes of deploy/cloudrun/service.yaml instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "rlm_service.healthcheck"]

ENTRYPOINT ["rlm-server"]
