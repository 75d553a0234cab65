"""The Audio Spectrogram Transformer (Gong et al., 2021), configurable, with fused-qkv SDPA blocks.

Parameter names follow the original implementation (a DeiT ``v`` without its ``v.``), so the
original checkpoint loads by renaming its head alone; see :mod:`mictag.backbones.ast_checkpoints`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mictag.backbones.attention import DEFAULT_BLOCK, attend


@dataclass(frozen=True)
class ASTConfig:
    """Shape of an AST. Defaults are AudioSet AST (``audioset_10_10_0.4593``)."""

    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    fstride: int = 10
    tstride: int = 10
    num_mel_bins: int = 128
    input_frames: int = 1024
    num_classes: int = 527
    layer_norm_eps: float = 1e-6  # blocks and final norm (timm's ViT); HF's config says 1e-12
    head_norm_eps: float = 1e-5  # the original mlp_head LayerNorm uses torch's default
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if min(self.num_mel_bins, self.input_frames) < self.patch_size:
            raise ValueError("the input must be at least one patch in each dimension")

    @property
    def grid(self) -> tuple[int, int]:
        """(frequency, time) patch counts: (12, 101) for AudioSet AST."""
        f = (self.num_mel_bins - self.patch_size) // self.fstride + 1
        t = (self.input_frames - self.patch_size) // self.tstride + 1
        return f, t

    @property
    def num_patches(self) -> int:
        f, t = self.grid
        return f * t

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ASTConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def tiny(cls, **overrides) -> "ASTConfig":
        """A few-thousand-parameter AST for tests: same structure, small sizes."""
        base = dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64, input_frames=128, num_classes=527)
        base.update(overrides)
        return cls(**base)

    def flops_per_window(self) -> int:
        """Forward FLOPs (2 per multiply-add) of one window, attention included, head included."""
        d, n = self.hidden_size, self.num_patches + 2
        patch = 2 * self.num_patches * self.patch_size**2 * d
        per_block = 2 * n * (3 * d * d + d * d + 2 * d * self.mlp_dim) + 2 * 2 * n * n * d
        head = 2 * d * self.num_classes
        return patch + self.depth * per_block + head


class Attention(nn.Module):
    """Multi-head self-attention; the kernel (SDPA, or blocked bf16 matmuls on a CPU) is set by
    :func:`mictag.backbones.attention.set_kernel` and does not change the weights."""

    def __init__(self, cfg: ASTConfig):
        super().__init__()
        self.attention_kernel, self.attention_block = "sdpa", DEFAULT_BLOCK
        self.num_heads = cfg.num_heads
        # An explicit scale exports as a constant, not as shape arithmetic in the graph.
        self.scale = (cfg.hidden_size // cfg.num_heads) ** -0.5
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attend(qkv[0], qkv[1], qkv[2], self.scale, self.attention_kernel, self.attention_block)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, cfg: ASTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.mlp_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ASTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AST(nn.Module):
    """(B, frames, mel_bins) normalised fbank -> pooled embedding (B, hidden) and logits (B, classes)."""

    def __init__(self, cfg: ASTConfig = ASTConfig()):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.patch_embed = nn.Conv2d(1, d, kernel_size=cfg.patch_size, stride=(cfg.fstride, cfg.tstride))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 2, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.head_norm = nn.LayerNorm(d, eps=cfg.head_norm_eps)
        self.head = nn.Linear(d, cfg.num_classes)
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def forward_features(self, fbank: torch.Tensor) -> torch.Tensor:
        """Pooled embedding: the mean of the final cls and distillation tokens, (B, hidden)."""
        x = fbank.unsqueeze(1).transpose(2, 3)  # (B, 1, mel, frames)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return (x[:, 0] + x[:, 1]) / 2

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_norm(pooled))

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def head_modules(self) -> list[nn.Module]:
        return [self.head_norm, self.head]

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(fbank))


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Adapt a (1, 2 + F*T, D) positional embedding to another patch grid by the original AST rule.

    Along each axis: a smaller grid takes the centre crop starting at old//2 - new//2; a larger
    one is bilinearly interpolated (align_corners=False). Time is adapted before frequency.
    The two token embeddings are kept as they are.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    (f0, t0), (f1, t1) = old_grid, new_grid
    d = pos_embed.shape[-1]
    tokens, grid = pos_embed[:, :2], pos_embed[:, 2:]
    grid = grid.reshape(1, f0, t0, d).permute(0, 3, 1, 2)  # (1, D, F, T)
    if t1 <= t0:
        start = t0 // 2 - t1 // 2
        grid = grid[:, :, :, start : start + t1]
    else:
        grid = nn.functional.interpolate(grid, size=(f0, t1), mode="bilinear")
    if f1 <= f0:
        start = f0 // 2 - f1 // 2
        grid = grid[:, :, start : start + f1, :]
    else:
        grid = nn.functional.interpolate(grid, size=(f1, t1), mode="bilinear")
    grid = grid.permute(0, 2, 3, 1).reshape(1, f1 * t1, d)
    return torch.cat([tokens, grid], dim=1)
