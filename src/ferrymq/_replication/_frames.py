"""The binary form of replication messages between nodes, and an incremental decoder.

A frame is ``u32 length`` (of what follows), ``u8 kind``, then the message's fields:
integers big-endian (``u64`` seqs, ``u32`` epochs and counts), strings and byte
strings as ``u32 length`` plus bytes (UTF-8 for strings). A connection opens with a
``Hello`` naming the protocol version, the cluster and the sending node, so a node of
another cluster or an incompatible version is refused before anything else is read.
Snapshots travel as ``SnapshotBegin``, ``SnapshotChunk``..., ``SnapshotEnd`` (with a
CRC-32 of the whole copy), answered by ``SnapshotDone``.

Hand-written rather than a general serializer: six small fixed shapes, decoded on the
replication hot path, where struct unpacking of known layouts is what is fast.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from ferrymq._replication._log import Entry, Position
from ferrymq._replication._messages import Append, AppendReply, Fence, FenceReply, Message

__all__ = [
    "FRAME_BYTES_MAX",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "FrameError",
    "Hello",
    "SnapshotBegin",
    "SnapshotChunk",
    "SnapshotDone",
    "SnapshotEnd",
    "crc32",
    "encode",
]

# 2: a snapshot chunk carries its offset (snapshots are streamed, of any size).
PROTOCOL_VERSION = 2
# The largest frame accepted: an Append carries at most APPEND_BYTES_MAX (1 MiB) of
# payload, one entry may be a whole batch of 1 MiB messages (~6 MiB encoded), and a
# snapshot chunk is 1 MiB. 16 MiB admits all of that and stops a corrupt length from
# making a reader buffer gigabytes.
FRAME_BYTES_MAX = 16 * 1024 * 1024

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_POS = struct.Struct(">IQ")  # epoch, seq
_ENTRY_HEAD = struct.Struct(">QII")  # seq, epoch, payload length


class FrameError(Exception):
    """Bytes that are not a valid frame: the connection is closed."""


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    cluster: str
    node: str


@dataclass(frozen=True, slots=True)
class SnapshotBegin:
    partition: str
    epoch: int  # the leader's epoch
    last: Position  # the copy holds the log up to here
    history: tuple[tuple[int, int], ...]
    size_bytes: int


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    partition: str
    offset: int  # of ``data`` in the copy: a follower takes only the next bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    partition: str
    crc32: int


@dataclass(frozen=True, slots=True)
class SnapshotDone:
    """Follower -> leader: installed (``ok``, with the new store's incarnation) or not."""

    partition: str
    ok: bool
    incarnation: str
    reason: str


Frame = Message | Hello | SnapshotBegin | SnapshotChunk | SnapshotEnd | SnapshotDone

_KINDS: dict[type, int] = {
    Hello: 1, Append: 2, AppendReply: 3, Fence: 4, FenceReply: 5,
    SnapshotBegin: 6, SnapshotChunk: 7, SnapshotEnd: 8, SnapshotDone: 9,
}


def crc32(data: bytes, value: int = 0) -> int:
    return zlib.crc32(data, value) & 0xFFFFFFFF


# ---- encoding --------------------------------------------------------------------------


def _str(out: bytearray, text: str) -> None:
    raw = text.encode("utf-8")
    out += _U32.pack(len(raw))
    out += raw


def _bytes(out: bytearray, data: bytes) -> None:
    out += _U32.pack(len(data))
    out += data


def _pos(out: bytearray, pos: Position) -> None:
    out += _POS.pack(pos.epoch, pos.seq)


def encode(frame: Frame) -> bytes:
    """The frame's bytes, length prefix included."""
    out = bytearray(4)
    out += _U8.pack(_KINDS[type(frame)])
    if isinstance(frame, Append):
        _str(out, frame.partition)
        out += _U32.pack(frame.epoch)
        _str(out, frame.leader)
        _pos(out, frame.prev)
        out += _U64.pack(frame.commit_seq)
        out += _U32.pack(len(frame.entries))
        for entry in frame.entries:
            out += _ENTRY_HEAD.pack(entry.seq, entry.epoch, len(entry.payload))
            out += entry.payload
    elif isinstance(frame, AppendReply):
        _str(out, frame.partition)
        out += _U32.pack(frame.epoch)
        _str(out, frame.node)
        out += _U8.pack(frame.ok | (frame.needs_snapshot << 1))
        _pos(out, frame.last)
        out += _U32.pack(frame.fence_epoch)
        _str(out, frame.incarnation)
    elif isinstance(frame, Fence):
        _str(out, frame.partition)
        out += _U32.pack(frame.epoch)
        _str(out, frame.controller)
    elif isinstance(frame, FenceReply):
        _str(out, frame.partition)
        out += _U32.pack(frame.epoch)
        _str(out, frame.node)
        out += _U8.pack(frame.accepted | (frame.eligible << 1))
        _pos(out, frame.last)
        out += _U32.pack(frame.fence_epoch)
    elif isinstance(frame, Hello):
        out += _U32.pack(frame.version)
        _str(out, frame.cluster)
        _str(out, frame.node)
    elif isinstance(frame, SnapshotBegin):
        _str(out, frame.partition)
        out += _U32.pack(frame.epoch)
        _pos(out, frame.last)
        out += _U32.pack(len(frame.history))
        for epoch, first in frame.history:
            out += _POS.pack(epoch, first)
        out += _U64.pack(frame.size_bytes)
    elif isinstance(frame, SnapshotChunk):
        _str(out, frame.partition)
        out += _U64.pack(frame.offset)
        _bytes(out, frame.data)
    elif isinstance(frame, SnapshotEnd):
        _str(out, frame.partition)
        out += _U32.pack(frame.crc32)
    elif isinstance(frame, SnapshotDone):
        _str(out, frame.partition)
        out += _U8.pack(frame.ok)
        _str(out, frame.incarnation)
        _str(out, frame.reason)
    else:  # pragma: no cover - _KINDS and this chain list the same types
        raise TypeError(f"not a frame: {frame!r}")
    if len(out) - 4 > FRAME_BYTES_MAX:
        raise FrameError(f"frame of {len(out) - 4} bytes is over {FRAME_BYTES_MAX}")
    _U32.pack_into(out, 0, len(out) - 4)
    return bytes(out)


# ---- decoding --------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> memoryview:
        end = self.offset + size
        if end > len(self.data):
            raise FrameError("frame ends early")
        view = self.data[self.offset:end]
        self.offset = end
        return view

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self.take(8))[0]
        return value

    def pos(self) -> Position:
        epoch, seq = _POS.unpack(self.take(12))
        return Position(epoch, seq)

    def bytes_(self) -> bytes:
        return bytes(self.take(self.u32()))

    def str_(self) -> str:
        try:
            return str(self.take(self.u32()), "utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError("a string that is not UTF-8") from exc

    def done(self) -> None:
        if self.offset != len(self.data):
            raise FrameError(f"{len(self.data) - self.offset} bytes left over in a frame")


def _decode_body(kind: int, r: _Reader) -> Frame:
    frame: Frame
    if kind == 2:
        partition, epoch, leader, prev, commit = r.str_(), r.u32(), r.str_(), r.pos(), r.u64()
        count = r.u32()
        entries = []
        for _ in range(count):
            seq, entry_epoch, size = _ENTRY_HEAD.unpack(r.take(_ENTRY_HEAD.size))
            entries.append(Entry(seq, entry_epoch, bytes(r.take(size))))
        frame = Append(partition, epoch, leader, prev, tuple(entries), commit)
    elif kind == 3:
        partition, epoch, node, flags = r.str_(), r.u32(), r.str_(), r.u8()
        last, fence, incarnation = r.pos(), r.u32(), r.str_()
        frame = AppendReply(partition, epoch, node, bool(flags & 1), last, fence, incarnation,
                            bool(flags & 2))
    elif kind == 4:
        frame = Fence(r.str_(), r.u32(), r.str_())
    elif kind == 5:
        partition, epoch, node, flags = r.str_(), r.u32(), r.str_(), r.u8()
        last, fence = r.pos(), r.u32()
        frame = FenceReply(partition, epoch, node, bool(flags & 1), last, fence,
                           bool(flags & 2))
    elif kind == 1:
        frame = Hello(r.u32(), r.str_(), r.str_())
    elif kind == 6:
        partition, epoch, last, count = r.str_(), r.u32(), r.pos(), r.u32()
        history = tuple((p.epoch, p.seq) for p in (r.pos() for _ in range(count)))
        frame = SnapshotBegin(partition, epoch, last, history, r.u64())
    elif kind == 7:
        frame = SnapshotChunk(r.str_(), r.u64(), r.bytes_())
    elif kind == 8:
        frame = SnapshotEnd(r.str_(), r.u32())
    elif kind == 9:
        frame = SnapshotDone(r.str_(), bool(r.u8()), r.str_(), r.str_())
    else:
        raise FrameError(f"unknown frame kind {kind}")
    r.done()
    return frame


class FrameDecoder:
    """Feed it bytes as they arrive; iterate the complete frames. Raises ``FrameError``
    on anything malformed (the connection must then be closed)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        buffer = self._buffer
        buffer += data
        offset = 0
        try:
            while len(buffer) - offset >= 4:
                (length,) = _U32.unpack_from(buffer, offset)
                if length > FRAME_BYTES_MAX or length < 1:
                    raise FrameError(f"frame length {length} out of bounds")
                if len(buffer) - offset - 4 < length:
                    break
                # A copy: views into the buffer would pin it against the trim below.
                body = memoryview(bytes(buffer[offset + 4:offset + 4 + length]))
                frame = _decode_body(body[0], _Reader(body[1:]))
                offset += 4 + length
                yield frame
        finally:
            del buffer[:offset]
