# The API gateway's image: `python -m servelab.gateway` with only pyproject.toml's `gateway` extra
# installed, none of the kit's engines or notebook tooling (no torch, vllm, pandas, psutil).
#   docker build -t servelab-gateway:0.1.0 .      # the tag manifests/gateway/deployment.yaml runs
#   docker run --rm -p 8080:8080 -p 8081:8081 -v "$PWD/my-gateway.yaml:/etc/servelab-gateway/config/gateway.yaml:ro" servelab-gateway:0.1.0
# tests/live/test_gateway_standalone.py proves the same install in a fresh venv (CI has no Docker).
# No HEALTHCHECK: Kubernetes probes /health (liveness, port 8080) and /ready (readiness, admin port 8081) itself.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Numeric uid/gid 10001: the Deployment's runAsUser/runAsGroup, and runAsNonRoot can check a number.
RUN groupadd --system --gid 10001 servelab \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/servelab --shell /usr/sbin/nologin servelab

# .dockerignore lets only pyproject.toml, README.md, requirements/lock.txt and src/ in. A regular
# (non-editable) install: the copy in /build is not what runs (the installed package in site-packages is).
# The lock constrains the extra's transitive dependencies too, so the image runs the versions CI tested.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY requirements/lock.txt ./requirements/lock.txt
COPY src ./src
# DL3013 "pin versions in pip": the pins are in the extra and the lock, which hadolint cannot see through ".[gateway]".
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -c requirements/lock.txt ".[gateway]"

WORKDIR /home/servelab
USER 10001:10001

EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "servelab.gateway"]
# The config path is where manifests/gateway/deployment.yaml mounts its ConfigMap.
CMD ["--config", "/etc/servelab-gateway/config/gateway.yaml", "--host", "0.0.0.0", "--port", "8080"]
