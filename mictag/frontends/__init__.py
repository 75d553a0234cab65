"""The front ends: each model family's log-mel spectrogram, defined once for training, export and
the runtime.

- :mod:`~mictag.frontends.kaldi_fbank`: the AST's Kaldi fbank (128 bins, 10 ms frames, 10.24 s windows);
- :mod:`~mictag.frontends.musicnn_mel`: musicnn's librosa-style mel (96 bins, centred 16 ms frames, 3 s);
- :mod:`~mictag.frontends.framing`: what both share: framing, the window rule, padding,
  normalisation and chunked streaming; each function takes its config explicitly;
- :mod:`~mictag.frontends.spectral`: what both configs are made of, and the frame arithmetic.

The torch module that computes either on a batch is :mod:`mictag.model.fbank`.
"""

from __future__ import annotations

from mictag.frontends.framing import (EdgePadder, FbankStream, edge_padded, hop_frames, log_mel, model_input,
                                      normalize, pad_frames, window_starts)
from mictag.frontends.kaldi_fbank import AST_FBANK, LOG_FLOOR, FbankConfig, exact_div, kaldi_mel
from mictag.frontends.musicnn_mel import MUSICNN_MEL, MusicnnMelConfig, slaney_hz_to_mel, slaney_mel_to_hz
from mictag.frontends.spectral import frame_count, samples_for_frames

FrontEndConfig = FbankConfig | MusicnnMelConfig

__all__ = ["AST_FBANK", "LOG_FLOOR", "MUSICNN_MEL", "EdgePadder", "FbankConfig", "FbankStream", "FrontEndConfig",
           "MusicnnMelConfig", "edge_padded", "exact_div", "frame_count", "frontend_from_dict", "hop_frames",
           "kaldi_mel", "log_mel", "model_input", "normalize", "pad_frames", "samples_for_frames",
           "slaney_hz_to_mel", "slaney_mel_to_hz", "window_starts"]


def frontend_from_dict(d: dict):
    """The front-end config a model's metadata describes: the Kaldi fbank (AST; also when no
    ``kind`` is recorded) or musicnn's librosa-style mel."""
    kind = d.get("kind", FbankConfig.kind)
    if kind == FbankConfig.kind:
        return FbankConfig.from_dict(d)
    if kind == MusicnnMelConfig.kind:
        return MusicnnMelConfig.from_dict(d)
    raise ValueError(f"unknown front end {kind!r}")
