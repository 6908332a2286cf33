"""Every generated page, by its path in the repository."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from tools.docs import manpage, performance, reference

ROOT = Path(__file__).resolve().parents[2]

GENERATORS: dict[str, Callable[[], str]] = {
    "docs/reference/flags.md": reference.flags_page,
    "docs/reference/metrics.md": reference.metrics_page,
    "docs/reference/reasons.md": reference.reasons_page,
    "docs/reference/exit-codes.md": reference.exit_codes_page,
    "docs/reference/commands.md": reference.commands_page,
    "docs/performance.md": lambda: performance.performance_page(
        performance.load(str(ROOT / performance.FIGURES))
    ),
    "docs/ingest.1": manpage.manpage,
}


def render() -> dict[str, str]:
    return {path: generate() for path, generate in GENERATORS.items()}


def stale(rendered: dict[str, str] | None = None) -> list[str]:
    """The pages whose committed text differs from what the generators write."""
    rendered = rendered if rendered is not None else render()
    out = []
    for path, text in rendered.items():
        file = ROOT / path
        if not file.exists() or file.read_text() != text:
            out.append(path)
    return out


def write(paths: Iterable[str], rendered: dict[str, str]) -> list[str]:
    written = []
    for path in paths:
        file = ROOT / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(rendered[path])
        written.append(path)
    return written
