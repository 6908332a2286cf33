"""docs/performance.md from the bench's figures file (docs/bench.json, as
``python -m tools.bench ... --json FILE`` writes it: tools/bench/suites.py):
a table per suite and the command that reproduces it. Suites differ in the
shape of their figures; each shape has one rendering here (scalars: the
run's parameters; a list of rows: a table; a mapping of mappings: a table
of its rows; a mapping of numbers: a two-column table)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from tools.bench.suites import SUITES
from tools.docs.reference import GENERATED, capitalized, cell, table

FIGURES = "docs/bench.json"


# The columns a suite's rows show, where the figures hold more (the rest
# stays in the figures file): by suite.
# The harness's phases: the load, what arrived, what it cost.
_PHASE_COLUMNS = (
    "config",
    "offered_events_per_s",
    "delivered",
    "loss_pct",
    "latency_ms",
    "daemon_cpu_us_per_event",
    "daemon_cores",
    "daemon_peak_rss_kib",
    "events_per_request",
    "requests_per_s",
    "kernel_udp_drops",
)
COLUMNS: dict[str, tuple[str, ...]] = {
    "emulator": _PHASE_COLUMNS,
    "standin": _PHASE_COLUMNS,
    "rates": (
        "target",
        "publisher",
        "mode",
        "rate",
        "cores",
        "cpu_us_per_event",
        "requests_per_s",
        "events_per_request",
        "latency_p50_ms",
        "latency_p99_ms",
        "delivered",
        "offered",
        "note",
    ),
}


def number(value: Any) -> str:
    if value is None:
        return "\u2013"  # an en dash: no figure
    if isinstance(value, Mapping):  # a figure of parts, e.g. latency's p50, p99, max
        return ", ".join(f"{key} {number(part)}" for key, part in value.items())
    if isinstance(value, bool) or not isinstance(value, int | float):
        return cell(value)
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


UNITS = {"us": "µs", "ms": "ms", "mib": "MiB", "kib": "KiB", "cpu": "CPU", "rss": "RSS"}


def _words(key: str) -> str:
    """A figure's key as words: its underscores spaces, its units spelt as units."""
    return " ".join(UNITS.get(word, word) for word in key.split("_"))


def _scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list)


def render_figures(figures: Mapping[str, Any], shown: tuple[str, ...] = ()) -> list[str]:
    """``shown``: the columns of a list of rows, in order (all when empty)."""
    lines: list[str] = []
    scalars = {key: value for key, value in figures.items() if _scalar(value) and key != "ok"}
    if scalars:
        lines += [
            "Run: " + ", ".join(f"{_words(k)} {number(v)}" for k, v in scalars.items()) + ".",
            "",
        ]
    for key, value in figures.items():
        if _scalar(value):
            continue
        if key != "rows":  # a suite's one table needs no name
            lines += [f"**{capitalized(_words(key))}**", ""]
        if isinstance(value, list) and all(isinstance(row, Mapping) for row in value):
            columns = list(shown) or list(dict.fromkeys(column for row in value for column in row))
            rows = [[number(row.get(column, "")) for column in columns] for row in value]
            lines += table([_words(c) for c in columns], rows)
        elif isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values()):
            columns = list(dict.fromkeys(column for row in value.values() for column in row))
            rows = [
                [cell(_words(name)), *(number(row.get(column, "")) for column in columns)]
                for name, row in value.items()
            ]
            lines += table(["", *(_words(c) for c in columns)], rows)
        elif isinstance(value, Mapping):
            lines += table(("figure", "value"), [(_words(k), number(v)) for k, v in value.items()])
        else:
            lines.append(cell(json.dumps(value)))
        lines.append("")
    return lines


def performance_page(doc: Mapping[str, Any]) -> str:
    machine = doc.get("machine", {})
    facts = ", ".join(
        f"{key} {value}"
        for key, value in (
            ("CPUs", machine.get("nproc")),
            ("CPU", machine.get("cpu_model")),
            ("kernel", machine.get("kernel")),
            ("Python", machine.get("python")),
            ("net.core.rmem_max", machine.get("net.core.rmem_max")),
        )
        if value is not None
    )
    commit = machine.get("git_commit")
    body = [
        GENERATED.format(source=f"{FIGURES}, the bench's figures"),
        "",
        "# Performance",
        "",
        "Today's figures, one table per suite of the bench (`python -m tools.bench list`), "
        "each with the command that reproduces it. They were measured on "
        f"{facts}, started {doc.get('started')}"
        + (f" at commit `{commit[:12]}`" if commit else "")
        + ". Numbers move with the machine and its load: compare runs on one machine, "
        "taking the fastest of several.",
        "",
        "All of them at once: `make bench` (every suite at its defaults, figures written to "
        f"bench.json); this page is rendered from `{FIGURES}` by `python -m tools.docs`.",
        "",
    ]
    for name, record in doc.get("suites", {}).items():
        command = shlex.join(["python", "-m", "tools.bench", name, *record.get("argv", [])])
        body += [
            f"## {name}",
            "",
            capitalized(SUITES.get(name, name)) + ".",
            "",
            f"`{command}`",
            "",
        ]
        if not record.get("ok", False):
            body += [
                f"This run failed its own check: {cell(record.get('error', 'see figures'))}.",
                "",
            ]
        if record.get("figures"):
            body += render_figures(record["figures"], COLUMNS.get(name, ()))
    return "\n".join(body).rstrip() + "\n"


def load(path: str = FIGURES) -> dict[str, Any]:
    with open(path) as fh:
        doc: dict[str, Any] = json.load(fh)
    return doc
