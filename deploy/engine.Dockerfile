# syntax=docker/dockerfile:1.7
# Engine image: the official vLLM OpenAI server, pinned to the vLLM version the CPU extra
# (pyproject.toml) is tested with. Build: `docker build -f deploy/engine.Dockerfile -t model-engine:vllm-0.32.0 deploy`
# For a reproducible build pin the digest too: FROM vllm/vllm-openai:v0.32.0@sha256:<digest>.
FROM vllm/vllm-openai:v0.32.0
# Weights and caches go to the /models volume (deploy/kubernetes/engines/*.yaml), written by a
# non-root user; HF_HOME there lets a restarted pod reuse what it downloaded.
ENV HF_HOME=/models/hf VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
RUN useradd --create-home --uid 1000 --user-group vllm || true
USER 1000:1000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# The official image's ENTRYPOINT is the OpenAI server (`vllm serve`); arguments come from the pod.
