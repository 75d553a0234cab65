"""The module every export target runs: front end (the fbank from a waveform window, or the
finishing steps of raw log-mel frames) -> reprogrammed system -> (probabilities, logits,
embedding). The ONNX export traces it; the torch artifact rebuilds it."""

from __future__ import annotations

import torch
from torch import nn

from mictag.model.fbank import Fbank, FrameFinish

VARIANTS = ("waveform", "fbank")


class ExportGraph(nn.Module):
    """front end (waveform or raw frames) -> system -> (probabilities, logits, embedding)."""

    def __init__(self, system: nn.Module, variant: str):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown export variant {variant!r}; choose {', '.join(VARIANTS)}")
        cfg = system.cfg
        self.variant = variant
        self.fbank = Fbank(cfg.fbank, normalize=cfg.normalize_input) if variant == "waveform" else None
        self.finish = FrameFinish(cfg.fbank, normalize=cfg.normalize_input) if variant == "fbank" else None
        self.system = system

    def forward(self, x: torch.Tensor, valid: torch.Tensor):
        inputs = self.fbank(x, valid) if self.fbank is not None else self.finish(x, valid)
        out = self.system.forward_outputs(inputs)
        logits = out["logits"]
        embedding = out.get("embedding", logits)
        return torch.sigmoid(logits), logits, embedding
