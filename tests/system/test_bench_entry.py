"""The bench's one entry point (python -m tools.bench): its suites, how its
words split into suites and flags, and the JSON it writes. No suite is run
at its defaults here (benchmarks are slow and CPU-heavy); one cheap in-process
suite proves the JSON end to end."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tools.bench.__main__ import plan, split_json
from tools.bench.suites import SUITES, Outcome, document


def bench(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_list_names_every_suite_one_per_line() -> None:
    done = bench("list")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == list(SUITES)


@pytest.mark.parametrize("name", list(SUITES))
def test_every_suite_is_a_module_with_run(name: str) -> None:
    module = importlib.import_module(f"tools.bench.{name}")
    assert callable(module.run)


def test_words_split_into_suites_and_their_flags() -> None:
    words, path = split_json(["standin", "--standin-rates", "5000", "--json", "f.json", "lanes"])
    assert path == "f.json"
    assert plan(words) == [("standin", ["--standin-rates", "5000"]), ("lanes", [])]
    assert split_json(["lanes", "--json=out.json"]) == (["lanes"], "out.json")
    assert plan(["all"]) == [(name, []) for name in SUITES]


def test_an_unknown_suite_is_refused_before_anything_runs() -> None:
    done = bench("no-such-suite")
    assert done.returncode != 0
    assert "unknown suite" in done.stderr


def test_a_failed_check_or_error_marks_the_suite_not_ok() -> None:
    doc = document(
        [
            Outcome("lanes", (), 1.0, {"x": 1}),
            Outcome("compression", (), 1.0, {"ok": False}),
            Outcome("spool", (), 1.0, None, "RuntimeError('boom')"),
        ],
        ["all"],
    )
    assert {name: s["ok"] for name, s in doc["suites"].items()} == {
        "lanes": True,
        "compression": False,
        "spool": False,
    }
    assert doc["suites"]["spool"]["error"] == "RuntimeError('boom')"
    assert {"nproc", "kernel", "python", "git_commit"} <= set(doc["machine"])


def test_a_suite_writes_its_figures_as_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = bench("lanes", "--runs", "1", "--events", "200", "--json", str(out))
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == 1
    lanes = doc["suites"]["lanes"]
    assert lanes["ok"] is True
    assert lanes["argv"] == ["--runs", "1", "--events", "200"]
    assert set(lanes["figures"]["us_per_event"]) == {"plain", "one_lane", "metadata"}
    assert lanes["figures"]["us_per_event"]["plain"]["total"] > 0
