"""Command line: ``ingest serve``, ``check-config``, ``send``, ``top`` and ``tap``; flags, INGEST_* env, exit codes.

The serve flags come from the Option table (config.SERVE_OPTIONS), grouped
by its sections, each help line ending in the default the table reads from
Settings. Exit codes are vocabulary's (Exit, SendExit, TapExit), printed in
each command's help from their descriptions.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ingest import __version__, spool
from ingest.config import (
    DEFAULT_METRICS,
    DEFAULT_UNIX_PATH,
    ENV_PREFIX,
    INPUT_FORMATS,
    SERVE_OPTIONS,
    ConfigError,
    Option,
    Section,
    Settings,
    build_settings,
    load_file,
)
from ingest.vocabulary import DescribedCode, Exit, SendExit, TapExit

log = logging.getLogger("ingest")


SETTINGS_HELP = (
    "Every flag has an INGEST_* environment twin (--queue-max-events: "
    "INGEST_QUEUE_MAX_EVENTS; lists comma-separated) and a key of the same name in "
    "the --config TOML file. Precedence: flags > environment > file > defaults."
)


def exit_codes(codes: type[DescribedCode]) -> str:
    """One line of every exit code and what it means, for a command's help."""
    return "Exit codes: " + " ".join(f"{code.value}: {code.description}." for code in codes)


def _serve_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "serve",
        help="receive datagrams and publish them to Pub/Sub (foreground)",
        description=SETTINGS_HELP,
        epilog=exit_codes(Exit),
    )
    _add_settings_options(parser)


def _check_config_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "check-config",
        help="validate serve's settings (flags, INGEST_* env, --config) and exit",
        description="Takes exactly serve's settings, validates them and prints a one-line "
        "summary (exit 0), or the one-line error naming the flag (exit 2). Binds nothing "
        "and contacts nothing: for ExecStartPre= and before a restart. " + SETTINGS_HELP,
        epilog=exit_codes(Exit),
    )
    _add_settings_options(parser)


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file with the same keys")
    groups = {
        section: parser.add_argument_group(f"{section} ({section.description})")
        for section in Section
    }
    for option in SERVE_OPTIONS:
        group = groups[option.section]
        if option.is_flag:
            group.add_argument(
                option.flag,
                dest=option.key,
                action="store_true",
                default=argparse.SUPPRESS,
                help=option_help(option),
            )
        else:
            group.add_argument(
                option.flag,
                dest=option.key,
                action="append" if option.repeat else "store",
                default=argparse.SUPPRESS,
                metavar=option.metavar_text,
                help=option_help(option),
            )


def option_help(option: Option) -> str:
    """The table's help, then "required" or the default (a flag's is off)."""
    if option.required:
        return f"{option.help} (required)"
    if option.is_flag:
        return option.help
    # argparse expands %-specifiers in help text: a literal % must be doubled.
    return f"{option.help} [default: {option.default_text}]".replace("%", "%%")


def _send_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "send",
        help="send JSON events as datagrams (for scripts and trying it by hand)",
        description="Sends each EVENT, or each line of stdin when none is given, as one "
        "datagram; invalid JSON is refused locally.",
        epilog=exit_codes(SendExit),
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--unix", metavar="PATH", help=f"unix socket (default {DEFAULT_UNIX_PATH})")
    target.add_argument("--udp", metavar="HOST:PORT", help="UDP address")
    parser.add_argument("events", nargs="*", metavar="EVENT", help="a JSON object")


def _top_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "top",
        help="live dashboard of a running daemon, read from its /metrics and /healthz",
        description="Full-terminal view of a running daemon; q or Ctrl-C quits.",
    )
    _add_url_option(parser)


def _add_url_option(parser: argparse.ArgumentParser) -> None:
    """--url of the commands that read a running daemon (top, tap)."""
    parser.add_argument(
        "--url",
        default=f"http://{DEFAULT_METRICS}",
        help="the daemon's --metrics base URL; a trailing /metrics, /healthz or /tap is "
        f"accepted (default http://{DEFAULT_METRICS})",
    )


