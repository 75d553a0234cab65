"""Input reprogrammers: trainable transforms of the (B, frames, mel_bins) fbank in front of the
frozen backbone (Chen & Lerch 2023, Sec. 3).

Where the paper's text and the authors' code (hchen605/ast_inst_cls) differ, both are options.
The defaults follow the authors' code wherever the paper is silent, because that code produced
the published numbers and Table 1's parameter counts; the one exception is the U-Net, which the
code leaves frozen by mistake while the paper trains (and counts) it: we train it.
"""

from __future__ import annotations

import torch
from torch import nn


class Reprogrammer(nn.Module):
    """(B, frames, mel_bins) -> (B, frames, mel_bins)."""

    name = "none"

    def __init__(self, frames: int, mel_bins: int):
        super().__init__()
        self.frames, self.mel_bins = frames, mel_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NoiseReprogrammer(Reprogrammer):
    """AST-NRP: a learnable additive perturbation the size of the input, X' = X + N.

    ``init``: ``"normal"`` draws N ~ N(0, 1) (the authors' code); ``"zeros"`` starts at the
    un-reprogrammed backbone. The paper does not say; the default follows the code.
    """

    name = "noise"

    def __init__(self, frames: int, mel_bins: int, init: str = "normal"):
        super().__init__(frames, mel_bins)
        if init not in ("normal", "zeros"):
            raise ValueError(f"noise init must be 'normal' or 'zeros', not {init!r}")
        self.init = init
        delta = torch.randn(1, frames, mel_bins) if init == "normal" else torch.zeros(1, frames, mel_bins)
        self.delta = nn.Parameter(delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta


class CNNReprogrammer(Reprogrammer):
    """AST-CNNRP: two 3x3 Conv2d(1 -> 1), stride 1, padding 1, with bias.

    ``activation``: ``None`` (the authors' code; the paper names none) or ``"relu"`` between and
    after the convolutions. ``init``: ``"default"`` (PyTorch's, as in the code) or ``"identity"``
    (a centred unit kernel and zero bias, so training starts from the plain backbone).
    """

    name = "cnn"

    def __init__(self, frames: int, mel_bins: int, activation: str | None = None, init: str = "default"):
        super().__init__(frames, mel_bins)
        if activation not in (None, "none", "relu"):
            raise ValueError(f"cnn activation must be none or relu, not {activation!r}")
        if init not in ("default", "identity"):
            raise ValueError(f"cnn init must be 'default' or 'identity', not {init!r}")
        self.activation, self.init = (None if activation == "none" else activation), init
        self.conv1 = nn.Conv2d(1, 1, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(1, 1, kernel_size=3, stride=1, padding=1)
        if init == "identity":
            for conv in (self.conv1, self.conv2):
                nn.init.dirac_(conv.weight)
                nn.init.zeros_(conv.bias)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) if self.activation == "relu" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._act(self.conv1(x.unsqueeze(1)))
        return self._act(self.conv2(y)).squeeze(1)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class UNetReprogrammer(Reprogrammer):
    """AST-URP: a small 3-level U-Net on the fbank (Fig. 2; the authors' architecture).

    Contraction: conv-BN-ReLU-maxpool(2) with 1 -> 4 -> 8 -> 8 channels. Expansion: bilinear
    upsampling (align_corners=True), added to the same-resolution pooled map of the contraction
    path, then conv-BN-ReLU with 8 -> 4 -> 1 channels; the input is added before a final 1 -> 1
    conv-BN-ReLU. Upsampling goes to the skip map's size, so inputs not divisible by 8 work too.

    ``trainable``: the paper trains the U-Net and counts its 1,285 parameters (Table 1); the
    authors' code never unfreezes it (only its BatchNorm statistics move). Default True.
    ``final_activation``: ``"relu"`` (the code: the output is non-negative) or ``"none"``.
    """

    name = "unet"

    def __init__(self, frames: int, mel_bins: int, trainable: bool = True, final_activation: str = "relu"):
        super().__init__(frames, mel_bins)
        if final_activation not in ("relu", "none"):
            raise ValueError(f"unet final_activation must be relu or none, not {final_activation!r}")
        self.trainable, self.final_activation = trainable, final_activation
        self.down1, self.down2, self.down3 = _conv_bn_relu(1, 4), _conv_bn_relu(4, 8), _conv_bn_relu(8, 8)
        self.up1, self.up2 = _conv_bn_relu(8, 4), _conv_bn_relu(4, 1)
        self.out = _conv_bn_relu(1, 1)
        if final_activation == "none":
            self.out = nn.Sequential(*list(self.out)[:2])
        self.requires_grad_(trainable)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x.unsqueeze(1)
        x1 = nn.functional.max_pool2d(self.down1(x0), 2)
        x2 = nn.functional.max_pool2d(self.down2(x1), 2)
        x3 = nn.functional.max_pool2d(self.down3(x2), 2)
        y = self.up1(self._up(x3, x2) + x2)
        y = self.up2(self._up(y, x1) + x1)
        return self.out(self._up(y, x0) + x0).squeeze(1)


REPROGRAMMERS: dict[str, type[Reprogrammer]] = {
    cls.name: cls for cls in (Reprogrammer, NoiseReprogrammer, CNNReprogrammer, UNetReprogrammer)
}


def build_reprogrammer(name: str, frames: int, mel_bins: int, **options) -> Reprogrammer:
    """A reprogrammer by name (``none``, ``noise``, ``cnn``, ``unet``) with its options."""
    if name not in REPROGRAMMERS:
        raise ValueError(f"unknown reprogrammer {name!r}; choose one of {', '.join(REPROGRAMMERS)}")
    return REPROGRAMMERS[name](frames, mel_bins, **options)
