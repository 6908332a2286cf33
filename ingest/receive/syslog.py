"""Syslog datagram parsing: pure functions, no I/O.

A syslog datagram is a header and a message; ingest publishes the message
(normally a JSON object) byte for byte and the header's facts as attributes.
Three layouts are accepted, told apart by what follows the PRI ``<N>``:

* RFC 5424 (``logger --rfc5424``): ``<13>1 TIMESTAMP HOST APP PROCID MSGID SD MSG``
  where SD is ``-`` or one or more ``[id name="value" ...]`` elements (``\\"``,
  ``\\\\`` and ``\\]`` escaped in values) and MSG may start with a UTF-8 BOM,
  which is removed. A malformed header is an error: after the version ``1 ``
  nothing else is meant (so a bare message starting "1 " is rejected too).
  Field lengths are not enforced.
* RFC 3164 (``logger``, rsyslog forwarding): ``<13>Nov 28 03:24:03 [HOST ]TAG MSG``
  with the day space-padded (``Nov  3``) and TAG ``app:`` or ``app[pid]:``.
  The hostname is optional (a local ``logger`` omits it); it is taken only
  when a tag follows it, so a message without a tag is never cut.
* Bare (Python's ``logging.handlers.SysLogHandler``): ``<12>MSG``, where MSG
  may begin with the handler's ``ident`` when that is a tag (``"myapp: "``).

A tag is a name of printable ASCII other than ``:[]{}"`` with an optional
``[pid]``, then ``:`` and one space (or the end). Whatever does not have that
shape is message, not header: the rule keeps a JSON message whole (no JSON
text starts with a tag) and an IPv6 hostname (``fe80::1``) a hostname.
A hostname ending in ``:`` is read as a tag; RFC 3164 itself cannot tell.

In every layout the message then loses a leading CEE cookie (``@cee:`` and
the spaces after it) and its trailing NULs and newlines (SysLogHandler
appends a NUL, line-oriented senders a newline; neither is ever part of a
JSON text); the rest is exactly the sender's bytes. Whether it is JSON is
not decided here.

Facts are (name, value) pairs, present ones only, in this order:

* ``severity``: emerg, alert, crit, err, warning, notice, info, debug -- the
  keywords people filter on, rather than RFC 5424's numbers 0..7;
* ``facility``: kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron,
  authpriv, ftp, ntp, security, console, solaris-cron, local0..local7 (the
  names Python's SysLogHandler and rsyslog use for 0..23);
* ``timestamp``: the header's text unmodified (RFC 3164's has no year and no
  zone; no guess is made);
* ``host``, ``app``, ``pid``: the RFC 5424 HOSTNAME, APP-NAME and PROCID, or
  the RFC 3164 hostname and tag.

An RFC 5424 NILVALUE ``-`` is an absent fact; MSGID and structured data are
checked and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orjson import dumps

from ingest.vocabulary import Reject

# Reject reason: a fixed vocabulary (it becomes a metric label).
REJECT_REASONS = (Reject.INVALID_SYSLOG,)

Facts = tuple[tuple[str, str], ...]

SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)  # fmt: skip

# Every valid PRI but its ">" (b"<13"), to its two facts: one lookup rejects
# values over 191, leading zeros, signs and other non-digits that int() would
# accept ("+1", " 1", "1_0").
_PRI_FACTS: dict[bytes, Facts] = {
    b"<%d" % pri: (("severity", SEVERITIES[pri & 7]), ("facility", FACILITIES[pri >> 3]))
    for pri in range(len(FACILITIES) * 8)
}

_BOM = b"\xef\xbb\xbf"
_CEE = b"@cee:"
_TRAILER = b"\x00\n"
_NIL = b"-"

# All patterns are anchored (match at a position) and every repetition is of
# a class that excludes the byte ending it, so matching is linear and a
# failed match cannot backtrack into a catastrophe.
# VERSION 1, TIMESTAMP (RFC 3339, at most 6 fraction digits in RFC 5424; 9
# admits Go's RFC3339Nano senders), HOSTNAME, APP-NAME, PROCID, MSGID.
_RFC5424_HEADER = re.compile(
    rb"1 (-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d))"
    rb" ([!-~]+) ([!-~]+) ([!-~]+) [!-~]+ "
)
# An SD element: [SD-ID *(SP PARAM-NAME="PARAM-VALUE")], names of printable
# ASCII but for SP = ] ", a backslash escaping the byte after it in values.
# Possessive loops: no element's end can be found by giving bytes back.
_SD_ELEMENT = re.compile(
    rb'\[[^\x00- "=\]\x7f-\xff]+(?: [^\x00- "=\]\x7f-\xff]+="(?:[^"\\]|\\.)*+")*+\]', re.DOTALL
)
_RFC3164_TIMESTAMP = re.compile(
    rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d(?: |\Z)"
)
# A tag's name and a hostname: printable ASCII but for the bytes that open
# or close JSON objects, arrays and strings (and a tag's ":"), so that no JSON
# text reads as "HOST TAG". The cookie is never a tag.
_TAG = re.compile(
    rb'(?!@cee:)([^\x00- "\[\]{}:\x7f-\xff]+)(?:\[([^\x00- \]\x7f-\xff]+)\])?:(?: |\Z)'
)
_HOST = re.compile(rb'([^\x00- "\[\]{}\x7f-\xff]+) ')


class SyslogError(Exception):
    """A datagram that is not syslog: ``reason`` is from REJECT_REASONS,
    the message says what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(slots=True)  # not frozen: a frozen __init__ costs twice as much, per datagram
