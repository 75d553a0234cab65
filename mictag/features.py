"""The AST front end, defined once: Kaldi log-mel filterbank constants, the window rule, and a numpy
implementation for CPU streaming.

The AST was pretrained on ``torchaudio.compliance.kaldi.fbank(w, htk_compat=True,
sample_frequency=16000, use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0,
frame_shift=10)``. Everything from the 400-sample frame to the DFT (per-frame DC removal,
pre-emphasis, symmetric Hann window, zero padding to 512, real DFT) is linear in the frame, so it
folds into one (400 -> 2*257) matrix. Power, a (257 -> 128) mel matrix and a floored log follow.
The torch module (``mictag.model.fbank``), the exported graph and this numpy path all build from
:class:`FbankConfig`'s matrices, so training, export and runtime share one definition.

AST's own data loader subtracts the clip's mean from the waveform first. Per-frame DC removal
already cancels any constant offset exactly, so that step changes nothing here and is omitted;
this is what makes a file's frames independent of how it is cut into chunks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

# float32 machine epsilon: Kaldi's log floor (torchaudio uses torch.finfo(float32).eps).
LOG_FLOOR = float(np.finfo(np.float32).eps)


def exact_div(a: int, b: int) -> int:
    """``a // b``, failing loudly when ``b`` does not divide ``a``."""
    if a % b:
        raise ValueError(f"{a} is not a multiple of {b}")
    return a // b


