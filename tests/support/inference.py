"""Typed requests for tests, made the way the edge makes them: from a JSON body."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from gateway.inference import InferenceRequest, parse_request
from gateway.records import Api, ApiKey

KEY = ApiKey(
    id="key_test", tenant_id="ten_test", tenant_name="acme", key_hash="hash", prefix="gw_test", created_at=0.0
)


def typed_request(
    api: Api, body: Mapping[str, object], *, session_id: str | None = None, key: ApiKey = KEY
) -> InferenceRequest:
    """``body`` parsed by the edge; its ``model`` is "m" unless the body names one."""
    raw = orjson.dumps({"model": "m", **body})
    return parse_request(api, raw, key=key, request_id="req_test", session_id=session_id)
