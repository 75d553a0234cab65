"""musicnn (Pons & Serra, 2019) in PyTorch: the MTT/MSD ``musicnn`` architecture and the package's
``vgg`` baseline, loading the original TensorFlow weights converted by
:mod:`mictag.backbones.musicnn_weights`.

Input: (B, 187 frames, 96 mel bands) of log10(10000 mel + 1), 3 s at 16 kHz with hop 256.
Porting notes (each checked against the TensorFlow graph):
- TF's batch-norm epsilon is 1e-3, not torch's 1e-5;
- "same" padding of the even temporal kernels (128, 64, 32) is asymmetric in TF: (k-1)//2 before,
  the rest after;
- TF kernels are HWIO (time, frequency, in, out); dense kernels are (in, out);
- the back end concatenates max- and mean-pooled features on a new last axis before flattening,
  so the 1,506 pooled features interleave max and mean per channel;
- vgg: five 3x3 "same" convolutions (128 filters; ReLU then batch norm), "valid" max pooling with
  TF's (pool, stride) pairs, then a dense layer on the NHWC-flattened (time, frequency, channel)
  map, so its features depend on the 187-frame patch length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from mictag.errors import CheckpointError

TF_BN_EPS = 1e-3


ARCHITECTURES = ("musicnn", "vgg")
FEATURES = ("dense", "pool")
VGG_POOLS = (((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((4, 4), (4, 4)))


@dataclass(frozen=True)
class MusicnnConfig:
    n_mels: int = 96
    frames: int = 187
    num_filt_midend: int = 64
    units_backend: int = 200
    num_classes: int = 50
    architecture: str = "musicnn"  # or "vgg" (MTT_vgg, MSD_vgg)
    vgg_filters: int = 128
    tags: str = "MTT"  # what the 50 outputs are: MagnaTagATune tags, or "MSD" (Million Song Dataset)
    # What forward_features gives the mappers (musicnn only): "dense", the 200-d layer before the
    # output, or "pool", the 1,506 max/mean-pooled mid-end features that layer reads.
    features: str = "dense"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown musicnn architecture {self.architecture!r}; choose {', '.join(ARCHITECTURES)}")
        if self.features not in FEATURES or (self.features == "pool" and self.architecture != "musicnn"):
            raise ValueError(f"musicnn features must be dense or pool (pool: the musicnn architecture only), "
                             f"not {self.features!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.features == "dense":
            del d["features"]  # the default: records written before it existed stay the same
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MusicnnConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def frontend_channels(self) -> int:
        return 2 * 204 + 3 * 51

    @property
    def pooled_features(self) -> int:
        return 2 * (self.frontend_channels + 3 * self.num_filt_midend)

    @property
    def vgg_grid(self) -> tuple[int, int]:
        """(time, frequency) size of the vgg's last pooled map: (2, 1) for 187 x 96."""
        h, w = self.frames, self.n_mels
        for (ph, pw), (sh, sw) in VGG_POOLS:
            h, w = (h - ph) // sh + 1, (w - pw) // sw + 1
        return h, w

    @property
    def hidden_size(self) -> int:
        """Width of the features the mappers read (the layer before the output)."""
        if self.architecture == "vgg":
            h, w = self.vgg_grid
            return h * w * self.vgg_filters
        return self.pooled_features if self.features == "pool" else self.units_backend


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=TF_BN_EPS)


def _bn1d(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=TF_BN_EPS)


