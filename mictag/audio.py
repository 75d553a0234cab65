"""Decoding any audio file to mono 16 kHz float32, in bounded-memory chunks.

One definition shared by training and the runtime, so both see identical samples:
- decode in-process: libsndfile (soundfile) for WAV/AIFF/FLAC/OGG-Vorbis/Opus/MP3, which it
  reads fastest; PyAV (FFmpeg's libraries, bundled in its wheel) for everything else
  (M4A/AAC, WMA, ...). No subprocess per file;
- downmix by the MEAN of the channels, ourselves, whatever the decoder (identical channels give
  back the mono signal unchanged, the level an AST trained on single-channel AudioSet expects;
  FFmpeg's own (L+R)/sqrt(2) would shift every log-mel value by ln 2);
- resample with soxr's high-quality streaming resampler, ourselves, whatever the decoder.
:func:`load` is exactly the concatenation of :class:`AudioStream`'s chunks. A file that breaks
after some audio decoded keeps that audio; :attr:`AudioStream.partial` says why it stopped.
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
    decoder: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.frames >= 0 else float("nan")


def downmix(block: np.ndarray) -> np.ndarray:
    """(samples, channels) or (samples,) -> (samples,) float32, by the mean of the channels."""
    if block.ndim == 1:
        return block.astype(np.float32, copy=False)
    # Column by column: a strided reduce over a (n, 2) array is ~10x slower than two adds.
    out = block[:, 0].astype(np.float32, copy=True)
    for c in range(1, block.shape[1]):
        out += block[:, c]
    if block.shape[1] > 1:
        out *= np.float32(1.0 / block.shape[1])
    return out


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


def _reason(exc: Exception, path: str | None = None) -> str:
    """The decoder's complaint without the file name (the row already names the file)."""
    text = getattr(exc, "strerror", None) or str(exc)
    text = text.strip()
    if text.lower().startswith("error opening") and ":" in text:
        text = text.split(":", 1)[-1].strip()
    if path:
        for quoted in (f"'{path}'", f'"{path}"', path):
            text = text.replace(quoted, "").strip(" :")
    return text.strip(" .'\"") or type(exc).__name__


class _SoundFileSource:
    name = "libsndfile"
    PIECE_FRAMES = 16384  # frames per libsndfile read

    def __init__(self, path: str):
        import soundfile as sf

        self._f = sf.SoundFile(path)
        self.rate, self.channels, self.frames = self._f.samplerate, self._f.channels, self._f.frames
        self.format = self._f.format

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        # A read that ends in a decoder error raises and discards everything it read, so read in
        # small pieces: when a file breaks mid-way (a truncated FLAC), the pieces before the break
        # are yielded first and at most one piece is lost.
        while True:
            pieces, have, ended = [], 0, False
            try:
                while have < frames:
                    want = min(self.PIECE_FRAMES, frames - have)
                    piece = self._f.read(want, dtype="float32", always_2d=True)
                    if piece.shape[0]:
                        pieces.append(piece)
                        have += piece.shape[0]
                    if piece.shape[0] < want:
                        ended = True
                        break
            except Exception:
                if pieces:
                    yield np.concatenate(pieces)
                raise
            if pieces:
                yield pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
            if ended:
                return

    def close(self) -> None:
        self._f.close()


