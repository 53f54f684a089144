"""The queue catalog's codec and the directory it is for the replica sets' cores."""

from __future__ import annotations

import json

import pytest

from ferrymq._cluster._catalog import (
    CREATING,
    Catalog,
    QueueEntry,
    decode_entry,
    encode_entry,
    live_entry,
    tombstone,
)
from ferrymq._core._records import QueueRecord

ARN = "arn:aws:sqs:us-east-1:000000000000:"


def _record(name: str, **attributes: str) -> QueueRecord:
    return QueueRecord(name=name, attributes=tuple(sorted(attributes.items())),
                       tags=(("team", "a"),), created_ms=1_000, modified_ms=2_000,
                       last_purge_ms=None)


@pytest.mark.parametrize("entry", [
    QueueEntry("q", CREATING, "q-0011aabb"),
    live_entry("q", "q-0011aabb", _record("q", VisibilityTimeout="30")),
    tombstone(live_entry("q", "q-0011aabb", _record("q")), 5_000),
])
def test_entries_round_trip(entry: QueueEntry) -> None:
    assert decode_entry("q", encode_entry(entry)) == entry


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown catalog status"):
        decode_entry("q", json.dumps({"status": "maybe", "partition": None}).encode())


def test_the_directory_sees_live_queues_only_and_finds_dead_letter_sources() -> None:
    catalog = Catalog("us-east-1", "000000000000")
    policy = json.dumps({"deadLetterTargetArn": ARN + "dlq", "maxReceiveCount": 3})
    catalog.reset([
        (live_entry("dlq", "dlq-1", _record("dlq")), 10),
        (live_entry("b", "b-1", _record("b", RedrivePolicy=policy)), 11),
        (live_entry("a", "a-1", _record("a", RedrivePolicy=policy)), 12),
        (QueueEntry("c", CREATING, "c-1"), 13),
        (live_entry("other", "o-1", _record("other", RedrivePolicy="not json")), 14),
    ])
    found = catalog.lookup("dlq")
    assert found is not None and found.arn == ARN + "dlq"
    assert catalog.lookup("c") is None, "a queue being created does not exist yet"
    assert catalog.dead_letter_sources("dlq") == ["a", "b"]
    assert catalog.live_names() == ["a", "b", "dlq", "other"]
    # An older event never overwrites a newer one; a delete only what it saw.
    catalog.apply(tombstone(live_entry("a", "a-1", _record("a")), 1), 5)
    assert catalog.live("a") is not None
    catalog.forget("a", 9)
    assert catalog.live("a") is not None
    catalog.forget("a", 12)
    assert catalog.live("a") is None
    assert catalog.partitions() == {"dlq-1": "dlq", "b-1": "b", "c-1": "c",
                                    "o-1": "other"}
