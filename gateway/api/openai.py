"""OpenAI-compatible routes: thin; the proxy service does the work.

The POST routes read their bodies themselves (``parse_request``: parsed once, the raw bytes kept
for the engine), so their request models are added to the OpenAPI schema by ``gateway.api.docs``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from gateway.api.deps import KeyDep, StateDep
from gateway.api.docs import errors
from gateway.errors import ModelNotFoundError
from gateway.protocol import ModelCard, ModelList
from gateway.records import Api

router = APIRouter(prefix="/v1")

_MODEL_NOT_FOUND = {404: "Unknown model, or one this key may not use"}
_GENERATION_ERRORS = errors(400, 401, 404, 413, 429, 500, 502, 503, 504, described=_MODEL_NOT_FOUND)
_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/event-stream": {}}}
}


@router.post("/chat/completions", responses=_STREAM | _GENERATION_ERRORS)
async def chat_completions(request: Request, key: KeyDep, state: StateDep) -> Response:
    return await state.proxy.handle(Api.chat, key, request)


@router.post("/completions", responses=_STREAM | _GENERATION_ERRORS)
async def completions(request: Request, key: KeyDep, state: StateDep) -> Response:
    return await state.proxy.handle(Api.completions, key, request)


@router.post("/embeddings", responses=_GENERATION_ERRORS)
async def embeddings(request: Request, key: KeyDep, state: StateDep) -> Response:
    return await state.proxy.handle(Api.embeddings, key, request)


@router.post("/responses", responses=_STREAM | _GENERATION_ERRORS)
async def responses(request: Request, key: KeyDep, state: StateDep) -> Response:
    """OpenAI's Responses API, relayed to the engines; nothing is stored (README, "Responses API")."""
    return await state.proxy.handle(Api.responses, key, request)


@router.get("/models", responses=errors(401, 503))
async def list_models(key: KeyDep, state: StateDep) -> ModelList:
    """Only the models this key may use."""
    created = int(key.created_at)
    return ModelList(
        data=[ModelCard(id=name, created=created) for name in state.router.pools if key.allows(name)]
    )


@router.get("/models/{model:path}", responses=errors(401, 404, 503, described=_MODEL_NOT_FOUND))
async def retrieve_model(model: str, key: KeyDep, state: StateDep) -> ModelCard:
    """One model, if this key may use it (else 404, as for a model that does not exist)."""
    if model not in state.router.pools or not key.allows(model):
        raise ModelNotFoundError(model)
    return ModelCard(id=model, created=int(key.created_at))
