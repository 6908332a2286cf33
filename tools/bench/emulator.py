"""The emulator suite: tools/bench/harness.py's emulator run (`python -m tools.bench emulator --help`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tools.bench import harness


def run(argv: Sequence[str]) -> dict[str, Any]:
    return harness.run("emulator", argv)
