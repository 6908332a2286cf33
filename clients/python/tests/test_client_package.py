"""The light client as its own distribution: ``clients/python`` built into a
wheel and installed into a fresh virtualenv holds ``ingest-client`` and
nothing else, and the Emitter there (no orjson: the json fallback) sends
events a real unix socket receives. The daemon's distribution ships the same
source package, and ``ingest.client`` re-exports its names, not copies.

Offline and quick (~2 s): the wheel is built by this environment's setuptools
(``--no-build-isolation``, from a copy of ``clients/python`` so the checkout
gets no build/ directory), the virtualenv is made without pip, and this
environment's pip installs into it (``pip --python``) from the wheel alone
with ``--no-index``: a required dependency could not be found and would fail
the install.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

import ingest.client
import ingest.config
import ingest.send
import ingest_client
import ingest_client.address
import ingest_client.emitter
from tests.helpers import REPO

CLIENT_SOURCE = REPO / "clients" / "python"
TIMEOUT_S = 60
# What the daemon needs and a web app installing the client must not get.
DAEMON_ONLY = ("ingest", "orjson", "grpc", "google", "uvloop", "rich", "prometheus_client")
IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")


def run(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def build_wheel(source: Path, out: Path) -> Path:
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "--no-index", source, "-w", out)  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return wheel


@dataclass(frozen=True)
class LightVenv:
    wheel: Path
    python: Path
    scratch: Path  # cwd for its processes: not the checkout, whose ingest/ would import

    def run(self, code: str) -> str:
        # -I: no PYTHONPATH, no user site, no script or current directory on
        # sys.path; only the virtualenv's own site-packages.
        return run(self.python, "-I", "-c", code, cwd=self.scratch)


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> LightVenv:
    root = tmp_path_factory.mktemp("light")
    source = root / "src"
    shutil.copytree(CLIENT_SOURCE, source, ignore=IGNORE)
    wheel = build_wheel(source, root / "dist")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index", wheel)
    scratch = root / "cwd"
    scratch.mkdir()
    return LightVenv(wheel, python, scratch)


def test_the_wheel_holds_only_ingest_client_and_requires_nothing(light: LightVenv) -> None:
    with zipfile.ZipFile(light.wheel) as wheel:
        names = wheel.namelist()
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = wheel.read(metadata_name).decode()
    assert {name.split("/")[0] for name in names} == {
        "ingest_client",
        "ingest_client-0.1.0.dist-info",
    }
    assert "ingest_client/py.typed" in names  # type checkers read its annotations
    fields = [line.partition(": ") for line in metadata.splitlines() if ": " in line]
    assert ("Name", ": ", "ingest-client") in fields
    requires = [value for key, _, value in fields if key == "Requires-Dist"]
    assert requires == ['orjson>=3.9; extra == "fast"']  # the optional extra, nothing required


def test_a_fresh_virtualenv_gets_ingest_client_and_nothing_else(light: LightVenv) -> None:
    code = (
        "import importlib.metadata, importlib.util, json, sys\n"
        "names = sorted(d.metadata['Name'] for d in importlib.metadata.distributions())\n"
        f"missing = {{m: importlib.util.find_spec(m) is None for m in {DAEMON_ONLY!r}}}\n"
        "import ingest_client\n"
        "print(json.dumps({'distributions': names, 'missing': missing,\n"
        "    'json': ingest_client.JSON_LIBRARY, 'file': ingest_client.__file__,\n"
        "    'prefix': sys.prefix}))\n"
    )
    seen = json.loads(light.run(code))
    assert seen["distributions"] == ["ingest-client"]
    assert all(seen["missing"].values()), seen["missing"]  # no ingest, orjson, grpc, ...
    assert seen["json"] == "json"
    assert seen["file"].startswith(seen["prefix"])  # the installed copy, not the checkout


def test_the_emitter_in_the_fresh_virtualenv_sends(light: LightVenv, sockdir: Path) -> None:
    path = sockdir / "r.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(TIMEOUT_S)
    event = {"event": "signup", "user": 42, "name": "grüße ✓", "tags": ["a", None, True]}
    code = (
        "import json\n"
        "from ingest_client import Emitter\n"
        f"e = Emitter(unix={str(path)!r})\n"
        f"e.emit({event!r})\n"
        "e.emit({'when': object()})\n"
        "e.emit(['not', 'an', 'object'])\n"
        f"b = Emitter(unix={str(path)!r}, batch=True)\n"
        "b.emit({'i': 1}); b.emit(b'{\"i\":2}'); b.flush()\n"
        "print(json.dumps([e.stats(), b.stats()]))\n"
    )
    try:
        single, batched = json.loads(light.run(code))
        first = receiver.recv(65536)
        second = receiver.recv(65536)
    finally:
        receiver.close()
    # json's bytes are orjson's: what the daemon's distribution would send.
    assert first == orjson.dumps(event)
    assert json.loads(first) == event
    assert second == b'{"i":1}\n{"i":2}'
    assert (single["sent"], single["dropped_by_reason"]) == (
        1,
        {"unserializable": 1, "not_object": 1},
    )
    assert (batched["sent"], batched["datagrams"], batched["dropped"]) == (2, 1, 0)


def test_the_daemons_distribution_ships_the_same_source_package(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "ingest", source / "ingest", ignore=IGNORE)
    shutil.copytree(CLIENT_SOURCE, source / "clients" / "python", ignore=IGNORE)
    wheel = build_wheel(source, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            name: archive.read(name) for name in archive.namelist() if name.startswith("ingest_")
        }
        assert "ingest/client.py" in archive.namelist()
    assert shipped == {
        f"ingest_client/{file.relative_to(CLIENT_SOURCE / 'ingest_client')}": file.read_bytes()
        for file in (CLIENT_SOURCE / "ingest_client").rglob("*")
        if file.is_file() and "__pycache__" not in file.parts
    }


def test_ingest_client_is_one_implementation() -> None:
    # ingest.client is a module of its own (no sys.modules swap) that
    # re-exports every name the emitter exports, as the same objects; the
    # emitter's module state stays the emitter's. The daemon's address rules
    # are the client's.
    assert ingest.client.__name__ == "ingest.client"
    assert sys.modules["ingest.client"] is ingest.client
    assert ingest.client.__all__ == ingest_client.emitter.__all__
    for name in ingest_client.emitter.__all__:
        assert getattr(ingest.client, name) is getattr(ingest_client.emitter, name), name
    assert ingest.client.Emitter is ingest_client.Emitter
    assert ingest.config.parse_host_port is ingest_client.address.parse_host_port
    assert ingest.config.check_unix_path is ingest_client.address.check_unix_path
    assert ingest.send.parse_host_port is ingest_client.address.parse_host_port
    assert ingest.config.DEFAULT_UNIX_PATH == ingest_client.DEFAULT_UNIX_PATH
    assert Path(ingest_client.__file__).parent == CLIENT_SOURCE / "ingest_client"


def test_the_development_install_maps_ingest_client_to_the_checkout(tmp_path: Path) -> None:
    # `make install` (pip install -e '.[dev]') gives both packages, from the
    # checkout: outside it (-I, another cwd) only the install can find them.
    code = (
        "import ingest.client, ingest_client\n"
        "print(ingest_client.__file__)\n"
        "assert ingest.client.Emitter is ingest_client.Emitter\n"
    )
    found = run(sys.executable, "-I", "-c", code, cwd=tmp_path).strip()
    assert Path(found) == CLIENT_SOURCE / "ingest_client" / "__init__.py"
