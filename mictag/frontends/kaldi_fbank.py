"""The AST front end, defined once: the Kaldi log-mel filterbank constants and matrices (the
window rule and the numpy streaming that serve every front end are in :mod:`mictag.frontends.framing`).

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

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mictag.frontends.spectral import SpectralFrontEnd

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
class FbankConfig(SpectralFrontEnd):
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

    def compress(self, mel: np.ndarray) -> np.ndarray:
        """Mel energies -> natural log, floored at float32 epsilon (Kaldi)."""
        return np.log(np.maximum(mel, np.float32(LOG_FLOOR)))


AST_FBANK = FbankConfig()