def _conv_relu_bn_max(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn(relu(conv(x))).amax(frequency)``, (B, C, T, F') -> (B, C, T).

    With frozen statistics, relu followed by the batch norm is monotone in each channel,
    increasing where gamma >= 0 and decreasing where gamma < 0. So the maximum over frequency is
    taken first, of the convolution's output times sign(gamma), and relu and the batch norm then
    act on (B, C, T) instead of the 30-60x larger map: the same value, in a quarter of the
    training step's time (the front end's map dominated it). A batch norm in training mode
    (fine-tuning) needs the whole map for its statistics and takes the plain path."""
    if bn.training:
        return bn(torch.relu(conv(x))).amax(dim=3)
    sign = torch.where(bn.weight < 0, -1.0, 1.0).to(conv.weight.dtype)
    z = nn.functional.conv2d(x, conv.weight * sign[:, None, None, None], conv.bias * sign)
    peak = z.max(dim=3).values  # its backward scatters into the argmax; amax's compares the whole map
    return bn(torch.relu(peak * sign[:, None]).unsqueeze(3)).squeeze(3)


class MusicnnBackbone(nn.Module):
    """What both networks share: an output layer ``out`` on ``forward_features``."""

    cfg: MusicnnConfig
    out: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(features)

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def head_modules(self) -> list[nn.Module]:
        return [self.out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Musicnn(MusicnnBackbone):
    """(B, frames, n_mels) -> logits (B, num_classes); ``forward_features`` gives the 200-d
    penultimate layer, or with ``cfg.features == "pool"`` the 1,506 pooled features before it."""

    def __init__(self, cfg: MusicnnConfig = MusicnnConfig()):
        super().__init__()
        self.cfg = cfg
        m = cfg.n_mels
        self.bn_input = _bn2d(1)
        self.timbral = nn.ModuleList([nn.Conv2d(1, 204, (7, int(0.4 * m))), nn.Conv2d(1, 204, (7, int(0.7 * m)))])
        self.timbral_bn = nn.ModuleList([_bn2d(204), _bn2d(204)])
        self.temporal_kernels = (128, 64, 32)
        self.temporal = nn.ModuleList([nn.Conv2d(1, 51, (k, 1)) for k in self.temporal_kernels])
        self.temporal_bn = nn.ModuleList([_bn2d(51) for _ in self.temporal_kernels])
        f, c = cfg.num_filt_midend, cfg.frontend_channels
        self.midend = nn.ModuleList([nn.Conv1d(c, f, 7), nn.Conv1d(f, f, 7), nn.Conv1d(f, f, 7)])
        self.midend_bn = nn.ModuleList([_bn1d(f) for _ in range(3)])
        self.bn_pool = _bn1d(cfg.pooled_features)
        self.dense = nn.Linear(cfg.pooled_features, cfg.units_backend)
        self.bn_dense = _bn1d(cfg.units_backend)
        self.out = nn.Linear(cfg.units_backend, cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_input(x.unsqueeze(1))  # (B, 1, T, F)
        padded = nn.functional.pad(x, (0, 0, 3, 3))
        front = [_conv_relu_bn_max(padded, conv, bn) for conv, bn in zip(self.timbral, self.timbral_bn)]
        for k, conv, bn in zip(self.temporal_kernels, self.temporal, self.temporal_bn):
            same = nn.functional.pad(x, (0, 0, (k - 1) // 2, k - 1 - (k - 1) // 2))  # TF "same"
            front.append(_conv_relu_bn_max(same, conv, bn))
        front = torch.cat(front, dim=1)  # (B, 561, T)
        feats, h = [front], front
        for i, (conv, bn) in enumerate(zip(self.midend, self.midend_bn)):
            y = bn(torch.relu(conv(nn.functional.pad(h, (3, 3)))))
            h = y if i == 0 else y + h
            feats.append(h)
        mid = torch.cat(feats, dim=1)  # (B, 753, T)
        pooled = torch.stack([mid.amax(dim=2), mid.mean(dim=2)], dim=2).flatten(1)  # max/mean interleaved
        return pooled if self.cfg.features == "pool" else self.dense_layer(pooled)

    def dense_layer(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.bn_dense(torch.relu(self.dense(self.bn_pool(pooled))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.dense_layer(features) if self.cfg.features == "pool" else features)



class MusicnnVGG(MusicnnBackbone):
    """musicnn's VGG baseline: (B, frames, n_mels) -> logits; ``forward_features`` gives the
    flattened last pooled map (256 features for 187 x 96)."""

    def __init__(self, cfg: MusicnnConfig):
        super().__init__()
        self.cfg = cfg
        f = cfg.vgg_filters
        self.bn_input = _bn2d(1)
        self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else f, f, 3, padding=1) for i in range(5)])
        self.bns = nn.ModuleList([_bn2d(f) for _ in range(5)])
        self.pools = nn.ModuleList([nn.MaxPool2d(pool, stride) for pool, stride in VGG_POOLS])
        self.out = nn.Linear(cfg.hidden_size, cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_input(x.unsqueeze(1))  # (B, 1, T, F)
        for conv, bn, pool in zip(self.convs, self.bns, self.pools):
            x = pool(bn(torch.relu(conv(x))))
        return x.permute(0, 2, 3, 1).flatten(1)  # TF's NHWC flatten order


def build_musicnn(cfg: MusicnnConfig = MusicnnConfig()) -> MusicnnBackbone:
    """A randomly initialised network of ``cfg.architecture``."""
    return MusicnnVGG(cfg) if cfg.architecture == "vgg" else Musicnn(cfg)


def _bn_state(prefix: str, tf_name: str, w: dict) -> dict:
    return {f"{prefix}.weight": w[f"{tf_name}/gamma"], f"{prefix}.bias": w[f"{tf_name}/beta"],
            f"{prefix}.running_mean": w[f"{tf_name}/moving_mean"], f"{prefix}.running_var": w[f"{tf_name}/moving_variance"]}


def architecture_of(weights: dict[str, np.ndarray]) -> str:
    """Which network a converted checkpoint holds: the vgg's layers are named 1CNN ... 5CNN."""
    return "vgg" if "1CNN/kernel" in weights else "musicnn"


def vgg_state_from_tf(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map a TF vgg checkpoint's tensors onto :class:`MusicnnVGG`'s parameters."""
    w, s = weights, {}
    try:
        s.update(_bn_state("bn_input", "batch_normalization", w))
        for i in range(5):
            s[f"convs.{i}.weight"] = w[f"{i + 1}CNN/kernel"].transpose(3, 2, 0, 1)
            s[f"convs.{i}.bias"] = w[f"{i + 1}CNN/bias"]
            s.update(_bn_state(f"bns.{i}", _bn(i + 1), w))
        s["out.weight"], s["out.bias"] = w["dense/kernel"].T, w["dense/bias"]
    except KeyError as exc:
        raise CheckpointError(f"the musicnn vgg checkpoint lacks {exc.args[0]}") from None
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in s.items()}


def state_from_tf(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map the TF checkpoint's tensors (names as ``tf.compat.v1.layers`` created them, in build
    order) onto :class:`Musicnn`'s parameters."""
    w = weights
    s: dict[str, np.ndarray] = {}
    try:
        s.update(_bn_state("bn_input", "batch_normalization", w))
        for i, j in enumerate((0, 1)):  # timbral 7x38, 7x67
            s[f"timbral.{i}.weight"] = w[f"{_conv(j)}/kernel"].transpose(3, 2, 0, 1)
            s[f"timbral.{i}.bias"] = w[f"{_conv(j)}/bias"]
            s.update(_bn_state(f"timbral_bn.{i}", _bn(j + 1), w))
        for i, j in enumerate((2, 3, 4)):  # temporal 128, 64, 32
            s[f"temporal.{i}.weight"] = w[f"{_conv(j)}/kernel"].transpose(3, 2, 0, 1)
            s[f"temporal.{i}.bias"] = w[f"{_conv(j)}/bias"]
            s.update(_bn_state(f"temporal_bn.{i}", _bn(j + 1), w))
        for i, j in enumerate((5, 6, 7)):  # mid-end: (7, width, 1, out) -> Conv1d (out, width, 7)
            s[f"midend.{i}.weight"] = w[f"{_conv(j)}/kernel"][:, :, 0, :].transpose(2, 1, 0)
            s[f"midend.{i}.bias"] = w[f"{_conv(j)}/bias"]
            s.update(_bn_state(f"midend_bn.{i}", _bn(j + 1), w))
        s.update(_bn_state("bn_pool", "batch_normalization_9", w))
        s["dense.weight"], s["dense.bias"] = w["dense/kernel"].T, w["dense/bias"]
        s.update(_bn_state("bn_dense", "batch_normalization_10", w))
        s["out.weight"], s["out.bias"] = w["dense_1/kernel"].T, w["dense_1/bias"]
    except KeyError as exc:
        raise CheckpointError(f"the musicnn checkpoint lacks {exc.args[0]}: is it a musicnn (not vgg) model?") from None
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in s.items()}


def _conv(i: int) -> str:
    return "conv2d" if i == 0 else f"conv2d_{i}"


def _bn(i: int) -> str:
    return "batch_normalization" if i == 0 else f"batch_normalization_{i}"


def load_musicnn(weights: dict[str, np.ndarray], cfg: MusicnnConfig | None = None) -> MusicnnBackbone:
    """A frozen, eval-mode musicnn (or vgg: told by the weights) with the given converted TF weights."""
    arch = architecture_of(weights)
    cfg = replace(cfg or MusicnnConfig(), architecture=arch)
    model = build_musicnn(cfg)
    state = vgg_state_from_tf(weights) if arch == "vgg" else state_from_tf(weights)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    wrong = sorted(f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                   for k in state if k in expected and state[k].shape != expected[k].shape)
    if missing or wrong:
        raise CheckpointError(f"musicnn weights do not fit: missing {missing}, shape mismatches {wrong}")
    model.load_state_dict(state, strict=False)
    return model.eval().requires_grad_(False)
