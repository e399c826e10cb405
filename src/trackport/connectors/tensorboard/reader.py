"""Streaming TFRecord / event-file reading and writing, without TensorFlow.

The ONLY module of this connector that imports the `tensorboard` and
`tensorboardX` packages (lazily, inside functions).  Event files are TFRecord
streams: each record is `uint64 length, uint32 masked_crc32c(length), data,
uint32 masked_crc32c(data)`, little endian (format: tensorflow
core/lib/io/record_writer.h; tensorboardX/record_writer.py writes the same).
Records are read one at a time, so memory is bounded by the largest record.
A record cut short (a training still writing, a copy torn mid-file) or one
whose checksum does not match ends the file: everything before it is used and
the tear is reported with the file name and byte offset.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


def _crc32c_function():
    """The fastest CRC32C available: the `crc32c` package (C), else tensorboardX's pure Python."""
    try:
        from crc32c import crc32c  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - only without the optional speed-up
        from tensorboardX.crc32c import crc32c  # pure Python table implementation
    return crc32c


_crc = None


def masked_crc32c(data: bytes) -> int:
    global _crc
    if _crc is None:
        _crc = _crc32c_function()
    value = _crc(data) & 0xFFFFFFFF
    return (((value >> 15) | (value << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@dataclass(frozen=True)
class Tear:
    """Where and why reading an event file stopped early."""

    file: str
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason} at byte {self.offset}; read up to there"


class RecordReader:
    """Records of one TFRecord file from `start`, checked; `tear` is set when the file ends early."""

    def __init__(self, path: Path, start: int = 0, check_crc: bool = True, stop: int | None = None):
        self.path = Path(path)
        self.start = start
        self.stop = stop          # bytes beyond `stop` (written after the run was listed) are left
        self.check_crc = check_crc
        self.tear: Tear | None = None
        self.end = start          # offset just after the last good record

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        with open(self.path, "rb") as fh:
            fh.seek(self.start)
            offset = self.start
            while True:
                if self.stop is not None and offset >= self.stop:
                    return
                header = fh.read(_HEADER.size)
                if not header:
                    return
                if len(header) < _HEADER.size:
                    self._torn(offset, "record header cut short")
                    return
                length, length_crc = _HEADER.unpack(header)
                if self.stop is not None and offset + _HEADER.size + length + _FOOTER.size > self.stop:
                    if self.check_crc and masked_crc32c(header[:8]) == length_crc:
                        # A record completed after the listing: the next read picks it up.
                        if offset + _HEADER.size + length + _FOOTER.size <= os.fstat(fh.fileno()).st_size:
                            return
                    self._torn(offset, "record cut short")
                    return
                if self.check_crc and masked_crc32c(header[:8]) != length_crc:
                    self._torn(offset, "record length checksum mismatch")
                    return
                data = fh.read(length)
                footer = fh.read(_FOOTER.size)
                if len(data) < length or len(footer) < _FOOTER.size:
                    self._torn(offset, f"record of {length} bytes cut short")
                    return
                if self.check_crc and masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
                    self._torn(offset, "record data checksum mismatch")
                    return
                yield offset, data
                offset += _HEADER.size + length + _FOOTER.size
                self.end = offset

    def _torn(self, offset: int, reason: str) -> None:
        self.tear = Tear(str(self.path), offset, reason)


def read_record_at(path: Path, offset: int) -> bytes:
    """The data of the one record starting at `offset` (for files kept inside event files)."""
    reader = RecordReader(path, offset)
    for _, data in reader:
        return data
    raise ValueError(f"{path}: no readable record at byte {offset}")


# -- protos ---------------------------------------------------------------------

def protos():
    """TensorBoard's own compat protos (no TensorFlow needed)."""
    from tensorboard.compat.proto import (  # noqa: F401
        event_pb2,
        summary_pb2,
        tensor_pb2,
        tensor_shape_pb2,
        types_pb2,
    )
    from tensorboard.plugins.hparams import plugin_data_pb2

    class P:
        Event = event_pb2.Event
        Summary = summary_pb2.Summary
        SummaryMetadata = summary_pb2.SummaryMetadata
        HistogramProto = summary_pb2.HistogramProto
        TensorProto = tensor_pb2.TensorProto
        TensorShapeProto = tensor_shape_pb2.TensorShapeProto
        DataType = types_pb2
        HParamsPluginData = plugin_data_pb2.HParamsPluginData
        DATA_CLASS_SCALAR = summary_pb2.DATA_CLASS_SCALAR
        DATA_CLASS_TENSOR = summary_pb2.DATA_CLASS_TENSOR
        DATA_CLASS_UNKNOWN = summary_pb2.DATA_CLASS_UNKNOWN

    return P


def parse_event(data: bytes):
    return protos().Event.FromString(data)


def tensor_scalar(tensor) -> float:
    """The single number of a scalar tensor; the common encodings without numpy, others via TensorBoard."""
    if len(tensor.double_val) == 1:
        return tensor.double_val[0]
    if len(tensor.float_val) == 1:
        return tensor.float_val[0]
    return float(tensor_to_array(tensor).reshape(-1)[0])


def tensor_to_array(tensor):
    """A TensorProto as a numpy array (TensorBoard's own converter)."""
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(tensor)


# -- writing ------------------------------------------------------------------------

class EventWriter:
    """Synchronous event-file writer on tensorboardX's RecordWriter (file_version first)."""

    def __init__(self, path: Path, wall_time: float):
        from tensorboardX.record_writer import RecordWriter

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = RecordWriter(str(self.path))
        self.records = 0
        first = protos().Event(wall_time=wall_time, file_version="brain.Event:2")
        self.write(first)

    def write(self, event) -> None:
        self._writer.write(event.SerializeToString())
        self.records += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def event_file_names(directory: Path) -> list[Path]:
    """Event files of one directory, in TensorBoard's order (by name)."""
    try:
        names = sorted(n for n in os.listdir(directory) if "tfevents" in n)
    except FileNotFoundError:
        return []
    return [directory / n for n in names if (directory / n).is_file()]
