"""The pool spec file through the loader: every shipped spec loads, and a bad one names the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import ConfigError
from gateway.config.pools import load_spec

ROOT = Path(__file__).resolve().parents[4]
POOL = "pools:\n  - served_name: m\n"


@pytest.mark.parametrize("name", ["local.yaml", "gpu-llama.yaml"])
def test_the_shipped_specs_load(name: str) -> None:
    assert load_spec(ROOT / "configs" / name).pools


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            f"{POOL}    queue: {{max_wait_s: -1}}\n",
            "pools[0].queue.max_wait_s: Input should be greater than 0 (got -1)",
        ),
        (
            f"{POOL}    queue: {{max_wiat_s: 1}}\n",
            "pools[0].queue.max_wiat_s: unknown key; expected one of max_per_tenant,",
        ),
        (
            f"{POOL}    qeue: {{}}\n",
            "pools[0].qeue: unknown key; expected one of served_name, model, device,",
        ),
        (f"{POOL}    replicas: many\n", "pools[0].replicas: Input should be a valid integer"),
        (f"{POOL}    device: tpu\n", "pools[0].device: Input should be 'cpu' or 'gpu' (got 'tpu')"),
        (
            f"{POOL}    discovery: {{kubernetes: {{service: s, port: [1]}}}}\n",
            "pools[0].discovery.kubernetes.port: Input should be a valid integer, or Input should be a valid"
            " string",
        ),
        (
            f"{POOL}    replicas: 1\n    placement: [{{}}, {{}}]\n",
            "pools[0]: placement has 2 entries but replicas is 1",
        ),
        (f"{POOL}    dedicated: {{acme: [5]}}\n", "pools[0]: dedicated[acme]: no engine 5 (the pool has 1)"),
        (f"{POOL}{POOL[6:]}", "served_name repeated: m"),
        ("pool: []\n", "pools: required key is missing; pool: unknown key; expected one of pools"),
        ("", "pools: required key is missing"),
    ],
)
def test_a_malformed_spec_fails_naming_the_file_and_the_key_path(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_spec(path)
    assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value)


def test_a_missing_spec_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent.yaml: no such file$"):
        load_spec(tmp_path / "absent.yaml")
