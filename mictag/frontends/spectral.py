"""What both front-end configs are made of besides their constants and matrices: the bin count,
the window in samples and seconds, (de)serialisation, and float32 copies of the matrices; and the
snip-edges frame arithmetic (frames in n samples, samples for n frames) they and the framing use. Each
config (a frozen dataclass) defines ``kind``, ``n_fft``, ``frame_shift``, ``sample_rate``,
``target_frames``, ``frame_matrix`` and ``mel_matrix``."""

from __future__ import annotations

from dataclasses import asdict
from functools import cached_property

import numpy as np


def frame_count(num_samples: int | np.ndarray, cfg: "SpectralFrontEnd"):
    """Kaldi snip_edges frame count: 1 + (n - frame_length) // frame_shift, or 0 if too short."""
    n = np.asarray(num_samples)
    count = np.where(n >= cfg.frame_length, (n - cfg.frame_length) // cfg.frame_shift + 1, 0)
    return int(count) if count.ndim == 0 else count


def samples_for_frames(num_frames: int, cfg: "SpectralFrontEnd") -> int:
    """Fewest samples that yield ``num_frames`` frames."""
    return 0 if num_frames <= 0 else (num_frames - 1) * cfg.frame_shift + cfg.frame_length


class SpectralFrontEnd:
    """Mixin of the front-end configs (:mod:`~mictag.frontends.kaldi_fbank`,
    :mod:`~mictag.frontends.musicnn_mel`)."""

    @property
    def num_bins(self) -> int:
        """Number of one-sided DFT bins (257 for a 512-point DFT)."""
        return self.n_fft // 2 + 1

    @property
    def window_samples(self) -> int:
        """Samples (of the edge-padded stream) that make exactly ``target_frames`` frames: 164,080
        for the AST, 48,128 for musicnn's 3 s."""
        return samples_for_frames(self.target_frames, self)

    @property
    def window_seconds(self) -> float:
        return self.target_frames * self.frame_shift / self.sample_rate

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @cached_property
    def frame_matrix_f32(self) -> np.ndarray:
        return self.frame_matrix.astype(np.float32)

    @cached_property
    def mel_matrix_f32(self) -> np.ndarray:
        return self.mel_matrix.astype(np.float32)