class Syslog:
    """A parsed datagram: the message bytes and the header's facts."""

    body: bytes
    facts: Facts


def looks_like_syslog(data: bytes) -> bool:
    """True if ``data`` starts like syslog: ``<``, 1 to 3 digits, ``>``.
    A JSON datagram never does."""
    close = data.find(b">", 2, 5)
    return close > 0 and data[0] == 0x3C and data[1:close].isdigit()


def parse(data: bytes) -> Syslog:
    """The message and facts of one syslog datagram; SyslogError for a bad
    PRI or a malformed RFC 5424 header, and never any other exception."""
    head, close, msg = data.partition(b">")
    pri_facts = _PRI_FACTS.get(head) if close else None
    if pri_facts is None:
        raise SyslogError(Reject.INVALID_SYSLOG, "no valid PRI (<0> to <191>)")
    msg = msg.rstrip(_TRAILER)
    if msg[:1] == b"{":  # no header: the common SysLogHandler form, kept fast
        return Syslog(msg, pri_facts)
    if msg.startswith(b"1 "):
        return _rfc5424(msg, pri_facts)
    facts = pri_facts
    start = 0
    stamp = _RFC3164_TIMESTAMP.match(msg)
    if stamp is not None:
        facts = (*facts, ("timestamp", msg[:15].decode()))
        start = stamp.end()
    tag = _TAG.match(msg, start)
    if tag is None and stamp is not None:
        # A hostname counts only before a tag: else it is the message's first word.
        host = _HOST.match(msg, start)
        if host is not None:
            tag = _TAG.match(msg, host.end())
            if tag is not None:
                facts = (*facts, ("host", host[1].decode()))
    if tag is not None:
        start = tag.end()
        facts = (*facts, ("app", tag[1].decode()))
        if tag[2] is not None:
            facts = (*facts, ("pid", tag[2].decode()))
    return Syslog(_uncookie(msg, start), facts)


def wrap_text(body: bytes) -> bytes:
    """A JSON object for a message that is not one: ``{"message": text}``,
    the text decoded as UTF-8 with U+FFFD for each invalid byte sequence.
    The facts are not repeated inside: they travel as attributes."""
    return dumps({"message": body.decode("utf-8", "replace")})


def _uncookie(msg: bytes, start: int) -> bytes:
    """The message from ``start``, without a CEE cookie and the spaces after it."""
    if msg.startswith(_CEE, start):
        return msg[start + len(_CEE) :].lstrip(b" ")
    return msg[start:]


def _rfc5424(msg: bytes, facts: Facts) -> Syslog:
    header = _RFC5424_HEADER.match(msg)
    if header is None:
        raise SyslogError(Reject.INVALID_SYSLOG, "RFC 5424 header malformed")
    timestamp, host, app, pid = header.groups()
    if timestamp != _NIL:
        facts = (*facts, ("timestamp", timestamp.decode()))
    if host != _NIL:
        facts = (*facts, ("host", host.decode()))
    if app != _NIL:
        facts = (*facts, ("app", app.decode()))
    if pid != _NIL:
        facts = (*facts, ("pid", pid.decode()))
    pos = header.end()
    if msg.startswith(_NIL, pos):
        pos += 1
    else:
        element = _SD_ELEMENT.match(msg, pos)
        if element is None:
            raise SyslogError(Reject.INVALID_SYSLOG, "RFC 5424 STRUCTURED-DATA malformed")
        while element is not None:
            pos = element.end()
            element = _SD_ELEMENT.match(msg, pos)
    if pos < len(msg):
        if msg[pos] != 0x20:
            raise SyslogError(
                Reject.INVALID_SYSLOG, "RFC 5424 STRUCTURED-DATA not followed by a space"
            )
        pos += 1
        if msg.startswith(_BOM, pos):
            pos += len(_BOM)
    return Syslog(_uncookie(msg, pos), facts)
