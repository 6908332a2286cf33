"""The folders of ingest/ follow a datagram's route, and their imports keep it.

receive/ (sockets, decoding, dialects) puts into pipeline/ (messages, queue,
lanes, batching), which publish/ (publishers, Pub/Sub) takes batches from and
spool/ stores for; observe/ (metrics, health, tap, dashboard) reads them all;
the lifecycle (daemon.py, wiring.py, cli.py, ...) sits at the top. Imports are
read with ast from the source, so a new arrow that breaks the layout fails
here, not in review.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "ingest"
FOLDERS = ("receive", "pipeline", "publish", "spool", "observe")
DATA_PATH = ("receive", "pipeline", "publish", "spool")
# The top-level modules the data path may use: definitions every stage
# shares, none of which imports a folder.
SHARED = ("ingest.config", "ingest.vocabulary", "ingest.stats", "ingest.ratelimit")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of ingest in ``path``, wherever it is
    (function bodies and TYPE_CHECKING blocks included): ``from ingest.x
    import y`` names ingest.x.y when that is a module, else ingest.x."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ingest" or alias.name.startswith("ingest."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module != "ingest" and not node.module.startswith("ingest."):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield node.lineno, sub if is_module(sub) else node.module


def is_module(name: str) -> bool:
    base = ROOT.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def node_of(module: str) -> str:
    """A folder's modules are one node (its name); a top-level module is its own."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in FOLDERS:
        return parts[1]
    return module


def edges() -> dict[str, dict[str, list[str]]]:
    """node -> imported node -> where ("path:line -> module")."""
    out: dict[str, dict[str, list[str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        source = node_of(module_name(path))
        for line, target in imports(path):
            dest = node_of(target)
            if dest not in (source, "ingest"):
                where = f"{path.relative_to(ROOT.parent)}:{line} -> {target}"
                where_all = out.setdefault(source, {}).setdefault(dest, [])
                if where not in where_all:
                    where_all.append(where)
    return out


def test_every_folder_is_a_package_with_modules() -> None:
    for folder in FOLDERS:
        assert (ROOT / folder / "__init__.py").is_file(), folder
        assert len(list((ROOT / folder).glob("*.py"))) > 1, folder


def test_the_data_path_never_imports_observe() -> None:
    """receive/, pipeline/, publish/ and spool/ report through interfaces of
    their own (stats.Stats, receive.tapped.Hub, publish.health.PubSubHealth);
    observe/ implements or reads them, and the daemon wires it in."""
    graph = edges()
    bad = [w for folder in DATA_PATH for w in graph.get(folder, {}).get("observe", [])]
    assert bad == []


def test_the_data_path_uses_only_shared_top_level_modules() -> None:
    """No stage reaches up into the lifecycle (daemon, wiring, reload, cli,
    systemd, send): the top wires the stages, never the other way."""
    graph = edges()
    bad = [
        w
        for folder in DATA_PATH
        for dest, where in graph.get(folder, {}).items()
        if dest not in FOLDERS and dest not in SHARED
        for w in where
    ]
    assert bad == []


def test_shared_modules_import_no_folder() -> None:
    graph = edges()
    bad = [
        w
        for module in SHARED
        for dest, where in graph.get(module, {}).items()
        if dest in FOLDERS
        for w in where
    ]
    assert bad == []


def test_no_import_cycle_between_folders() -> None:
    graph = edges()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for dest in graph.get(node, {}):
            if dest in path:
                cycles.append([*path[path.index(dest) :], dest])
            elif dest not in done:
                visit(dest, [*path, dest])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    shown = [
        " -> ".join(cycle)
        + "\n  "
        + "\n  ".join(w for a, b in itertools.pairwise(cycle) for w in graph[a][b])
        for cycle in cycles
    ]
    assert shown == [], "\n".join(shown)


def test_the_reader_finds_the_arrows_it_checks() -> None:
    """The checks above pass vacuously if the reader misses imports: it must
    see the daemon importing every folder, and receive/ putting into the
    pipeline."""
    graph = edges()
    assert set(FOLDERS) <= set(graph["ingest.daemon"])
    assert "pipeline" in graph["receive"]
