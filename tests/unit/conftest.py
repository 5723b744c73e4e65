"""The unit tier: pure logic. A test here that opens a network connection or starts a process
fails at once: it belongs in tests/api (real services, the simulated engine) or tests/e2e."""

from __future__ import annotations

import socket
import subprocess
from typing import NoReturn

import pytest


def _refuse(*_: object, **__: object) -> NoReturn:
    raise RuntimeError("unit tests open no network connection and start no process: move it to tests/api")


@pytest.fixture(autouse=True)
def _no_network_and_no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, _refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
