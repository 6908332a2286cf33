"""One entry point for every benchmark of ingest.

    python -m tools.bench list                      the suites, one per line
    python -m tools.bench SUITE [FLAG...] [SUITE [FLAG...]...] [--json FILE]
    python -m tools.bench all [--json FILE]         every suite at its defaults
    python -m tools.bench SUITE --help              a suite's own flags

A suite's flags follow its name; a word that names a suite starts the next
one. ``--json FILE`` (anywhere) writes the figures: {"format", "started",
"argv", "machine": {...}, "suites": {NAME: {"argv", "seconds", "ok",
"figures" [, "error"]}}}. `make bench` is ``all --json bench.json``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from tools.bench.suites import SUITES, document, run_suite, write_json

USAGE = __doc__ or ""


def split_json(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--json FILE`` / ``--json=FILE``, and FILE."""
    rest: list[str] = []
    path = None
    words = iter(argv)
    for word in words:
        if word == "--json":
            path = next(words, None)
            if path is None:
                raise SystemExit("--json needs a FILE")
        elif word.startswith("--json="):
            path = word.partition("=")[2]
        else:
            rest.append(word)
    return rest, path


def plan(argv: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(suite, its flags) in the order given."""
    if list(argv) == ["all"]:
        return [(name, []) for name in SUITES]
    runs: list[tuple[str, list[str]]] = []
    for word in argv:
        if word in SUITES:
            runs.append((word, []))
        elif runs:
            runs[-1][1].append(word)
        else:
            raise SystemExit(f"unknown suite {word!r}; `python -m tools.bench list` names them")
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words, json_path = split_json(argv)
    if words in ([], ["-h"], ["--help"]):
        print(USAGE.strip())
        print("\nsuites:")
        for name, what in SUITES.items():
            print(f"  {name:<13} {what}")
        return 0 if words else 2
    if words == ["list"]:
        print("\n".join(SUITES))
        return 0
    runs = plan(words)
    # SIGTERM unwinds like Ctrl-C, so every suite's cleanup runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    outcomes = []
    for name, flags in runs:
        print(f"\n=== {name} {' '.join(flags)}".rstrip(), flush=True)
        outcomes.append(run_suite(name, flags))
        print(f"=== {name}: {outcomes[-1].seconds:.0f} s", flush=True)
    if json_path:
        write_json(json_path, document(outcomes, argv))
        print(f"figures written to {json_path}")
    failed = [o.name for o in outcomes if not o.ok]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
