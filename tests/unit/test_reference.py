"""The generated reference (docs/reference/, docs/performance.md, docs/ingest.1)
is what ``python -m tools.docs`` writes from the code, and it names every
flag ``ingest serve --help`` lists, every metric family the collector
exports, every reason and every exit code. The Option table it reads says
each option's default (from Settings), reload policy and section once."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ingest import cli, reload
from ingest.config import SERVE_OPTIONS, Settings, show_value
from ingest.observe.metrics import build_registry
from ingest.vocabulary import Described, DescribedCode, Drop, Exit, Ignore, Reject, Reload, Skip
from tools.docs import pages, reference
from tools.testing.views import View

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "run `make reference` (python -m tools.docs) and commit what it writes"


def read(path: str) -> str:
    return (ROOT / path).read_text()


def serve_help() -> str:
    (serve,) = [
        sub for name, _, sub in reference.subcommands(cli.build_parser()) if name == "serve"
    ]
    text: str = serve.format_help()
    return text


def test_committed_pages_are_what_the_generator_writes() -> None:
    stale = pages.stale()
    assert not stale, f"{', '.join(stale)} differ from the code: {REGENERATE}"


def test_a_help_string_changed_in_the_table_is_drift() -> None:
    rendered = pages.render()
    flags = rendered["docs/reference/flags.md"]
    rendered["docs/reference/flags.md"] = flags.replace("memory queue bound in events", "x")
    assert pages.stale(rendered) == ["docs/reference/flags.md"]


def test_every_flag_serve_help_lists_is_in_the_flags_page() -> None:
    listed = set(re.findall(r"^  (--[a-z][a-z-]*)", serve_help(), re.MULTILINE)) - {"--help"}
    assert len(listed) == len(SERVE_OPTIONS) + 1  # and --config
    page = read("docs/reference/flags.md")
    assert "`--config FILE`" in page and "`INGEST_CONFIG`" in page
    for option in SERVE_OPTIONS:
        assert option.flag in listed
        section = page.split(f"### `{option.flag}`\n", 1)[1].split("\n### ", 1)[0]
        assert f"`{option.env}`" in section and f"`{option.file_key}`" in section
        assert reference.reload_text(option) in section


def test_every_metric_family_the_collector_exports_is_in_the_metrics_page() -> None:
    """From a registry as the daemon builds it (observe/metrics.build_registry),
    over a fresh Stats; tests/system/test_metrics_http scrapes a real daemon."""
    text = generate_latest(build_registry(View())).decode()  # type: ignore[arg-type]
    page = read("docs/reference/metrics.md")
    families = list(text_string_to_metric_families(text))
    assert len(families) > 30
    for family in families:
        exported = family.name + ("_total" if family.type == "counter" else "")
        assert f"| `{exported}` | {family.type} |" in page, exported


def test_conditional_families_say_when_they_are_exported() -> None:
    page = read("docs/reference/metrics.md")
    line = next(line for line in page.splitlines() if "`ingest_sd_notify_sent_total`" in line)
    assert "only under systemd" in line


def test_every_reason_is_in_the_reasons_page_with_its_description() -> None:
    page = read("docs/reference/reasons.md")
    for enum in (Reject, Ignore, Drop, Skip):
        for member in enum:
            assert f"| `{member}` | {reference.cell(member.description)} |" in page
        assert f"## {reference.reason_family(enum)}\n" in page


def test_every_member_of_the_vocabulary_has_a_description() -> None:
    from ingest import vocabulary

    enums = [
        value
        for value in vars(vocabulary).values()
        if isinstance(value, type)
        and issubclass(value, Described | DescribedCode)
        and value not in (Described, DescribedCode)
    ]
    assert len(enums) >= 9
    for enum in enums:
        for member in enum:
            assert member.description.strip(), member
            assert member == member.value  # still its text (or code)


def test_every_exit_code_is_in_the_exit_codes_page_and_in_the_commands_help() -> None:
    page = read("docs/reference/exit-codes.md")
    for enum in reference.code_enums():
        for member in enum:
            assert f"| {member.value} | {reference.cell(member.description)} |" in page
    # cli prints vocabulary's words: exit 3 names unconfirmed events too.
    flat = " ".join(serve_help().split())
    assert f"{Exit.DRAIN_INCOMPLETE.value}: {Exit.DRAIN_INCOMPLETE.description}." in flat
    assert "unconfirmed" in Exit.DRAIN_INCOMPLETE.description


def test_defaults_are_settings_and_help_strings_do_not_repeat_them() -> None:
    defaults = {item.name: item.default for item in dataclasses.fields(Settings)}
    for option in SERVE_OPTIONS:
        if option.key in defaults and not option.default and not option.required:
            assert option.default_value == defaults[option.key]
        value = option.default_value
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert show_value(value).split()[0] not in option.help, option.flag
    assert "[default: 100000]" in " ".join(serve_help().split())


def test_a_changed_settings_default_is_what_help_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    (field,) = [f for f in dataclasses.fields(Settings) if f.name == "queue_max_events"]
    monkeypatch.setattr(field, "default", 12_345)
    assert "[default: 12345]" in " ".join(serve_help().split())


def test_reload_policies_come_from_the_table() -> None:
    by_policy = {
        policy: {o.fills for o in SERVE_OPTIONS if o.reload is policy} for policy in Reload
    }
    assert set(reload.RESTART_ONLY) == by_policy[Reload.RESTART]
    assert set(reload.LIVE) == by_policy[Reload.LIVE]
    dependent = {name for dep in reload.DEPENDENCIES for name in dep.settings}
    assert dependent - {"default_listeners"} == by_policy[Reload.DEPENDS]
    for option in SERVE_OPTIONS:
        assert bool(reload.conditions(option.fills)) == (option.reload is Reload.DEPENDS)


def test_the_man_page_names_every_flag_and_exit_code() -> None:
    page = read("docs/ingest.1")
    assert page.startswith('.\\" Generated by') and "\n.TH INGEST 1 " in page
    for option in SERVE_OPTIONS:
        assert "\\fB" + option.flag.replace("-", "\\-") + "\\fR" in page
    for enum in reference.code_enums():
        for member in enum:
            assert f".TP\n\\fB{member.value}\\fR\n" in page


def test_performance_page_has_a_table_and_a_command_per_suite() -> None:
    from tools.docs import performance

    doc = performance.load(str(ROOT / performance.FIGURES))
    page = read("docs/performance.md")
    assert doc["suites"]
    for name in doc["suites"]:
        assert f"## {name}\n" in page
        assert f"`python -m tools.bench {name}" in page
    assert page.count("\n|---") >= len(doc["suites"])
