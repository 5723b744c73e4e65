"""OpenAI-compatible routes: thin; the proxy service does the work."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.api.deps import KeyDep, StateDep
from gateway.protocol import ModelCard, ModelList
from gateway.records import Api

router = APIRouter(prefix="/v1")


@router.post("/chat/completions")
async def chat_completions(request: Request, key: KeyDep, state: StateDep) -> Response:
    return await state.proxy.handle(Api.chat, key, request)


@router.post("/completions")
async def completions(request: Request, key: KeyDep, state: StateDep) -> Response:
    return await state.proxy.handle(Api.completions, key, request)


@router.post("/embeddings")
async def embeddings(request: Request, key: KeyDep, state: StateDep) -> Response:
    return await state.proxy.handle(Api.embeddings, key, request)


@router.get("/models")
async def list_models(key: KeyDep, state: StateDep) -> ModelList:
    """Only the models this key may use."""
    created = int(key.created_at)
    return ModelList(
        data=[ModelCard(id=name, created=created) for name in state.router.pools if key.allows(name)]
    )