class _PyAVSource:
    name = "ffmpeg"

    def __init__(self, path: str):
        import av

        self._container = av.open(path, metadata_errors="ignore")
        streams = self._container.streams.audio
        if not streams:
            self._container.close()
            raise AudioError(f"{path}: no audio stream")
        self._stream = streams[0]
        ctx = self._stream.codec_context
        if ctx is None:  # e.g. a WAV header around a codec FFmpeg cannot decode in WAV
            self._container.close()
            raise AudioError(f"{path}: its audio codec is not supported (the container is "
                             f"{self._container.format.name})")
        self.rate, self.channels = ctx.sample_rate, ctx.channels
        if not self.rate or not self.channels:
            self._container.close()
            raise AudioError(f"{path}: the audio stream has no sample rate or channels")
        duration = self._stream.duration
        self.frames = int(duration * self._stream.time_base * self.rate) if duration else -1
        self.format = self._container.format.name

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        pending, have = [], 0
        for packet in self._container.demux(self._stream):
            for frame in packet.decode():
                array = frame.to_ndarray()
                if frame.format.is_planar:
                    block = array.T  # (channels, samples) -> (samples, channels)
                else:
                    block = array.reshape(-1, len(frame.layout.channels))
                if block.dtype.kind == "i":
                    block = block.astype(np.float32) / np.float32(-np.iinfo(block.dtype).min)
                elif block.dtype.kind == "u":  # 8-bit unsigned PCM
                    block = (block.astype(np.float32) - 128.0) / 128.0
                pending.append(block.astype(np.float32, copy=False))
                have += block.shape[0]
                if have >= frames:
                    yield np.concatenate(pending)
                    pending, have = [], 0
        if pending:
            yield np.concatenate(pending)

    def close(self) -> None:
        self._container.close()


def _open(path: str):
    """The first decoder that opens ``path``: libsndfile, then FFmpeg (when PyAV is installed)."""
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory")
    try:
        if os.path.getsize(path) == 0:
            raise AudioError(f"{path}: the file is empty")
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({_reason(exc)})") from None
    try:
        return _SoundFileSource(path)
    except Exception as exc:
        first = _reason(exc, path)
        if isinstance(exc, OSError) and "ermission" in first:
            raise AudioError(f"{path}: cannot read (permission denied)") from None
    try:
        import av  # noqa: F401
    except ImportError:
        raise AudioError(f"{path}: cannot decode ({first}; install PyAV for more formats)") from None
    try:
        return _PyAVSource(path)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: not a decodable audio file ({_reason(exc, path)})") from None


class AudioStream:
    """A file as mono 16 kHz float32 chunks (memory bounded by ``chunk_seconds``).

    ``info`` is known once constructed; ``partial`` is set if decoding broke after some audio
    (the chunks before the break are kept); an error before any audio raises :class:`AudioError`.
    """

    def __init__(self, path: str | os.PathLike, chunk_seconds: float = CHUNK_SECONDS):
        self.path = os.fspath(path)
        self.chunk_seconds = chunk_seconds
        self._source = _open(self.path)
        s = self._source
        self.info = AudioInfo(self.path, s.rate, s.channels, s.frames, s.format, s.name)
        self.partial: str | None = None
        self.samples = 0  # 16 kHz samples yielded so far

    def __iter__(self) -> Iterator[np.ndarray]:
        source = self._source
        resample = Resampler(source.rate)
        block_frames = max(1, int(self.chunk_seconds * source.rate))
        decoded = 0
        try:
            for block in source.blocks(block_frames):
                decoded += block.shape[0]
                out = resample(downmix(block))
                if out.size:
                    self.samples += out.size
                    yield out
            tail = resample(np.zeros(0, np.float32), last=True)
            if tail.size:
                self.samples += tail.size
                yield tail
            # A decoder that silently stops early (a truncated MP3) is caught against the length
            # the header promised; the slack covers headers that only estimate it.
            promised = source.frames
            if promised > 0 and decoded and promised - decoded > max(1.0 * source.rate, 0.02 * promised):
                self.partial = (f"decoding ended at {decoded / source.rate:.2f} s of the "
                                f"{promised / source.rate:.2f} s the header promises")
        except (GeneratorExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if self.samples == 0:
                raise AudioError(f"{self.path}: decoding failed ({_reason(exc)})") from None
            self.partial = f"decoding stopped at {self.samples / TARGET_RATE:.2f} s ({_reason(exc)})"
        finally:
            source.close()


def info(path: str | os.PathLike) -> AudioInfo:
    stream = AudioStream(path)
    stream._source.close()
    return stream.info


def stream(path: str | os.PathLike, chunk_seconds: float = CHUNK_SECONDS) -> Iterator[np.ndarray]:
    """Yield the file as mono 16 kHz float32 chunks."""
    yield from AudioStream(path, chunk_seconds)


def load(path: str | os.PathLike) -> np.ndarray:
    """The whole file as mono 16 kHz float32 (the concatenation of :func:`stream`)."""
    chunks = list(stream(path))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
