"""A billing webhook receiver on loopback that fails about half the time (500s and dropped
connections) and checks everything a real receiver should."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from gateway.billing.webhook import CONTENT_TYPE, batch_id, verify_signature


@dataclass
class FlakyReceiver:
    secret: bytes
    failure_rate: float = 0.5
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    url: str = ""
    attempts: int = 0
    failures: int = 0
    bad_requests: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)  # event ids, in the order they were acked
    resent_after_ack: list[str] = field(default_factory=list)  # must stay empty
    authorizations: set[str | None] = field(default_factory=set)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.attempts += 1
        self.authorizations.add(request.headers.get("Authorization"))
        ids = [event["id"] for event in json.loads(body)]
        self._check(request, body, ids)
        self.resent_after_ack += [i for i in ids if i in set(self.acknowledged)]
        fate = self.rng.random()
        if fate < self.failure_rate / 2:
            self.failures += 1
            return web.Response(status=500, text="try again")
        if fate < self.failure_rate:
            self.failures += 1
            assert request.transport is not None
            request.transport.close()  # the connection drops before any answer
            return web.Response(status=204)
        self.acknowledged += ids
        return web.Response(status=204)

    def _check(self, request: web.Request, body: bytes, ids: list[str]) -> None:
        headers = request.headers
        if not verify_signature(self.secret, headers.get("webhook-signature", ""), body, now=time.time()):
            self.bad_requests.append(f"signature: {headers.get('webhook-signature')}")
        if headers.get("Content-Type") != CONTENT_TYPE:
            self.bad_requests.append(f"content type: {headers.get('Content-Type')}")
        if not ids or len(ids) != len(set(ids)):
            self.bad_requests.append(f"batch: {ids}")
        if headers.get("webhook-id") != batch_id([_Id(i) for i in ids]):  # type: ignore[list-item]
            self.bad_requests.append(f"webhook-id: {headers.get('webhook-id')}")


@dataclass(frozen=True)
class _Id:
    id: str


@asynccontextmanager
async def flaky_receiver(secret: bytes, failure_rate: float = 0.5) -> AsyncIterator[FlakyReceiver]:
    receiver = FlakyReceiver(secret, failure_rate)
    app = web.Application()
    app.router.add_post("/usage", receiver.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        receiver.url = f"http://127.0.0.1:{port}/usage"
        yield receiver
    finally:
        await runner.cleanup()