def _tap_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "tap",
        help="print a live sample of the datagrams a running daemon receives, as JSON lines",
        description="Prints one JSON line per datagram (listener, sender, format, outcome, "
        "reason, counts, text) from the daemon's /tap, flushed per line so `| jq` works live. "
        "The daemon samples: at most ~100 lines a second, with bursts of 200; what it leaves "
        "out is counted on stderr. Without an outcome flag, every outcome is shown.",
        epilog=exit_codes(TapExit),
    )
    _add_url_option(parser)
    for outcome, what in (
        ("accepted", "accepted datagrams"),
        ("rejected", "datagrams with a rejected event"),
        ("dropped", "datagrams dropped for a full queue"),
    ):
        parser.add_argument(
            f"--{outcome}",
            dest="outcomes",
            action="append_const",
            const=outcome,
            help=f"show {what} (the outcome flags add up)",
        )
    parser.add_argument(
        "--listener",
        action="append",
        metavar="LABEL",
        help="only this listener, exactly as in the metrics (udp:127.0.0.1:8125, "
        "unix:/run/ingest/ingest.sock); repeatable",
    )
    parser.add_argument(
        "--format",
        action="append",
        metavar="FMT",
        help="only these formats: json, gelf, syslog, statsd; comma-separated or repeated",
    )
    parser.add_argument(
        "--limit", type=_positive, metavar="N", help="exit after N lines (default: never)"
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingest", description="Datagram relay from web workers and emitters to Pub/Sub."
    )
    parser.add_argument("--version", action="version", version=f"ingest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    _check_config_parser(sub)
    _send_parser(sub)
    _top_parser(sub)
    _tap_parser(sub)
    return parser


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Flags > env > file > defaults. Raises ConfigError."""
    flags = {o.key: getattr(args, o.key) for o in SERVE_OPTIONS if hasattr(args, o.key)}
    for option in SERVE_OPTIONS:
        # Listener and uid flags may also carry comma-separated lists; a
        # KEY=VALUE or route flag is taken whole (its value may hold commas).
        if option.repeat and option.key in flags and option.flag_lists:
            flags[option.key] = [part for item in flags[option.key] for part in item.split(",")]
    if args.config:
        file_values = load_file(args.config)
    elif env.get(ENV_PREFIX + "CONFIG"):
        file_values = load_file(env[ENV_PREFIX + "CONFIG"], f"--config (from {ENV_PREFIX}CONFIG)")
    else:
        file_values = None
    return build_settings(flags, env, file_values)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # journald stamps each line itself; a terminal user wants the time.
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _fail(message: str) -> int:
    print(f"ingest: error: {message}", file=sys.stderr)
    return Exit.CONFIG


def serve(args: argparse.Namespace) -> int:
    setup_logging("info")  # config warnings (unknown INGEST_* variables) must show
    try:
        settings = settings_from(args, os.environ)
    except ConfigError as exc:
        return _fail(str(exc))
    logging.getLogger().setLevel(settings.log_level.upper())
    import uvloop

    from ingest.daemon import Daemon

    daemon = Daemon(settings, reload_settings=lambda: settings_from(args, os.environ))
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(daemon.run())
    except ConfigError as exc:
        return _fail(str(exc))


def check_config(args: argparse.Namespace) -> int:
    setup_logging("warning")  # unknown INGEST_* variables still warn
    try:
        settings = settings_from(args, os.environ)
        if settings.spool_dir is not None:  # serve refuses one that is not ours alone
            spool.check_directory(settings.spool_dir)
    except ConfigError as exc:
        return _fail(str(exc))
    print(f"ingest: configuration ok: {summary(settings)}")
    return Exit.OK


def summary(settings: Settings) -> str:
    """One line: what ``serve`` would do with these settings."""
    listeners = " ".join(listener.label for listener in settings.listeners)
    if settings.default_listeners:
        listeners += " (defaults; sockets passed by systemd replace them)"
    parts = [
        f"{settings.topic_path} on {settings.pubsub_endpoint}",
        f"listeners {listeners}",
        f"publishers={settings.publishers}",
        f"queue {settings.queue_max_events} events/{settings.queue_max_bytes} bytes",
        f"drain-timeout={settings.drain_timeout_s:g}s",
        "formats " + ",".join(f for f in INPUT_FORMATS if f in settings.input_formats),
    ]
    if settings.syslog_wrap_text:
        parts.append("syslog-wrap-text")
    if settings.udp_allow:
        parts.append("udp-allow " + ",".join(str(net) for net in settings.udp_allow))
    if settings.unix_gid is not None:
        parts.append(f"unix-group gid {settings.unix_gid}")
    if settings.metadata:
        parts.append(message_summary(settings))
    metrics = f"{settings.metrics[0]}:{settings.metrics[1]}" if settings.metrics else "off"
    parts.append(f"metrics {metrics}")
    return "; ".join(parts)


def message_summary(settings: Settings) -> str:
    """What the messages carry besides data, in the flags' own words."""
    items = [f"attribute {key}={value}" for key, value in settings.attributes]
    items += [f"attribute-field {key}={field}" for key, field in settings.attribute_fields]
    if settings.ordering_key_field:
        items.append(f"ordering-key-field {settings.ordering_key_field}")
    items += [f"route {r.topic}:{r.field}={r.value}" for r in settings.routes]
    if settings.unix_allow_uids:
        items.append("unix-allow-uid " + ",".join(map(str, settings.unix_allow_uids)))
    elif settings.unix_credentials:
        items.append("unix-credentials")
    return "messages: " + " ".join(items)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "check-config":
        return check_config(args)
    if args.command == "top":
        from ingest.observe.top import run_top  # rich's live display: only `top` pays for it

        return run_top(args.url)
    if args.command == "tap":
        from ingest.observe.tap import run_tap

        formats = [part for item in args.format or () for part in item.split(",")]
        return run_tap(
            args.url,
            outcomes=args.outcomes or (),
            listeners=args.listener or (),
            formats=formats,
            limit=args.limit,
        )
    from ingest.send import send_command

    return send_command(args.unix, args.udp, args.events, sys.stdin)


if __name__ == "__main__":
    raise SystemExit(main())
