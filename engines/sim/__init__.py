"""A simulated vLLM engine speaking vLLM's OpenAI HTTP API, for fast tests and benchmarks.

``create_sim_app(SimConfig(...))`` builds an ASGI app (use it in-process over
``httpx.ASGITransport``); ``python -m engines.sim --port P --model NAME`` serves one with uvicorn.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``POST /v1/embeddings``, ``GET /metrics`` and the control endpoints
``GET|POST /sim/config`` (a JSON patch of the pacing and failure fields) and ``POST /sim/reset``.

Token accounting is exact and deterministic:

* prompt tokens: chat = 3 per message + the whitespace-separated words of all message contents;
  completions and embeddings = the words of the prompt, or the length of a token-id list;
* completion tokens = ``min(limit, output_tokens)`` where ``limit`` is ``max_completion_tokens``,
  else ``max_tokens`` (completions: 16 when absent, as in vLLM), clamped to the context left
  (``max_model_len - prompt_tokens``); finish reason ``length`` when the limit was reached, else
  ``stop``;
* generated token ``i`` is ``tokens.VOCABULARY[i % 16]`` (" lorem", " ipsum", ...);
* cached tokens (``--enable-prompt-tokens-details``, as in vLLM): the prompt tokens in the leading
  whole blocks (``--block-size``, 16; vLLM's CPU backend uses 128) of a prefix the engine has seen
  before, never counting the last prompt token; reported as ``prompt_tokens_details.cached_tokens``
  in a whole body's usage and in a stream's final usage chunk (never in running usage).
"""

from engines.sim.app import SimApp, create_sim_app
from engines.sim.config import SimConfig

__all__ = ["SimApp", "SimConfig", "create_sim_app"]