def kaldi_mel(freq_hz: np.ndarray | float) -> np.ndarray:
    """Kaldi/HTK mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq_hz, dtype=np.float64) / 700.0)


@dataclass(frozen=True)
class FbankConfig:
    """The log-mel front end of an AST-family model. The defaults are AudioSet AST's."""

    kind = "kaldi-fbank"
    sample_rate: int = 16000
    frame_length: int = 400  # 25 ms
    frame_shift: int = 160  # 10 ms
    n_fft: int = 512  # frame zero-padded to the next power of two
    num_mel_bins: int = 128
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0 means Nyquist + high_freq (Kaldi convention)
    preemphasis: float = 0.97
    target_frames: int = 1024  # frames per model window: 10.24 s
    norm_mean: float = -4.2677393  # AudioSet statistics of the fbank
    norm_std: float = 4.5689974

    def __post_init__(self) -> None:
        if self.frame_length > self.n_fft:
            raise ValueError("frame_length must not exceed n_fft")
        if self.frame_shift <= 0 or self.target_frames <= 0 or self.num_mel_bins <= 0:
            raise ValueError("frame_shift, target_frames and num_mel_bins must be positive")

    @property
    def edge_pad(self) -> int:
        """Samples padded at each end of a file before framing: none (Kaldi's snip_edges)."""
        return 0

    @property
    def num_bins(self) -> int:
        """Number of one-sided DFT bins (257 for a 512-point DFT)."""
        return self.n_fft // 2 + 1

    @property
    def window_samples(self) -> int:
        """Samples that make exactly ``target_frames`` frames: 164,080 for AST."""
        return samples_for_frames(self.target_frames, self)

    @property
    def window_seconds(self) -> float:
        return self.target_frames * self.frame_shift / self.sample_rate

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "FbankConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @cached_property
    def frame_matrix(self) -> np.ndarray:
        """(frame_length, 2 * num_bins) float64: frame -> [Re DFT | Im DFT] of the processed frame.

        Composes, right to left: DC removal (x - mean x), pre-emphasis with the first sample
        against itself (y0 = x0 - k x0, yi = xi - k x(i-1)), the symmetric Hann window
        0.5 - 0.5 cos(2 pi n / (N - 1)), zero padding to n_fft and the real DFT.
        """
        n = self.frame_length
        dc = np.eye(n) - np.full((n, n), 1.0 / n)
        pre = np.eye(n)
        pre[np.arange(1, n), np.arange(n - 1)] = -self.preemphasis
        pre[0, 0] = 1.0 - self.preemphasis
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / (n - 1))
        k = np.arange(self.num_bins)[:, None]
        phase = 2.0 * np.pi * k * np.arange(n)[None, :] / self.n_fft
        dft = np.concatenate([np.cos(phase), -np.sin(phase)], axis=0)  # (2*bins, n)
        full = dft @ (window[:, None] * (pre @ dc))
        return np.ascontiguousarray(full.T)

    @cached_property
    def mel_matrix(self) -> np.ndarray:
        """(num_bins, num_mel_bins) float64: Kaldi mel triangles built in mel space.

        The Nyquist bin gets zero weight, as in Kaldi (its banks span the first n_fft/2 bins).
        """
        nyquist = 0.5 * self.sample_rate
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        if not 0.0 <= self.low_freq < high <= nyquist:
            raise ValueError(f"bad mel range {self.low_freq}..{high} Hz for {self.sample_rate} Hz")
        mel_low, mel_high = kaldi_mel(self.low_freq), kaldi_mel(high)
        delta = (mel_high - mel_low) / (self.num_mel_bins + 1)
        edges = mel_low + delta * np.arange(self.num_mel_bins + 2)
        left, center, right = edges[:-2], edges[1:-1], edges[2:]
        bin_mel = kaldi_mel(np.arange(self.n_fft // 2) * self.sample_rate / self.n_fft)[:, None]
        up = (bin_mel - left) / (center - left)
        down = (right - bin_mel) / (right - center)
        weights = np.maximum(0.0, np.minimum(up, down))
        return np.concatenate([weights, np.zeros((1, self.num_mel_bins))], axis=0)

    @cached_property
    def frame_matrix_f32(self) -> np.ndarray:
        return self.frame_matrix.astype(np.float32)

    @cached_property
    def mel_matrix_f32(self) -> np.ndarray:
        return self.mel_matrix.astype(np.float32)

    def compress(self, mel: np.ndarray) -> np.ndarray:
        """Mel energies -> natural log, floored at float32 epsilon (Kaldi)."""
        return np.log(np.maximum(mel, np.float32(LOG_FLOOR)))


AST_FBANK = FbankConfig()


def frontend_from_dict(d: dict):
    """The front-end config a model's metadata describes: the Kaldi fbank (AST; also when no
    ``kind`` is recorded) or musicnn's librosa-style mel."""
    kind = d.get("kind", FbankConfig.kind)
    if kind == FbankConfig.kind:
        return FbankConfig.from_dict(d)
    from mictag.musicnn_features import MusicnnMelConfig

    if kind == MusicnnMelConfig.kind:
        return MusicnnMelConfig.from_dict(d)
    raise ValueError(f"unknown front end {kind!r}")


def frame_count(num_samples: int | np.ndarray, cfg: FbankConfig = AST_FBANK):
    """Kaldi snip_edges frame count: 1 + (n - frame_length) // frame_shift, or 0 if too short."""
    n = np.asarray(num_samples)
    count = np.where(n >= cfg.frame_length, (n - cfg.frame_length) // cfg.frame_shift + 1, 0)
    return int(count) if count.ndim == 0 else count


def samples_for_frames(num_frames: int, cfg: FbankConfig = AST_FBANK) -> int:
    """Fewest samples that yield ``num_frames`` frames."""
    return 0 if num_frames <= 0 else (num_frames - 1) * cfg.frame_shift + cfg.frame_length


def hop_frames(hop_seconds: float, cfg: FbankConfig = AST_FBANK) -> int:
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


def log_mel(waveform: np.ndarray, cfg: FbankConfig = AST_FBANK) -> np.ndarray:
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


def pad_frames(frames: np.ndarray, cfg: FbankConfig = AST_FBANK) -> tuple[np.ndarray, int]:
    """Cut or zero-pad (before normalisation) log-mel frames to ``target_frames``.

    Returns the padded (target_frames, mel_bins) array and the number of valid frames.
    """
    valid = min(frames.shape[0], cfg.target_frames)
    out = np.zeros((cfg.target_frames, cfg.num_mel_bins), dtype=np.float32)
    out[:valid] = frames[:valid]
    return out, valid


def normalize(frames: np.ndarray, cfg: FbankConfig = AST_FBANK) -> np.ndarray:
    """AudioSet normalisation: (fbank - mean) / (2 std)."""
    return ((frames - np.float32(cfg.norm_mean)) / np.float32(2.0 * cfg.norm_std)).astype(np.float32)


def model_input(waveform: np.ndarray, cfg: FbankConfig = AST_FBANK) -> np.ndarray:
    """The normalised (target_frames, mel_bins) model input of one clip, exactly as in training."""
    padded, _ = pad_frames(log_mel(edge_padded(waveform, cfg), cfg), cfg)
    return normalize(padded, cfg)


def edge_padded(waveform: np.ndarray, cfg: FbankConfig = AST_FBANK) -> np.ndarray:
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

    def __init__(self, cfg: FbankConfig = AST_FBANK):
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
