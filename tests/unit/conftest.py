"""The unit tier's promise, held while each test runs: no sockets, no
processes. The fixture check at collection (tests/tiers.py) sees only the
fixtures a test requests; this sees what its code does."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest

from tests.tiers import TierViolation

_socket_init = socket.socket.__init__


@pytest.fixture(autouse=True)
def _no_sockets_no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_socket(
        self: socket.socket, family: int = -1, type: int = -1, proto: int = -1, fileno: Any = None
    ) -> None:
        # A socket made from a descriptor is the other half of a pair that
        # already exists: asyncio's event loops wake themselves that way.
        if fileno is None:
            raise TierViolation("a unit test opened a socket: it belongs in tests/integration/")
        _socket_init(self, family, type, proto, fileno)

    def refuse_process(self: subprocess.Popen[Any], *args: object, **kwargs: object) -> None:
        raise TierViolation(
            f"a unit test started a process {args[:1]}: it belongs in tests/system/"
        )

    monkeypatch.setattr(socket.socket, "__init__", refuse_socket)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse_process)
