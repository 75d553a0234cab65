"""What every front end shares: snip-edges framing, the window rule, padding to the model's window,
normalisation, centred edge padding and chunked streaming, in numpy for the CPU runtime.

Each function takes a front-end config, always explicitly (:class:`~mictag.frontends.kaldi_fbank.FbankConfig`
or :class:`~mictag.frontends.musicnn_mel.MusicnnMelConfig`): both fold their framing and DFT into
one matrix and differ only in constants, edge padding and the compression of the mel energies.
"""

from __future__ import annotations

import math

import numpy as np

from mictag.frontends.spectral import SpectralFrontEnd, frame_count


def hop_frames(hop_seconds: float, cfg: SpectralFrontEnd) -> int:
    """A window hop in seconds as a whole number of frames (it must be a multiple of the shift)."""
    frames = hop_seconds * cfg.sample_rate / cfg.frame_shift
    rounded = round(frames)
    if rounded < 1 or abs(frames - rounded) > 1e-6:
        step = cfg.frame_shift / cfg.sample_rate
        raise ValueError(f"window hop {hop_seconds} s must be a positive multiple of {step} s")
    return rounded


def window_starts(total_frames: int, hop: int, window: int) -> list[int]:
    """The window rule: first frames of the windows covering ``total_frames`` frames.

    Windows of ``window`` frames start every ``hop`` frames until one reaches the end; the last
    may be partial (it is padded in the fbank domain). A stream with no frames still gets one
    (entirely padded) window, so every file yields at least one.
    """
    if hop <= 0 or window <= 0:
        raise ValueError("hop and window must be positive")
    if total_frames <= window:
        return [0]
    return [i * hop for i in range(1 + math.ceil((total_frames - window) / hop))]


def log_mel(waveform: np.ndarray, cfg: SpectralFrontEnd) -> np.ndarray:
    """Raw (un-normalised) log-mel frames of a mono waveform, snip-edges framing (a centred front
    end's edge padding is the caller's: see :class:`EdgePadder`): (frames, mel_bins).

    Accepts (samples,) or (batch, samples); computes in float32. ``cfg`` is any front-end config
    (the Kaldi fbank or musicnn's mel).
    """
    w = np.asarray(waveform, dtype=np.float32)
    if w.ndim not in (1, 2):
        raise ValueError(f"waveform must be 1-D or 2-D, got shape {w.shape}")
    n = w.shape[-1]
    count = frame_count(n, cfg)
    if count == 0:
        return np.zeros(w.shape[:-1] + (0, cfg.num_mel_bins), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(w, cfg.frame_length, axis=-1)
    frames = frames[..., : (count - 1) * cfg.frame_shift + 1 : cfg.frame_shift, :]
    spec = frames @ cfg.frame_matrix_f32
    power = np.square(spec[..., : cfg.num_bins]) + np.square(spec[..., cfg.num_bins :])
    return cfg.compress(power @ cfg.mel_matrix_f32)


def pad_frames(frames: np.ndarray, cfg: SpectralFrontEnd) -> tuple[np.ndarray, int]:
    """Cut or zero-pad (before normalisation) log-mel frames to ``target_frames``.

    Returns the padded (target_frames, mel_bins) array and the number of valid frames.
    """
    valid = min(frames.shape[0], cfg.target_frames)
    out = np.zeros((cfg.target_frames, cfg.num_mel_bins), dtype=np.float32)
    out[:valid] = frames[:valid]
    return out, valid


def normalize(frames: np.ndarray, cfg: SpectralFrontEnd) -> np.ndarray:
    """AudioSet normalisation: (fbank - mean) / (2 std)."""
    return ((frames - np.float32(cfg.norm_mean)) / np.float32(2.0 * cfg.norm_std)).astype(np.float32)


def model_input(waveform: np.ndarray, cfg: SpectralFrontEnd) -> np.ndarray:
    """The normalised (target_frames, mel_bins) model input of one clip, exactly as in training."""
    padded, _ = pad_frames(log_mel(edge_padded(waveform, cfg), cfg), cfg)
    return normalize(padded, cfg)


def edge_padded(waveform: np.ndarray, cfg: SpectralFrontEnd) -> np.ndarray:
    """A whole waveform with its front end's edge padding (none for Kaldi)."""
    padder = EdgePadder(cfg.edge_pad)
    return np.concatenate([padder.push(waveform), padder.finish()])


class EdgePadder:
    """Streams a waveform with ``pad`` samples reflected at each end (numpy's ``reflect``, as
    librosa's centred frames); a waveform shorter than ``pad + 1`` samples is zero-padded."""

    def __init__(self, pad: int):
        self.pad = pad
        self._head = np.zeros(0, np.float32)  # held until the first reflection is possible
        self._tail = np.zeros(0, np.float32)  # the last pad + 1 samples seen
        self._started = pad == 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if self.pad == 0:
            return chunk
        if not self._started:
            self._head = np.concatenate([self._head, chunk])
            if self._head.size <= self.pad:
                return np.zeros(0, np.float32)
            chunk, self._started = self._head, True
            self._tail = chunk[-(self.pad + 1):].copy()
            return np.concatenate([chunk[self.pad : 0 : -1], chunk])
        self._tail = np.concatenate([self._tail, chunk])[-(self.pad + 1):]
        return chunk

    def finish(self) -> np.ndarray:
        """The samples that end the padded stream."""
        if self.pad == 0:
            return np.zeros(0, np.float32)
        if not self._started:  # too short to reflect
            if self._head.size == 0:
                return self._head
            return np.pad(self._head, self.pad).astype(np.float32)
        return self._tail[-2::-1].copy()


class FbankStream:
    """Log-mel frames of an arbitrarily long waveform fed in chunks of any size, then ``finish``.

    The frames are those of the whole waveform computed in one shot: the samples a frame
    shares with the next chunk are carried over, so nothing is computed twice.
    """

    def __init__(self, cfg: SpectralFrontEnd):
        self.cfg = cfg
        self._padder = EdgePadder(cfg.edge_pad)
        self._carry = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0
        self.samples_seen = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add samples; return the frames completed by them, (k, mel_bins)."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self.samples_seen += chunk.shape[0]
        return self._frames(self._padder.push(chunk))

    def finish(self) -> np.ndarray:
        """The last frames, which a centred front end's end padding completes (none for Kaldi)."""
        return self._frames(self._padder.finish())

    def _frames(self, chunk: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self._carry, chunk]) if self._carry.size else chunk
        frames = log_mel(buf, self.cfg)
        consumed = frames.shape[0] * self.cfg.frame_shift
        self._carry = buf[consumed:].copy()
        self.frames_emitted += frames.shape[0]
        return frames
