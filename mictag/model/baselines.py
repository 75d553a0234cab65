"""CNN-BS: a standalone CNN trained from scratch on the fbank, of about the reprogrammers' size.

The authors' code used two 1->1 convolutions and a Linear(1024*128 -> 20) (2.6 M weights),
which does not match the 0.017 M the paper reports. We build what the paper describes instead:
a small CNN with ~17 k weights, so the comparison at equal budget holds.
"""

from __future__ import annotations

import torch
from torch import nn


class CNNBaseline(nn.Module):
    """(B, frames, mel_bins) -> (B, labels) logits: three conv-BN-ReLU-maxpool stages (16, 32, 40
    channels), global average pooling and a linear layer: 17,356 weights for 20 labels."""

    name = "cnn-bs"

    def __init__(self, num_labels: int, channels: tuple[int, ...] = (16, 32, 40)):
        super().__init__()
        layers, cin = [], 1
        for cout in channels:
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_labels)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.features(fbank.unsqueeze(1))
        return self.linear(x.mean(dim=(2, 3)))
