"""Build a tool's C helper on first use: compiled once per source version into
the temp directory, so nothing compiled is committed and a changed source is
rebuilt. The benchmarks' load generator and stand-in server use it; without a
C compiler they fall back to their Python engines."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def source(name: str) -> str:
    """Path of the C source ``name`` kept in this folder."""
    return os.path.join(HERE, name)


def build(source: str, name: str, *flags: str) -> str | None:
    """Path of ``source`` compiled as ``ingest-NAME-DIGEST``, or None when
    there is no compiler or the build fails."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    with open(source, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:16]
    binary = os.path.join(tempfile.gettempdir(), f"ingest-{name}-{digest}")
    if not os.access(binary, os.X_OK):
        partial = f"{binary}.{os.getpid()}"
        result = subprocess.run(
            [compiler, "-O2", *flags, "-o", partial, source], capture_output=True, check=False
        )
        if result.returncode:
            return None
        os.replace(partial, binary)  # atomic: parallel builds may race
    return binary
