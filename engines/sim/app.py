"""The simulated engine's ASGI application: routes in, one engine call, one response out."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import orjson
from pydantic import ValidationError

from engines.sim.asgi import (
    JSON_HEADERS,
    METRICS_HEADERS,
    ClientWatch,
    EventStream,
    Receive,
    Scope,
    Send,
    read_body,
    send_response,
)
from engines.sim.config import SimConfig
from engines.sim.engine import SimEngine
from engines.sim.errors import BadRequest, SimError
from engines.sim.protocol import (
    GenerationRequest,
    decode_body,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_responses,
)
from engines.sim.wire import models_response

Handler = Callable[[Receive, Send], Awaitable[None]]


class SimApp:
    """An ASGI 3 app speaking vLLM's OpenAI HTTP API over one ``SimEngine``."""

    def __init__(self, engine: SimEngine, api_key: str | None = None) -> None:
        self.engine = engine
        # Like vLLM's --api-key: required on /v1/* (health, metrics and /sim/* stay open).
        self._authorization = f"Bearer {api_key}".encode() if api_key else None
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): self._health,
            ("GET", "/v1/models"): self._models,
            ("GET", "/metrics"): self._metrics,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/v1/responses"): self._responses,
            ("GET", "/sim/config"): self._get_config,
            ("POST", "/sim/config"): self._set_config,
            ("POST", "/sim/reset"): self._reset,
        }
        self._paths = {path for _, path in self._routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._dispatch(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._routes.get((scope["method"], scope["path"]))
        try:
            if self._authorization is not None and scope["path"].startswith("/v1"):
                sent = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(sent, self._authorization):
                    raise SimError("Unauthorized", status=401, type="authentication_error")
            if handler is None:
                status = 405 if scope["path"] in self._paths else 404
                message = f"{scope['method']} {scope['path']} is not served"
                raise SimError(message, status=status, type="invalid_request_error")
            await handler(receive, send)
        except SimError as error:
            await send_response(send, error.status, error.to_json(), JSON_HEADERS)

    async def _health(self, receive: Receive, send: Send) -> None:
        await send_response(send, 200)

    async def _models(self, receive: Receive, send: Send) -> None:
        config = self.engine.config
        body = models_response(config.models, config.max_model_len, self.engine.created)
        await send_response(send, 200, body, JSON_HEADERS)

    async def _metrics(self, receive: Receive, send: Send) -> None:
        await send_response(send, 200, self.engine.metrics.render(), METRICS_HEADERS)

    async def _chat(self, receive: Receive, send: Send) -> None:
        body = decode_body(await read_body(receive))
        await self._generate(parse_chat(body, self.engine.config.models), receive, send)

    async def _completions(self, receive: Receive, send: Send) -> None:
        body = decode_body(await read_body(receive))
        await self._generate(parse_completion(body, self.engine.config.models), receive, send)

    async def _responses(self, receive: Receive, send: Send) -> None:
        body = decode_body(await read_body(receive))
        await self._generate(parse_responses(body, self.engine.config.models), receive, send)

    async def _generate(self, request: GenerationRequest, receive: Receive, send: Send) -> None:
        engine = self.engine
        engine.check_failure()
        plan = engine.plan(request)
        watch = ClientWatch(receive)
        try:
            if request.stream:
                events = EventStream(send)
                await events.open()
                await engine.stream(request, plan, watch, events)
                await events.close()
                return
            body = await engine.complete(request, plan, watch)
            if body is not None:
                await send_response(send, 200, body, JSON_HEADERS)
        finally:
            watch.close()

    async def _embeddings(self, receive: Receive, send: Send) -> None:
        request = parse_embedding(decode_body(await read_body(receive)), self.engine.config.models)
        self.engine.check_failure()
        await send_response(send, 200, self.engine.embeddings(request), JSON_HEADERS)

    async def _get_config(self, receive: Receive, send: Send) -> None:
        await send_response(send, 200, self.engine.config.model_dump_json().encode(), JSON_HEADERS)

    async def _set_config(self, receive: Receive, send: Send) -> None:
        patch = decode_body(await read_body(receive))
        try:
            config = self.engine.reconfigure(patch)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise BadRequest(details) from exc
        await send_response(send, 200, config.model_dump_json().encode(), JSON_HEADERS)

    async def _reset(self, receive: Receive, send: Send) -> None:
        self.engine.reset()
        await send_response(send, 200, orjson.dumps({"status": "reset"}), JSON_HEADERS)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to open or close; acknowledge start-up and shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_sim_app(config: SimConfig | None = None, api_key: str | None = None) -> SimApp:
    """Build a simulated engine and its ASGI app (nothing is shared between apps)."""
    return SimApp(SimEngine(config or SimConfig()), api_key)
