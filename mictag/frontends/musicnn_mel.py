"""musicnn's front end, defined once: the librosa-style log-mel spectrogram it was trained on.

musicnn (Pons & Serra, 2019) computed ``librosa.feature.melspectrogram(y, sr=16000, n_fft=512,
hop_length=256, n_mels=96)`` (librosa 0.7: centred frames with reflect padding, periodic Hann
window, power spectrum, Slaney mel scale with area-normalised triangles from 0 Hz to Nyquist),
cast the mel power to float16 and took ``log10(10000 mel + 1)`` in float16 arithmetic; the network
sees 3-s patches of 187 frames. The periodic window and the DFT fold into one (512 -> 2*257) matrix, as
the AST's Kaldi fbank does (:mod:`mictag.frontends.kaldi_fbank`), so the same streaming, window rule, torch
module and exported graph serve both front ends.

Centring is the one structural difference: frame t is centred on sample ``t * 256``, so a file
is reflect-padded by 256 samples at each end before snip-edges framing (``edge_pad``).
Our resampler is soxr HQ where musicnn used librosa's default (resampy). We compute in float32:
the original's float16 arithmetic only quantises the features (to within one float16 step, about
2e-3 at typical values, which the tests bound) and overflows to infinity wherever the mel power
exceeds 6.55 (a loud tone), which no model should see.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mictag.frontends.spectral import SpectralFrontEnd


def slaney_hz_to_mel(freq_hz: np.ndarray | float) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale: linear (3 per 200 Hz) below 1 kHz, logarithmic above."""
    f = np.asarray(freq_hz, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    linear = f * 3.0 / 200.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, linear)


def slaney_mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    m = np.asarray(mel, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), m * 200.0 / 3.0)


@dataclass(frozen=True)
class MusicnnMelConfig(SpectralFrontEnd):
    """musicnn's log-mel front end (MTT and MSD models alike)."""

    kind = "librosa-mel"
    sample_rate: int = 16000
    n_fft: int = 512
    frame_shift: int = 256  # librosa's hop_length
    num_mel_bins: int = 96
    target_frames: int = 187  # 3 s patches
    fmin: float = 0.0
    fmax: float = 0.0  # <= 0: Nyquist
    # musicnn normalises its input with its own first batch norm: no external normalisation
    # (the identity (x - 0) / (2 * 0.5)), so the model input is the compressed mel itself.
    norm_mean: float = 0.0
    norm_std: float = 0.5

    @property
    def frame_length(self) -> int:
        return self.n_fft

    @property
    def edge_pad(self) -> int:
        """Reflect padding at each end of a file: librosa's ``center=True``."""
        return self.n_fft // 2

    @cached_property
    def frame_matrix(self) -> np.ndarray:
        """(n_fft, 2 * num_bins) float64: frame -> [Re | Im] DFT of the periodic-Hann-windowed frame."""
        n = self.n_fft
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)  # periodic (fftbins=True)
        k = np.arange(self.num_bins)[:, None]
        phase = 2.0 * np.pi * k * np.arange(n)[None, :] / n
        dft = np.concatenate([np.cos(phase), -np.sin(phase)], axis=0)
        return np.ascontiguousarray((dft * window[None, :]).T)

    @cached_property
    def mel_matrix(self) -> np.ndarray:
        """(num_bins, num_mel_bins) float64: Slaney-scale triangles, area-normalised (norm='slaney')."""
        nyquist = 0.5 * self.sample_rate
        fmax = self.fmax if self.fmax > 0 else nyquist
        if not 0.0 <= self.fmin < fmax <= nyquist:
            raise ValueError(f"bad mel range {self.fmin}..{fmax} Hz for {self.sample_rate} Hz")
        mel_pts = np.linspace(slaney_hz_to_mel(self.fmin), slaney_hz_to_mel(fmax), self.num_mel_bins + 2)
        hz = slaney_mel_to_hz(mel_pts)
        bins_hz = np.linspace(0.0, nyquist, self.num_bins)
        fdiff = np.diff(hz)
        ramps = hz[:, None] - bins_hz[None, :]
        lower = -ramps[:-2] / fdiff[:-1, None]
        upper = ramps[2:] / fdiff[1:, None]
        weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (hz[2:] - hz[:-2]))[:, None]
        return np.ascontiguousarray(weights.T)

    def compress(self, mel: np.ndarray) -> np.ndarray:
        """Mel power -> log10(10000 mel + 1)."""
        return np.log10(np.float32(10000.0) * mel + np.float32(1.0))


MUSICNN_MEL = MusicnnMelConfig()
