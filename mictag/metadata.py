"""The metadata an exported model carries (key ``mictag`` in the ONNX file, JSON), read without
torch and without loading the graph: everything the runtime needs (labels, thresholds, features,
window) comes from here.

An ONNX file is one protobuf ``ModelProto``; its ``metadata_props`` (field 14) follow the graph
(field 7), which holds the weights. :func:`onnx_metadata_props` walks the top-level fields and
skips the graph by its length, so reading the metadata of a 350 MB model touches a few bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mictag.errors import CheckpointError

METADATA_KEY = "mictag"
REQUIRED = ("labels", "thresholds", "sample_rate", "window_samples", "features")
_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {key = 1, value = 2}


def check_metadata(props: dict, path: str | os.PathLike) -> dict:
    """The parsed metadata from an ONNX model's custom metadata map, or a clear refusal."""
    if METADATA_KEY not in props:
        raise CheckpointError(f"{path} has no mictag metadata (labels, thresholds, features): export it with `mictag export`")
    try:
        meta = json.loads(props[METADATA_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{path}: its mictag metadata is not valid JSON ({exc})") from None
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: mictag metadata lacks {', '.join(missing)}")
    if len(meta["thresholds"]) != len(meta["labels"]):
        raise CheckpointError(f"{path}: mictag metadata has {len(meta['thresholds'])} thresholds for {len(meta['labels'])} labels")
    return meta


class _Truncated(ValueError):
    pass


def _varint(read) -> int:
    return _varint_rest(read, None)


def _varint_rest(read, first: int | None) -> int:
    value, shift = (first & 0x7F, 7) if first is not None else (0, 0)
    while True:
        byte = read(1)
        if not byte:
            raise _Truncated("the file ends inside a field")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a field header is malformed")


def _fields(read, skip):
    """(field number, wire type, value) of the top-level protobuf message in the stream, skipping
    (``skip(n)``) every length-delimited value but the metadata's."""
    while True:
        first = read(1)
        if not first:
            return  # the message ends with the file
        tag = first[0] if first[0] < 0x80 else _varint_rest(read, first[0])
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("it is not a protobuf message")
        if wire == 0:
            yield number, wire, _varint(read)
        elif wire == 1:
            skip(8)
        elif wire == 5:
            skip(4)
        elif wire == 2:
            length = _varint(read)
            if number == _METADATA_PROPS:
                data = read(length)
                if len(data) != length:
                    raise _Truncated("the file ends inside its metadata")
                yield number, wire, data
            else:
                skip(length)
        else:
            raise ValueError(f"wire type {wire} is not protobuf")


def _entry(data: bytes) -> tuple[str, str]:
    import io

    buf = io.BytesIO(data)
    key = value = ""
    while buf.tell() < len(data):
        tag = _varint(buf.read)
        number, wire = tag >> 3, tag & 7
        if wire != 2:
            raise ValueError("a metadata entry is malformed")
        length = _varint(buf.read)
        text = buf.read(length).decode("utf-8")
        if number == 1:
            key = text
        elif number == 2:
            value = text
    return key, value


def onnx_metadata_props(path: str | os.PathLike) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` as a dict, read by skipping the graph (no onnx package)."""
    size = os.path.getsize(path)
    props: dict[str, str] = {}
    with open(path, "rb") as f:
        def skip(n: int) -> None:
            if f.tell() + n > size:
                raise _Truncated("the file is cut short")
            f.seek(n, os.SEEK_CUR)

        for number, _, value in _fields(f.read, skip):
            if number == _METADATA_PROPS:
                key, text = _entry(value)
                props[key] = text
    return props


def int8_path(model: str | os.PathLike) -> Path:
    """Where the calibrated int8 variant of an fp32 ONNX model lives: ``<stem>.int8.onnx`` beside it
    (written by ``mictag export --precision int8``, found by the runtime's ``auto``)."""
    model = Path(model)
    return model.with_name(f"{model.stem}.int8{model.suffix}")


def read_metadata(path: str | os.PathLike) -> dict:
    """The mictag metadata of an exported ONNX model, without loading the model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model {path} does not exist")
    try:
        props = onnx_metadata_props(path)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable ONNX model: {exc}") from None
    return check_metadata(props, path)
