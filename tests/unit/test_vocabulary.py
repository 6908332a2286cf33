"""The one vocabulary: every reason a module counts is a member of its enum,
and /metrics exports every member from the start."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ingest import spool
from ingest.observe.metrics import build_registry
from ingest.pipeline import message
from ingest.receive import codec, dialects, gelf, statsd, syslog
from ingest.vocabulary import Drop, Ignore, Reject, Skip
from tools.testing.views import View


def test_every_reason_a_module_counts_is_in_the_vocabulary() -> None:
    rejects = {
        *codec.REJECT_REASONS,
        *dialects.REJECT_REASONS,
        *gelf.ERROR_REASONS,
        *gelf.ABANDON_REASONS,
        *syslog.REJECT_REASONS,
        *statsd.REJECT_REASONS,
    }
    assert rejects == set(Reject)  # and none is left unused
    assert {Ignore.EMPTY, *gelf.IGNORE_REASONS} == set(Ignore)
    drops = {Drop.QUEUE_FULL, Drop.INVALID_MESSAGE, Drop.SHUTDOWN, Drop.PUBLISHER_CRASHED}
    assert drops | set(spool.DROP_REASONS) == set(Drop)
    assert set(message.SKIP_REASONS) == set(Skip)


def test_metrics_export_every_member_at_zero_from_the_start() -> None:
    text = generate_latest(build_registry(View())).decode()  # type: ignore[arg-type]
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "reason" in sample.labels:
                labels.setdefault(sample.name, set()).add(sample.labels["reason"])
                assert sample.value == 0
    assert labels["ingest_events_rejected_total"] == {str(r) for r in Reject}
    assert labels["ingest_datagrams_ignored_total"] == {str(r) for r in Ignore}
    assert labels["ingest_events_dropped_total"] == {str(r) for r in Drop}
    assert labels["ingest_attributes_skipped_total"] == {str(r) for r in Skip}
