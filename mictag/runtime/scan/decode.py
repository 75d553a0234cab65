"""One file's decode, as the scan's workers run it: the file streamed in chunks, its windows cut
as they come (:mod:`mictag.runtime.scan.windows`), and what became of the file, as messages.

A worker process (:mod:`mictag.runtime.scan.decode_pool`), a Ray task (:mod:`mictag.runtime.scan.distributed`)
and the scan itself (``--workers 0``) all run :func:`decode_file`; it imports nothing of the scan
above it, so a spawned worker loads only what decoding needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from mictag.audio import AudioError, AudioStream
from mictag.frontends import FbankConfig
from mictag.runtime.scan.windows import Alloc, frame_windows, sample_windows

class Window(NamedTuple):
    """A window of file ``fid``, cut: ``data`` is its array, or where it waits (a shared-memory slot;
    the decode pool says which), ``valid`` its unpadded frames (or samples), ``seconds`` its span."""

    fid: int
    index: int
    start_frame: int
    data: object
    valid: int
    seconds: tuple[float, float]


class Done(NamedTuple):
    """File ``fid`` is decoded: its duration, windows sent, status and note; its size and mtime when
    its read began (what the row and resume record), where known."""

    fid: int
    duration: float
    windows: int
    status: str
    note: str
    size_bytes: int | None = None
    mtime: float | None = None


class Failed(NamedTuple):
    """File ``fid`` could not be decoded at all: why."""

    fid: int
    reason: str


DecodeMessage = Window | Done | Failed


# The note of a file whose every sample is zero: it is scored, but gets no tags (no instrument
# plays in it, whatever a model trained on music makes of zeros).
SILENCE = "digital silence"


def _peak_tracked(stream: AudioStream, state: dict) -> Iterator[np.ndarray]:
    for chunk in stream:
        if chunk.size:
            state["peak"] = max(state["peak"], float(np.abs(chunk).max()))
        yield chunk


def _changed(path: str, before: os.stat_result) -> str:
    """Why the file is not what was read, or "" (it is unchanged since the read began)."""
    try:
        after = os.stat(path)
    except FileNotFoundError:
        return "the file was deleted while it was read"
    except OSError:
        return ""
    if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
        return ""
    if after.st_size != before.st_size:
        return (f"the file changed while it was read ({before.st_size:,} -> {after.st_size:,} bytes; still being "
                f"written?): rerun to tag it as it is then")
    return "the file was modified while it was read: rerun to tag it as it is then"


def decode_file(fid: int, path: str, cfg: FbankConfig, variant: str, hop: int, chunk_seconds: float,
                alloc: Alloc | None = None) -> Iterator[DecodeMessage]:
    """Messages for one file: its :class:`Window` s, then :class:`Done`, or :class:`Failed`.
    size and mtime are the file's when its read began: what the row (and resume) records. A file
    that changes while it is read is ``partial``, so that the next run does it again. ``data`` is
    cut into an ``alloc()`` array if given (a worker's shared-memory slot), else a fresh one."""
    try:
        try:
            before = os.stat(path)
        except FileNotFoundError:
            if not os.path.islink(path):  # a dangling link is reported as unreadable, below
                yield Failed(fid, "the file was deleted after the library was listed")
                return
            before = None
        stream = AudioStream(path, chunk_seconds)
        state = {"peak": 0.0}
        cut = frame_windows if variant == "fbank" else sample_windows
        n = 0
        for w in cut(_peak_tracked(stream, state), cfg, hop, alloc):
            if stream.samples == 0:
                break  # nothing decoded: no window worth scoring
            yield Window(fid, w.index, w.start_frame, w.data, w.valid, w.seconds(cfg))
            n += 1
        duration = stream.samples / cfg.sample_rate
        seen = (before.st_size, before.st_mtime) if before else ()
        changed = _changed(path, before) if before else ""
        if stream.samples == 0:
            yield Done(fid, 0.0, 0, "error" if stream.partial or changed else "empty",
                       changed or stream.partial or "no audio in the file", *seen)
        elif stream.partial or changed:
            yield Done(fid, duration, n, "partial", changed or stream.partial, *seen)
        elif state["peak"] == 0.0:
            yield Done(fid, duration, n, "ok", SILENCE, *seen)
        else:
            yield Done(fid, duration, n, "ok", "", *seen)
    except AudioError as exc:
        yield Failed(fid, str(exc).split(": ", 1)[-1] if str(exc).startswith(path) else str(exc))
    except MemoryError:
        yield Failed(fid, "out of memory while decoding")
    except Exception as exc:  # a decoder bug must not end the scan: report it on the file
        yield Failed(fid, f"{type(exc).__name__}: {exc}")
