"""TensorFlow checkpoints (the "tensor bundle" format) read without TensorFlow.

A checkpoint ``PREFIX`` is ``PREFIX.index``, an SSTable (LevelDB's table format: uncompressed
blocks of prefix-compressed keys, an index block, a 48-byte footer) whose values are protobuf
``BundleEntryProto`` messages (dtype, shape, shard, offset, size), and
``PREFIX.data-00000-of-00001``, the raw little-endian tensor bytes. The key ``""`` holds the
``BundleHeaderProto``. :func:`write_bundle` writes the same format (for tests and round trips).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from mictag.errors import CheckpointError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER = 5  # compression type byte + crc32c
# tensorflow/core/framework/types.proto
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DTYPE_CODES = {np.dtype(v): k for k, v in DTYPES.items()}
OPTIMIZER_MARKERS = ("/Adam", "/Momentum", "/RMSProp", "/Adagrad", "beta1_power", "beta2_power", "global_step")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint in a checkpoint index")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: varints as ints, the rest as bytes."""
    out, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire} in a checkpoint index")
        out.append((field, value))
    return out


def _block_entries(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    block = data[offset : offset + size]
    if len(block) != size or offset + size + BLOCK_TRAILER > len(data):
        raise CheckpointError("a checkpoint index block runs past the end of the file")
    if data[offset + size] != 0:
        raise CheckpointError("compressed checkpoint index blocks are not supported")
    (n_restarts,) = struct.unpack_from("<I", block, size - 4)
    end = size - 4 - 4 * n_restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + vlen]))
        pos += vlen
    return entries


def _handle(buf: bytes, pos: int = 0) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def read_index(index_path: str | os.PathLike) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, shard, offset, size} from a bundle's ``.index`` file."""
    data = Path(index_path).read_bytes()
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"{index_path} is too short to be a TensorFlow checkpoint index")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack("<Q", footer[-8:])[0] != TABLE_MAGIC:
        raise CheckpointError(f"{index_path} is not a TensorFlow checkpoint index (bad table magic)")
    _, _, pos = _handle(footer)  # metaindex: unused
    index_offset, index_size, _ = _handle(footer, pos)
    entries: dict[str, dict] = {}
    for _, handle in _block_entries(data, index_offset, index_size):
        offset, size, _ = _handle(handle)
        for key, value in _block_entries(data, offset, size):
            if not key:
                continue  # the BundleHeaderProto
            entry = {"dtype": None, "shape": [], "shard": 0, "offset": 0, "size": 0}
            for field, v in _proto_fields(value):
                if field == 1:
                    entry["dtype"] = v
                elif field == 2:
                    for f, dim in _proto_fields(v):
                        if f == 2:
                            entry["shape"].append(next((d for g, d in _proto_fields(dim) if g == 1), 0))
                elif field == 3:
                    entry["shard"] = v
                elif field == 4:
                    entry["offset"] = v
                elif field == 5:
                    entry["size"] = v
                elif field == 7:
                    raise CheckpointError(f"{key.decode()} is a partitioned (sliced) variable: not supported")
            entries[key.decode("utf-8")] = entry
    return entries


def is_optimizer_state(name: str) -> bool:
    return any(marker in name for marker in OPTIMIZER_MARKERS)


def read_bundle(prefix: str | os.PathLike, skip_optimizer: bool = True) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint ``prefix`` (``prefix.index`` + ``prefix.data-*``) as numpy
    arrays; Adam/momentum slots and step counters are skipped unless ``skip_optimizer`` is False."""
    prefix = str(prefix)
    index = Path(prefix + ".index")
    if not index.is_file():
        raise CheckpointError(f"{index} does not exist")
    entries = read_index(index)
    shards = {e["shard"] for e in entries.values()}
    total = max(shards, default=0) + 1
    data = {}
    for s in shards:
        path = Path(f"{prefix}.data-{s:05d}-of-{total:05d}")
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        data[s] = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, e in sorted(entries.items()):
        if skip_optimizer and is_optimizer_state(name):
            continue
        if e["dtype"] not in DTYPES:
            raise CheckpointError(f"{name}: unsupported TensorFlow dtype code {e['dtype']}")
        dtype = np.dtype(DTYPES[e["dtype"]]).newbyteorder("<")
        count = int(np.prod(e["shape"], dtype=np.int64)) if e["shape"] else 1
        if count * dtype.itemsize != e["size"] or e["offset"] + e["size"] > data[e["shard"]].shape[0]:
            raise CheckpointError(f"{name}: {e['size']} bytes at {e['offset']} do not hold a {e['shape']} {dtype}")
        raw = np.asarray(data[e["shard"]][e["offset"] : e["offset"] + e["size"]])
        out[name] = raw.view(dtype).reshape(e["shape"]).astype(dtype.newbyteorder("="), copy=True)
    return out


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """An uncompressed block with a restart point at every entry (no key sharing)."""
    body, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(body))
        body += _put_varint(0) + _put_varint(len(key)) + _put_varint(len(value)) + key + value
    restarts = restarts or [0]
    body += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(body)


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    tag = _put_varint(number << 3 | wire)
    if wire == 0:
        return tag + _put_varint(int(payload))
    return tag + _put_varint(len(payload)) + payload


def write_bundle(prefix: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Write ``tensors`` as a single-shard TensorFlow checkpoint at ``prefix``."""
    prefix = str(prefix)
    data, entries = bytearray(), []
    header = _field(1, 0, 1) + _field(3, 2, _field(1, 0, 1))  # num_shards 1, version {producer 1}
    entries.append((b"", header))
    for name in sorted(tensors):
        array = np.asarray(tensors[name])  # not ascontiguousarray: it turns a scalar into shape (1,)
        code = DTYPE_CODES.get(array.dtype)
        if code is None:
            raise CheckpointError(f"{name}: dtype {array.dtype} has no TensorFlow code here")
        shape = b"".join(_field(2, 2, _field(1, 0, d)) for d in array.shape)
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        proto = (_field(1, 0, code) + _field(2, 2, shape) + _field(4, 0, len(data)) + _field(5, 0, len(raw)))
        entries.append((name.encode("utf-8"), proto))
        data += raw
    Path(prefix + ".data-00000-of-00001").write_bytes(bytes(data))
    out = bytearray()
    data_block = _block(entries)
    data_handle = _put_varint(0) + _put_varint(len(data_block))
    out += data_block + b"\0\0\0\0\0"
    meta_block = _block([])
    meta_handle = _put_varint(len(out)) + _put_varint(len(meta_block))
    out += meta_block + b"\0\0\0\0\0"
    index_block = _block([(entries[-1][0] + b"\xff", data_handle)])
    index_handle = _put_varint(len(out)) + _put_varint(len(index_block))
    out += index_block + b"\0\0\0\0\0"
    footer = meta_handle + index_handle
    out += footer + b"\0" * (40 - len(footer)) + struct.pack("<Q", TABLE_MAGIC)
    Path(prefix + ".index").write_bytes(bytes(out))
