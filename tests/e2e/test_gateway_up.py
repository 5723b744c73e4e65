"""The README's first command, as a new user runs it: ``gateway up`` on an empty data directory
builds the tiny model, starts a real vLLM CPU engine and the gateway, and prints a key with a
``curl`` and an ``openai`` snippet that work when pasted verbatim. Ctrl-C stops it all."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.support.processes import REPO, Process, free_port

READY_TIMEOUT_S = 600  # model build, engine load (about a minute), gateway start


def gateway_script() -> str:
    """The ``gateway`` console script of this environment (what the README runs)."""
    script = Path(sys.executable).parent / "gateway"
    assert script.exists(), f"the package's console script is missing: {script}"
    return str(script)


def wait_for_banner(proc: Process) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        text = proc.log_path.read_text(errors="replace")
        if "Press Ctrl-C" in text:
            return text
        if proc.popen.poll() is not None:
            raise AssertionError(f"gateway up exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        time.sleep(0.5)
    raise TimeoutError(f"no banner after {READY_TIMEOUT_S} s:\n{proc.log_tail()}")


def snippets(banner: str) -> tuple[str, str, str]:
    """The key, the curl command and the python command, as printed."""
    key = re.search(r"Demo tenant key \([^)]*\): (\S+)", banner)
    assert key, banner
    block = banner[key.end() : banner.index("Press Ctrl-C")]
    commands, note = [c.strip() for c in block.strip().split("\n\n")], None
    if commands and commands[-1].startswith("Other commands"):
        note = commands.pop()  # where the CLI finds the data: said after the snippets
    assert note is not None and len(commands) == 2 and commands[0].startswith("curl "), commands
    return key.group(1), commands[0], commands[1]


def surfaces_of_the_demo(port: int, key: str) -> None:
    """``models.retrieve``, ``responses.create`` (whole and streamed) and a tool call, through the
    openai SDK against ``gateway up``'s demo model."""
    sdk = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    model = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())["pools"][0]["served_name"]
    assert sdk.models.retrieve(model).id == model
    whole = sdk.responses.create(model=model, input="Hello!", max_output_tokens=8)
    assert whole.usage is not None and whole.usage.output_tokens > 0
    events = list(sdk.responses.create(model=model, input="Hello!", max_output_tokens=8, stream=True))
    assert events and events[-1].type in ("response.completed", "response.incomplete")
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    chat = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[weather],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=32,
    )
    calls = chat.choices[0].message.tool_calls or []
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]


def own_usage(port: int, key: str, expected: int) -> dict[str, object]:
    """Today's usage totals of the key's tenant, once the ledger writer has flushed ``expected``
    requests (or 10 s have passed: then the caller's assertion says what was missing)."""
    today = datetime.now(UTC).date().isoformat()
    url = f"http://127.0.0.1:{port}/v1/usage?from={today}&to={today}"
    deadline = time.monotonic() + 10
    while True:
        reply = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert reply.status_code == 200, reply.text
        total: dict[str, object] = reply.json()["total"]
        if total["requests"] == expected or time.monotonic() > deadline:
            return total
        time.sleep(0.2)


def test_gateway_up_serves_the_printed_snippets_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    # configs/local.yaml as shipped, but on free ports so it never meets another run.
    spec = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    engine_port = free_port()
    spec["pools"][0]["base_port"] = engine_port
    config = tmp_path / "local.yaml"
    config.write_text(yaml.safe_dump(spec))
    port = free_port()
    env = {
        "GATEWAY_CONFIG_PATH": str(config),
        "GATEWAY_PORT": str(port),
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'gateway.db'}",
        "XDG_STATE_HOME": str(tmp_path / "state"),  # where `gateway up` records its data directory
    }
    proc = Process([gateway_script(), "up"], tmp_path / "up.log", env)
    try:
        banner = wait_for_banner(proc)
        key, curl, python = snippets(banner)
        assert key.startswith("sk-") and f"127.0.0.1:{port}" in curl
        assert "GATEWAY_ADMIN_TOKEN" in banner and str(tmp_path / "data") in banner

        reply = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120, check=True)
        answer = json.loads(reply.stdout)
        assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] > 0
        said = subprocess.run(["bash", "-c", python], capture_output=True, text=True, timeout=120)
        assert said.returncode == 0 and said.stdout.strip(), said.stderr[-2000:]

        # The surfaces a newcomer's SDK calls next, on the same demo: three more metered requests.
        surfaces_of_the_demo(port, key)

        # Every request is the demo tenant's usage, readable with its own key.
        assert own_usage(port, key, expected=5)["requests"] == 5
    finally:
        proc.signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to the whole group
        code = proc.popen.wait(60)
        proc.stop()
    assert code == 0, proc.log_tail()
    with pytest.raises(httpx.ConnectError):  # the engine went with it
        httpx.get(f"http://127.0.0.1:{engine_port}/health", timeout=2)
