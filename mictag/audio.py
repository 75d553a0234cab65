"""Decoding any audio file to mono 16 kHz float32, in bounded-memory chunks.

One definition shared by training and the runtime, so both see identical samples:
- decode with libsndfile (soundfile): WAV/AIFF/FLAC/OGG-Vorbis/Opus/MP3, in-process;
- downmix by the MEAN of the channels (identical channels give back the mono signal unchanged,
  the level an AST trained on single-channel AudioSet expects; ffmpeg's (L+R)/sqrt(2) would
  shift every log-mel value by ln 2);
- resample with soxr's high-quality streaming resampler.
:func:`load` is exactly the concatenation of :func:`stream`'s chunks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mictag.errors import MictagError

TARGET_RATE = 16000
CHUNK_SECONDS = 30.0


class AudioError(MictagError):
    """A file that cannot be decoded; the message names the file and the reason."""


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int  # at the source rate; -1 if unknown
    format: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.frames >= 0 else float("nan")


def downmix(block: np.ndarray) -> np.ndarray:
    """(samples, channels) or (samples,) -> (samples,) float32, by the mean of the channels."""
    if block.ndim == 1:
        return block.astype(np.float32, copy=False)
    return block.mean(axis=1, dtype=np.float32)


class Resampler:
    """Streaming mono resampler to 16 kHz (soxr 'HQ'); a pass-through at 16 kHz."""

    def __init__(self, source_rate: int, target_rate: int = TARGET_RATE):
        self.passthrough = source_rate == target_rate
        if not self.passthrough:
            import soxr

            self._stream = soxr.ResampleStream(source_rate, target_rate, 1, dtype="float32", quality="HQ")

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.passthrough:
            return block
        return self._stream.resample_chunk(block, last=last)


def _open(path: str | os.PathLike):
    import soundfile as sf

    try:
        return sf.SoundFile(os.fspath(path))
    except Exception as exc:
        reason = str(exc).split(":", 1)[-1].strip() or type(exc).__name__
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            reason = "the file is empty"
        raise AudioError(f"{os.fspath(path)}: cannot decode ({reason})") from exc


def info(path: str | os.PathLike) -> AudioInfo:
    with _open(path) as f:
        return AudioInfo(os.fspath(path), f.samplerate, f.channels, f.frames, f.format)


def stream(path: str | os.PathLike, chunk_seconds: float = CHUNK_SECONDS) -> Iterator[np.ndarray]:
    """Yield the file as mono 16 kHz float32 chunks (memory bounded by ``chunk_seconds``)."""
    with _open(path) as f:
        resample = Resampler(f.samplerate)
        block_frames = max(1, int(chunk_seconds * f.samplerate))
        try:
            while True:
                block = f.read(block_frames, dtype="float32", always_2d=True)
                last = block.shape[0] < block_frames
                out = resample(downmix(block), last=last)
                if out.size:
                    yield out
                if last:
                    break
        except AudioError:
            raise
        except Exception as exc:
            raise AudioError(f"{os.fspath(path)}: decoding failed ({exc})") from exc


def load(path: str | os.PathLike) -> np.ndarray:
    """The whole file as mono 16 kHz float32 (the concatenation of :func:`stream`)."""
    chunks = list(stream(path))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
