"""The standin suite: tools/bench/harness.py's standin run (`python -m tools.bench standin --help`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tools.bench import harness


def run(argv: Sequence[str]) -> dict[str, Any]:
    return harness.run("standin", argv)
