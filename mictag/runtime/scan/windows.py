"""Model windows cut from a decoding stream, with bounded memory.

``frame_windows``: the file's log-mel frames are computed once, chunk by chunk as it decodes, and
windows of ``target_frames`` are sliced from that frame stream every ``hop`` frames, so
overlapping windows cost no extra front-end work (the fbank-input graph).
``sample_windows``: the same windows as raw 16 kHz samples (the waveform-input graph).
Both follow :func:`mictag.frontends.window_starts`: the last window may be partial and is padded in
the fbank domain through its valid count; a file with no frames still yields one window. A centred
front end (musicnn's) frames the stream with its edge padding, so sample windows carry it too.
Each window is cut into an array of :func:`window_shape`, a fresh one or, given ``alloc``, one the
caller provides (a decode worker's shared-memory slot: :mod:`mictag.runtime.scan.shm_slots`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from mictag import frontends
from mictag.frontends import FbankConfig


Alloc = Callable[[], np.ndarray]  # an array of window_shape to cut the next window into


def window_shape(cfg: FbankConfig, variant: str) -> tuple[int, ...]:
    """A model window's array: (target_frames, mel_bins) raw log-mel frames for the fbank-input
    graph (``variant`` "fbank"), (window_samples,) 16 kHz samples for the waveform-input one."""
    return (cfg.target_frames, cfg.num_mel_bins) if variant == "fbank" else (cfg.window_samples,)


def _filled(alloc: Alloc | None, shape: tuple[int, ...], piece: np.ndarray) -> np.ndarray:
    """``piece`` zero-padded to ``shape``, in a fresh array or in the one ``alloc`` gives."""
    if alloc is None:
        out = np.zeros(shape, np.float32)
        out[: piece.shape[0]] = piece
        return out
    out = alloc()
    out[: piece.shape[0]] = piece
    out[piece.shape[0] :] = 0  # a reused buffer holds an older window
    return out


@dataclass
class Window:
    index: int
    start_frame: int
    data: np.ndarray  # (target_frames, mel) raw log-mel, or (window_samples,) samples; zero-padded
    valid: int  # valid frames (frame windows) or valid samples (sample windows)

    def seconds(self, cfg: FbankConfig) -> tuple[float, float]:
        """Start and end of the audio the window's valid part covers, in seconds of the file.

        Kaldi frames (snip edges) cover their samples; centred frames (musicnn) stand for one hop
        each around their centre, so consecutive windows tile the file and the last may end up
        to one hop past it."""
        rate, shift = cfg.sample_rate, cfg.frame_shift
        start = self.start_frame * shift
        if cfg.edge_pad:
            frames = self.valid if self.data.ndim == 2 else frontends.frame_count(self.valid, cfg)
            return start / rate, (start + frames * shift) / rate
        if self.data.ndim == 2:
            return start / rate, (start + self.valid * shift + (cfg.frame_length - shift if self.valid else 0)) / rate
        return start / rate, (start + self.valid) / rate


def frame_windows(chunks: Iterable[np.ndarray], cfg: FbankConfig, hop: int, alloc: Alloc | None = None
                  ) -> Iterator[Window]:
    """Windows of raw log-mel frames from a stream of 16 kHz chunks (each in an ``alloc()`` array
    if given)."""
    stream = frontends.FbankStream(cfg)
    size = cfg.target_frames
    buf = np.zeros((0, cfg.num_mel_bins), np.float32)
    buf_start = 0  # frame index of buf[0]
    index = 0

    def cut(start: int) -> Window:
        nonlocal index
        rel = start - buf_start
        piece = buf[rel : rel + size]
        w = Window(index, start, _filled(alloc, (size, cfg.num_mel_bins), piece), piece.shape[0])
        index += 1
        return w

    for chunk in chunks:
        new = stream.push(chunk)
        if new.shape[0]:
            buf = np.concatenate([buf, new]) if buf.shape[0] else new
        while buf_start + buf.shape[0] >= index * hop + size:  # a complete window is ready
            yield cut(index * hop)
            drop = min(index * hop - buf_start, buf.shape[0])
            buf, buf_start = buf[drop:], buf_start + drop
    last = stream.finish()
    if last.shape[0]:
        buf = np.concatenate([buf, last]) if buf.shape[0] else last
    total = stream.frames_emitted
    for start in frontends.window_starts(total, hop, size)[index:]:
        yield cut(start)


def sample_windows(chunks: Iterable[np.ndarray], cfg: FbankConfig, hop: int, alloc: Alloc | None = None
                   ) -> Iterator[Window]:
    """The same windows as :func:`frame_windows`, as zero-padded 16 kHz samples."""
    size = cfg.window_samples
    step = hop * cfg.frame_shift
    buf = np.zeros(0, np.float32)
    buf_start = 0  # sample index of buf[0]
    index = 0
    total = 0

    def cut(start_sample: int) -> Window:
        nonlocal index
        rel = start_sample - buf_start
        piece = buf[rel : rel + size]
        w = Window(index, start_sample // cfg.frame_shift, _filled(alloc, (size,), piece), piece.shape[0])
        index += 1
        return w

    padder = frontends.EdgePadder(cfg.edge_pad)

    def padded() -> Iterator[np.ndarray]:
        for chunk in chunks:
            yield padder.push(chunk)
        yield padder.finish()

    for chunk in padded():
        total += chunk.shape[0]
        buf = np.concatenate([buf, chunk]) if buf.shape[0] else np.asarray(chunk, np.float32)
        while buf_start + buf.shape[0] >= index * step + size:
            yield cut(index * step)
            drop = min(index * step - buf_start, buf.shape[0])
            buf, buf_start = buf[drop:], buf_start + drop
    for start in frontends.window_starts(frontends.frame_count(total, cfg), hop, cfg.target_frames)[index:]:
        yield cut(start * cfg.frame_shift)
