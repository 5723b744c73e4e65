"""A full run with every kind of key use: no secret ever reaches a log, a file or a response."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from gateway.config.pools import PoolSpec
from tests.e2e.conftest import start_gateway
from tests.support.processes import start_sim

MODEL = "sim-secrets"


def test_keys_and_admin_token_never_leak(tmp_path: Path) -> None:
    admin_token = secrets.token_urlsafe(32)
    sim, sim_url = start_sim(tmp_path, MODEL)
    proc, gateway = start_gateway(
        tmp_path,
        [PoolSpec(served_name=MODEL, endpoints=[sim_url])],
        {"GATEWAY_ADMIN_TOKEN": admin_token, "GATEWAY_LOG_LEVEL": "debug"},
    )
    admin = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30)
    created: list[str] = []
    responses: list[str] = []
    try:
        assert admin.post("/admin/tenants", json={"name": "leaky"}).status_code in (200, 201)
        first = admin.post("/admin/keys", json={"tenant": "leaky"}).json()
        created.append(first["secret"])
        rotated = admin.post(f"/admin/keys/{first['id']}/rotate", json={"grace_s": 60}).json()
        created.append(rotated["key"]["secret"])
        created.append(gateway.new_key("leaky-cli"))  # through the CLI

        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        for secret in [*created, created[0] + "x", created[1][:-1]]:
            for stream in (False, True):
                response = httpx.post(
                    f"{gateway.url}/v1/chat/completions",
                    json={**body, "stream": stream},
                    headers={"Authorization": f"Bearer {secret}"},
                    timeout=30,
                )
                responses.append(response.text)
        key_id = gateway.cli("keys", "list", "--tenant", "leaky-cli").split()[0]
        gateway.cli("keys", "revoke", key_id)
        responses.append(
            httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {created[2]}"}).text
        )
        responses.append(admin.get("/admin/keys").text)
        responses.append(
            httpx.get(f"{gateway.url}/admin/keys", headers={"Authorization": f"Bearer {created[0]}"}).text
        )
        responses.append(gateway.cli("keys", "list"))
    finally:
        admin.close()
        proc.stop()
        sim.stop()

    assert len(set(created)) == 3 and all(s.startswith("sk-gw-") for s in created)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # logs, the SQLite ledger and WAL, journal
    assert any(p.name.startswith("gateway-") and p.suffix == ".log" for p in files)
    assert any(p.name == "gateway.db" for p in files)  # the ledger (the journal is gone after a clean stop)
    for secret in [*created, admin_token]:
        needle = secret.encode()
        assert not [p for p in files if needle in p.read_bytes()], "a secret was written to disk"
        assert not [r for r in responses if secret in r], "a secret was sent back"
