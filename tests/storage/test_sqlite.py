"""SQLite-store specifics: durability under kill -9 and the attribute blob encoding."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrymq._core._records import (
    AttributeValue,
    DedupRecorded,
    MessageRecord,
    MessageStored,
)
from ferrymq._storage import SqliteStore
from ferrymq._storage._sqlite import decode_attributes, encode_attributes

HERE = Path(__file__).parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from crash_writer import REMOVE_LAG, commit_effects  # noqa: E402

# ---- kill -9 ------------------------------------------------------------------------


def _run_and_kill(db_path: Path, seed: int) -> list[int]:
    """Start the writer, SIGKILL it at a seeded moment, return the acknowledged ids."""
    rng = random.Random(seed)
    acks_before_kill = rng.randint(1, 400)
    extra_delay_s = rng.random() * 0.02
    concurrency = rng.choice([1, 4, 16])
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_writer.py"), str(db_path), str(concurrency)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    lines: list[bytes] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 15
        while len(lines) < acks_before_kill and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        time.sleep(extra_delay_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    lines.extend(rest.splitlines(keepends=True))
    # A line cut short by the kill was never a complete acknowledgement.
    acked = [int(line.split()[1]) for line in lines if line.endswith(b"\n")]
    assert len(acked) >= min(acks_before_kill, 1), err.decode()
    return acked


@pytest.mark.parametrize("seed", [11, 22, 33, 44, 55, 66, 77, 88])
def test_every_acknowledged_commit_survives_kill_9(tmp_path: Path, seed: int) -> None:
    db_path = tmp_path / "crash.db"
    acked = _run_and_kill(db_path, seed)

    store = SqliteStore(db_path)
    loaded = list(store.load())
    messages = {e.record.message_id: e.record for e in loaded if isinstance(e, MessageStored)}
    dedup_keys = {e.key for e in loaded if isinstance(e, DedupRecorded)}
    present = sorted(int(k[1:]) for k in dedup_keys)
    assert present == list(range(len(present))), "durable commits are not a prefix"
    last = len(present) - 1
    assert max(acked) <= last, "an acknowledged commit was lost"

    # Exactly the state of commits 0..last: nothing of a later commit, and every part
    # of each earlier one (stores, receive, dedup, and its removal of an older message).
    expected: dict[str, str | None] = {}
    for i in range(last + 1):
        expected[f"c{i}-a"] = f"t{i}"
        expected[f"c{i}-b"] = None
        if i >= REMOVE_LAG:
            del expected[f"c{i - REMOVE_LAG}-b"]
    assert {k: m.receipt_token for k, m in messages.items()} == expected
    assert list(messages) == [k for i in range(last + 1) for k in (f"c{i}-a", f"c{i}-b")
                              if k in expected]

    # The store is usable after the crash.
    async def more() -> None:
        await store.commit(commit_effects(last + 1))
        await store.close()

    asyncio.run(more())
    reopened = SqliteStore(db_path)
    keys = {e.key for e in list(reopened.load()) if isinstance(e, DedupRecorded)}
    asyncio.run(reopened.close())
    assert f"k{last + 1}" in keys


# ---- attribute blob -------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_value = st.one_of(
    st.builds(AttributeValue, _text, string_value=_text),
    st.builds(AttributeValue, _text, binary_value=st.binary(max_size=64)),
    st.builds(AttributeValue, _text, string_value=_text, binary_value=st.binary(max_size=8)),
    st.builds(AttributeValue, _text),
)
_attributes = st.lists(st.tuples(_text, _value), max_size=6).map(tuple)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_attributes)
def test_attribute_blob_round_trips(attributes: tuple[tuple[str, AttributeValue], ...]) -> None:
    blob = encode_attributes(attributes)
    assert (blob is None) == (not attributes)
    assert decode_attributes(blob) == attributes


def test_attribute_blob_is_compact() -> None:
    attributes = (("a", AttributeValue("String", string_value="x")),)
    blob = encode_attributes(attributes)
    assert blob is not None and len(blob) == 2 + 1 + 2 + 6 + 1 + 4 + 1


@settings(max_examples=25, deadline=None, derandomize=True)
@given(body=_text, attributes=_attributes)
def test_message_round_trips_through_the_file(
    tmp_path_factory: pytest.TempPathFactory,
    body: str,
    attributes: tuple[tuple[str, AttributeValue], ...],
) -> None:
    db_path = tmp_path_factory.mktemp("rt") / "s.db"
    record = MessageRecord(
        queue="q", message_id="m", body=body, attributes=attributes, md5_of_body="x",
        md5_of_attributes=None, sent_ms=1, visible_at_ms=1, receive_count=0,
        first_receive_ms=None, receipt_token=None, sender_id="s",
    )

    async def go() -> None:
        store = SqliteStore(db_path)
        await store.commit([MessageStored(record)])
        await store.close()

    asyncio.run(go())
    store = SqliteStore(db_path)
    assert list(store.load()) == [MessageStored(record)]
    asyncio.run(store.close())
