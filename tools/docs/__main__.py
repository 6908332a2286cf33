"""Write the generated docs, or check them.

python -m tools.docs           write every generated page (make reference)
python -m tools.docs --check   exit 1 naming each page that differs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tools.docs import pages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.docs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on drift")
    args = parser.parse_args(argv)
    rendered = pages.render()
    stale = pages.stale(rendered)
    if args.check:
        for path in stale:
            print(f"{path} differs from what `python -m tools.docs` writes", file=sys.stderr)
        return 1 if stale else 0
    for path in pages.write(stale, rendered):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
