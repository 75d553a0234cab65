"""The front ends as torch modules, built from the same matrices as the numpy paths (the AST's
Kaldi fbank, :mod:`mictag.frontends.kaldi_fbank`; musicnn's mel, :mod:`mictag.frontends.musicnn_mel`): batched,
differentiable and exportable to ONNX (a strided Conv1d, squares, two matmuls and a log)."""

from __future__ import annotations

import torch
from torch import nn

from mictag.frontends import AST_FBANK, LOG_FLOOR, FbankConfig, MusicnnMelConfig


class FrameFinish(nn.Module):
    """Raw log-mel frames -> model input: cut/zero-pad to ``target_frames``, zero the frames past
    each item's valid count (padding happens in the fbank domain, before normalisation), then
    apply the AudioSet normalisation unless ``normalize`` is False (the authors' code fed raw
    fbank to the AST)."""

    def __init__(self, cfg: FbankConfig = AST_FBANK, normalize: bool = True):
        super().__init__()
        self.cfg = cfg
        self.normalize = normalize

    def forward(self, frames: torch.Tensor, valid_frames: torch.Tensor | None = None) -> torch.Tensor:
        target = self.cfg.target_frames
        have = frames.shape[1]
        if have > target:
            frames = frames[:, :target]
        elif have < target:
            frames = nn.functional.pad(frames, (0, 0, 0, target - have))
        if valid_frames is not None:
            keep = torch.arange(target, device=frames.device)[None, :] < valid_frames.reshape(-1, 1)
            frames = torch.where(keep[:, :, None], frames, torch.zeros_like(frames))
        if self.normalize:
            frames = (frames - self.cfg.norm_mean) / (2.0 * self.cfg.norm_std)
        return frames


def compress(mel: torch.Tensor, cfg: FbankConfig | MusicnnMelConfig) -> torch.Tensor:
    """Mel energies -> the front end's log (each config's ``compress``, in torch)."""
    if isinstance(cfg, MusicnnMelConfig):
        return torch.log10(10000.0 * mel + 1.0)
    return torch.clamp(mel, min=LOG_FLOOR).log()


class Fbank(nn.Module):
    """(B, samples) 16 kHz waveforms [+ valid sample counts] -> (B, target_frames, mel_bins).
    A centred front end takes its windows from the edge-padded stream, as the runtime cuts them."""

    def __init__(self, cfg: FbankConfig = AST_FBANK, normalize: bool = True):
        super().__init__()
        self.cfg = cfg
        frame = torch.from_numpy(cfg.frame_matrix_f32.T.copy()).unsqueeze(1)  # (2*bins, 1, len)
        self.register_buffer("frame_weight", frame, persistent=False)
        self.register_buffer("mel", torch.from_numpy(cfg.mel_matrix_f32.copy()), persistent=False)
        self.finish = FrameFinish(cfg, normalize)

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Raw log-mel frames (B, frames, mel_bins) of (B, samples) waveforms."""
        cfg = self.cfg
        if waveform.shape[-1] < cfg.frame_length:
            waveform = nn.functional.pad(waveform, (0, cfg.frame_length - waveform.shape[-1]))
        spec = nn.functional.conv1d(waveform.unsqueeze(1), self.frame_weight, stride=cfg.frame_shift)
        re, im = spec[:, : cfg.num_bins], spec[:, cfg.num_bins :]
        power = (re * re + im * im).transpose(1, 2)
        return compress(power @ self.mel, cfg)

    def valid_frames(self, valid_samples: torch.Tensor) -> torch.Tensor:
        """Kaldi snip_edges frame count of each item's valid samples."""
        cfg = self.cfg
        n = valid_samples.to(torch.int64)
        count = torch.div(n - cfg.frame_length, cfg.frame_shift, rounding_mode="floor") + 1
        return torch.clamp(count, min=0)

    def forward(self, waveform: torch.Tensor, valid_samples: torch.Tensor | None = None) -> torch.Tensor:
        frames = self.log_mel(waveform)
        if valid_samples is None:
            # Every sample is signal; frames the conv made from its own padding are masked.
            valid_samples = torch.full((waveform.shape[0],), waveform.shape[-1], device=waveform.device)
        return self.finish(frames, self.valid_frames(valid_samples))
