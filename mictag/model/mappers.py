"""Output mappers: from what the frozen backbone gives to the target labels' logits.

``head`` (the authors' code): a new LayerNorm + Linear on the pooled embedding; ``mlp``: the same
with a hidden layer. ``fc`` (the
paper's text): a Linear on the backbone's source-class logits. ``many-to-one`` (Tsai et al.):
a fixed map that reduces the scores of each target's source classes; no trainable weight, so
it tags with zero training. Every mapper returns logits; the sigmoid comes after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


class Mapper(nn.Module):
    """Declares which backbone output it reads: ``"pooled"`` or ``"logits"``."""

    name = ""
    source = "pooled"


class HeadMapper(Mapper):
    """LayerNorm + Linear(hidden -> labels) on the pooled tokens (authors' code; 16,916 weights
    for 768 -> 20)."""

    name, source = "head", "pooled"

    def __init__(self, hidden_size: int, num_labels: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(pooled))


class MLPMapper(Mapper):
    """LayerNorm + a hidden layer (Linear, GELU, dropout while training) + Linear on the pooled
    features: a small non-linear read-out (256 hidden units: 57k weights for 200 -> 20)."""

    name, source = "mlp", "pooled"

    def __init__(self, hidden_size: int, num_labels: int, hidden: int = 256, dropout: float = 0.3,
                 eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.body = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden_size, hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_labels))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(pooled))


class FCMapper(Mapper):
    """Linear(source classes -> labels) on the backbone's logits (the paper's FCL; the sigmoid the
    paper puts after it is applied by the system)."""

    name, source = "fc", "logits"

    def __init__(self, num_source: int, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(num_source, num_labels)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.linear(logits)


class ManyToOneMapper(Mapper):
    """Fixed many-to-one label map: a target's probability is the ``max`` (default: what a tagger
    with no training wants) or the ``mean`` (the paper's averaging) of its source classes'
    probabilities, returned as a logit."""

    name, source = "many-to-one", "logits"

    def __init__(self, num_source: int, sources: Sequence[Sequence[int]], reduce: str = "max"):
        super().__init__()
        if reduce not in ("max", "mean"):
            raise ValueError(f"many-to-one reduce must be max or mean, not {reduce!r}")
        if any(not s for s in sources):
            raise ValueError("every target label needs at least one source class")
        if any(i < 0 or i >= num_source for s in sources for i in s):
            raise ValueError(f"a source class index is outside the backbone's {num_source} outputs")
        self.reduce = reduce
        member = torch.zeros(len(sources), num_source, dtype=torch.bool)
        for t, s in enumerate(sources):
            member[t, list(s)] = True
        self.register_buffer("member", member, persistent=False)
        self.register_buffer("count", member.sum(1).to(torch.float32), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        member = self.member[None]  # (1, labels, source)
        if self.reduce == "max":
            # sigmoid is monotone: the max of probabilities is the sigmoid of the max logit.
            x = logits[:, None, :].masked_fill(~member, float("-inf"))
            return x.amax(dim=-1)
        probs = torch.sigmoid(logits)[:, None, :] * member
        mean = probs.sum(dim=-1) / self.count
        return torch.logit(mean, eps=1e-7)


MAPPERS = {cls.name: cls for cls in (HeadMapper, MLPMapper, FCMapper, ManyToOneMapper)}


def build_mapper(name: str, hidden_size: int, num_source: int, labels: Sequence[str],
                 source_map: Mapping[str, Sequence[int]] | None = None, **options) -> Mapper:
    """A mapper by name for a backbone with ``hidden_size`` pooled features and ``num_source``
    output classes; ``source_map`` (label -> source indices) is needed by ``many-to-one``."""
    if name == "head":
        return HeadMapper(hidden_size, len(labels), **options)
    if name == "mlp":
        return MLPMapper(hidden_size, len(labels), **options)
    if name == "fc":
        return FCMapper(num_source, len(labels), **options)
    if name == "many-to-one":
        if source_map is None:
            raise ValueError("the many-to-one mapper needs a map from labels to source classes")
        missing = [label for label in labels if label not in source_map]
        if missing:
            raise ValueError(f"the many-to-one map has no source classes for {', '.join(missing)}")
        return ManyToOneMapper(num_source, [source_map[label] for label in labels], **options)
    raise ValueError(f"unknown mapper {name!r}; choose one of {', '.join(MAPPERS)}")
