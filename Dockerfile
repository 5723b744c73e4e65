# syntax=docker/dockerfile:1.7
# Gateway image: `docker build -t model-gateway:0.1.0 .` The engines run on the official vLLM
# image (deploy/engine.Dockerfile); Kubernetes manifests are in deploy/kubernetes.
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY deploy/constraints.txt ./constraints.txt
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Every runtime dependency at the version in deploy/constraints.txt (reproducible builds).
RUN pip install --prefix=/install --constraint constraints.txt .

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 10001 --user-group gateway
COPY --from=build /install /usr/local
COPY configs /app/configs
WORKDIR /app
RUN mkdir -p /app/data && chown 10001:10001 /app/data
USER 10001:10001
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8000 GATEWAY_DATA_DIR=/app/data PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health?scope=gateway', timeout=2)"]
CMD ["gateway", "serve"]
