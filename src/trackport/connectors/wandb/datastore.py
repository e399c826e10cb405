"""Reader of W&B's `.wandb` transaction log (no wandb import: payloads are returned as bytes).

Format (as written by wandb-core, checked on files written by wandb 0.31; the
LevelDB log format is documented at
https://github.com/google/leveldb/blob/main/doc/log_format.md):

- a 7-byte file header: `:W&B`, magic 0xBEE1 (uint16 little-endian), version 0;
- then records in 32 KiB blocks counted from the start of the file (the header
  takes the first 7 bytes of block 0).  Each record: a 7-byte header (uint32
  checksum, uint16 length, uint8 type; little-endian) and `length` payload bytes.
  Types FULL=1, FIRST=2, MIDDLE=3, LAST=4 (FIRST/MIDDLE*/LAST chain one payload
  across blocks).  Fewer than 7 bytes left in a block are zero padding.
- the checksum is plain CRC-32 (zlib) of the type byte followed by the payload,
  NOT LevelDB's masked CRC-32C.

Each complete payload is one serialized `wandb.proto.wandb_internal_pb2.Record`.

A file cut mid-record (a crashed or still-running process) is read up to the
tear; `LogReader.tear` then says where and why, and the caller reports it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

FILE_IDENT = b":W&B"
FILE_MAGIC = 0xBEE1
FILE_VERSION = 0
FILE_HEADER = struct.Struct("<4sHB")
BLOCK_SIZE = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 7

FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

_TYPE_CRC = [zlib.crc32(bytes([t])) for t in range(256)]


class DatastoreError(ValueError):
    """The file is not a `.wandb` transaction log at all."""


@dataclass
class Tear:
    """Where reading stopped early, and why."""

    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.reason} at byte {self.offset}"


def checksum(record_type: int, payload: bytes) -> int:
    return zlib.crc32(payload, _TYPE_CRC[record_type]) & 0xFFFFFFFF


class LogReader:
    """Streams the payloads of a `.wandb` file, one record at a time.

    >>> reader = LogReader(path)
    >>> for payload in reader: ...
    >>> reader.tear   # None when the file ended cleanly
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tear: Tear | None = None
        self.records = 0

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as fh:
            yield from self._read(fh)

    def _read(self, fh: BinaryIO) -> Iterator[bytes]:
        head = fh.read(FILE_HEADER.size)
        if len(head) < FILE_HEADER.size:
            if len(head) == 0:
                self.tear = Tear(0, "empty file")
                return
            raise DatastoreError(f"{self.path}: too short for a .wandb header ({len(head)} bytes)")
        ident, magic, version = FILE_HEADER.unpack(head)
        if ident != FILE_IDENT or magic != FILE_MAGIC:
            raise DatastoreError(f"{self.path}: not a .wandb transaction log (header {head!r})")
        if version != FILE_VERSION:
            raise DatastoreError(f"{self.path}: .wandb format version {version} is not supported "
                                 f"(this reader knows version {FILE_VERSION})")
        offset = FILE_HEADER.size
        block = head + fh.read(BLOCK_SIZE - FILE_HEADER.size)
        block_start = 0
        pos = FILE_HEADER.size
        pending: list[bytes] | None = None
        pending_offset = 0
        while True:
            if BLOCK_SIZE - pos < RECORD_HEADER_SIZE:
                # trailer padding, then the next block
                block_start += BLOCK_SIZE
                block = fh.read(BLOCK_SIZE)
                pos = 0
                if not block:
                    break
            offset = block_start + pos
            if pos >= len(block):
                break  # clean end of file
            if len(block) - pos < RECORD_HEADER_SIZE:
                self.tear = Tear(offset, "file ends inside a record header")
                return
            crc, length, record_type = RECORD_HEADER.unpack_from(block, pos)
            if record_type == 0 and length == 0 and crc == 0:
                # zero padding: preallocated or zero-filled tail
                if not any(block[pos:]):
                    if pending is not None:
                        self.tear = Tear(pending_offset, "file ends inside a multi-block record")
                    return
            start = pos + RECORD_HEADER_SIZE
            end = start + length
            if end > BLOCK_SIZE:
                self.tear = Tear(offset, f"record length {length} crosses its block boundary")
                return
            if end > len(block):
                self.tear = Tear(offset, "file ends inside a record")
                return
            payload = bytes(block[start:end])
            if record_type not in (FULL, FIRST, MIDDLE, LAST):
                self.tear = Tear(offset, f"unknown record type {record_type}")
                return
            if checksum(record_type, payload) != crc:
                self.tear = Tear(offset, "checksum mismatch")
                return
            pos = end
            if record_type == FULL:
                if pending is not None:
                    self.tear = Tear(pending_offset, "multi-block record interrupted")
                    return
                self.records += 1
                yield payload
            elif record_type == FIRST:
                if pending is not None:
                    self.tear = Tear(pending_offset, "multi-block record interrupted")
                    return
                pending, pending_offset = [payload], offset
            else:
                if pending is None:
                    self.tear = Tear(offset, "continuation record without a first part")
                    return
                pending.append(payload)
                if record_type == LAST:
                    self.records += 1
                    whole = b"".join(pending)
                    pending = None
                    yield whole
        if pending is not None:
            self.tear = Tear(pending_offset, "file ends inside a multi-block record")


def write_log(path: str | Path, payloads: list[bytes]) -> None:
    """Write payloads in the same format (tests use it to build multi-block files)."""
    out = bytearray(FILE_HEADER.pack(FILE_IDENT, FILE_MAGIC, FILE_VERSION))
    for payload in payloads:
        first = True
        rest = payload
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < RECORD_HEADER_SIZE:
                out.extend(b"\x00" * left)
                left = BLOCK_SIZE
            room = left - RECORD_HEADER_SIZE
            chunk, rest = rest[:room], rest[room:]
            if first and not rest:
                kind = FULL
            elif first:
                kind = FIRST
            elif rest:
                kind = MIDDLE
            else:
                kind = LAST
            out.extend(RECORD_HEADER.pack(checksum(kind, chunk), len(chunk), kind))
            out.extend(chunk)
            first = False
            if not rest:
                break
    Path(path).write_bytes(bytes(out))
