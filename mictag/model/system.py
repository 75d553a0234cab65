"""One composed model: [fbank ->] reprogrammer -> frozen AST -> mapper, which knows what it trains.

:class:`SystemConfig` is plain data (saved in checkpoints and export metadata); :func:`build_system`
turns it into a module. Systems of Table 1: ``AST-BS`` (none + head), ``AST-NRP`` (noise + head),
``AST-CNNRP`` (cnn + head), ``AST-URP`` (unet + head), ``AST-TL`` (fine-tuning) and ``CNN-BS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mictag.features import AST_FBANK, FbankConfig
from mictag.labels import AUDIOSET_NUM_CLASSES, OPENMIC_LABELS, openmic_audioset_map
from mictag.model.ast import AST, ASTConfig
from mictag.model.baselines import CNNBaseline
from mictag.model.fbank import Fbank
from mictag.model.mappers import Mapper, build_mapper
from mictag.model.reprogram import Reprogrammer, build_reprogrammer

BASELINES = ("cnn-bs", "finetune")


@dataclass
class SystemConfig:
    """Everything needed to rebuild a system (weights aside)."""

    ast: ASTConfig = field(default_factory=ASTConfig)
    fbank: FbankConfig = AST_FBANK
    reprogrammer: str = "none"
    reprogrammer_options: dict = field(default_factory=dict)
    mapper: str = "head"
    mapper_options: dict = field(default_factory=dict)
    labels: tuple[str, ...] = OPENMIC_LABELS
    # AudioSet normalisation of the fbank (what the AST was trained on). The authors' code fed the
    # raw fbank; we normalise by default so that the frozen AST sees its training distribution.
    normalize_input: bool = True
    baseline: str | None = None  # "cnn-bs" (no AST) or "finetune" (AST trainable)

    def __post_init__(self) -> None:
        if self.baseline not in (None, *BASELINES):
            raise ValueError(f"unknown baseline {self.baseline!r}; choose one of {', '.join(BASELINES)}")
        if (self.fbank.target_frames, self.fbank.num_mel_bins) != (self.ast.input_frames, self.ast.num_mel_bins):
            raise ValueError(
                f"fbank gives {self.fbank.target_frames}x{self.fbank.num_mel_bins} frames but the AST takes "
                f"{self.ast.input_frames}x{self.ast.num_mel_bins}"
            )
        self.labels = tuple(self.labels)

    def to_dict(self) -> dict:
        return {
            "ast": self.ast.to_dict(), "fbank": self.fbank.to_dict(), "reprogrammer": self.reprogrammer,
            "reprogrammer_options": dict(self.reprogrammer_options), "mapper": self.mapper,
            "mapper_options": dict(self.mapper_options), "labels": list(self.labels),
            "normalize_input": self.normalize_input, "baseline": self.baseline,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SystemConfig":
        d = dict(d)
        d["ast"] = ASTConfig.from_dict(d["ast"])
        d["fbank"] = FbankConfig.from_dict(d["fbank"])
        d["labels"] = tuple(d["labels"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def system_name(self) -> str:
        if self.baseline == "cnn-bs":
            return "CNN-BS"
        if self.baseline == "finetune":
            return "AST-TL"
        return {"none": "AST-BS", "noise": "AST-NRP", "cnn": "AST-CNNRP", "unet": "AST-URP"}.get(
            self.reprogrammer, f"AST-{self.reprogrammer}")


def default_source_map(cfg: SystemConfig) -> dict[str, tuple[int, ...]] | None:
    """The packaged OpenMIC <- AudioSet map, where it applies to this system's labels and AST."""
    if cfg.ast.num_classes != AUDIOSET_NUM_CLASSES:
        return None
    table = openmic_audioset_map()
    return table if all(label in table for label in cfg.labels) else None


class ReprogrammedAST(nn.Module):
    """The composed model. Takes normalised fbank (B, frames, mel_bins), or 16 kHz waveforms
    (B, samples) plus optional valid-sample counts when built ``with_fbank``; returns logits."""

    def __init__(self, cfg: SystemConfig, ast: AST | None = None, with_fbank: bool = False,
                 source_map: dict[str, tuple[int, ...]] | None = None):
        super().__init__()
        self.cfg = cfg
        self.fbank = Fbank(cfg.fbank, normalize=cfg.normalize_input) if with_fbank else None
        if ast is not None and ast.cfg != cfg.ast:
            raise ValueError(f"the AST given has config {ast.cfg}, the system expects {cfg.ast}")
        self.reprogrammer: Reprogrammer = build_reprogrammer(
            cfg.reprogrammer, cfg.fbank.target_frames, cfg.fbank.num_mel_bins, **cfg.reprogrammer_options)
        self.ast = ast if ast is not None else AST(cfg.ast)
        self.mapper: Mapper = build_mapper(
            cfg.mapper, cfg.ast.hidden_size, cfg.ast.num_classes, cfg.labels,
            source_map=source_map if source_map is not None else default_source_map(cfg),
            **cfg.mapper_options)
        self.finetune = cfg.baseline == "finetune"
        self.ast.requires_grad_(self.finetune)
        if self.mapper.source == "pooled":
            # The AudioSet head is not on the path: never count or train it.
            self.ast.head_norm.requires_grad_(False)
            self.ast.head.requires_grad_(False)

    def train(self, mode: bool = True) -> "ReprogrammedAST":
        super().train(mode)
        if not self.finetune:
            self.ast.eval()  # frozen: never in training mode
        return self

    def forward_outputs(self, inputs: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``logits`` (B, labels) and the AST's ``embedding`` (B, hidden)."""
        x = self.fbank(inputs, valid) if self.fbank is not None else inputs
        x = self.reprogrammer(x)
        pooled = self.ast.forward_features(x)
        if self.mapper.source == "pooled":
            logits = self.mapper(pooled)
        else:
            logits = self.mapper(self.ast.forward_head(pooled))
        return {"logits": logits, "embedding": pooled}

    def forward(self, inputs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_outputs(inputs, valid)["logits"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())


class CNNBaselineSystem(nn.Module):
    """CNN-BS wrapped with the same inputs and outputs as :class:`ReprogrammedAST`."""

    def __init__(self, cfg: SystemConfig, with_fbank: bool = False):
        super().__init__()
        self.cfg = cfg
        self.fbank = Fbank(cfg.fbank, normalize=cfg.normalize_input) if with_fbank else None
        self.cnn = CNNBaseline(len(cfg.labels))

    def forward_outputs(self, inputs: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = self.fbank(inputs, valid) if self.fbank is not None else inputs
        return {"logits": self.cnn(x)}

    def forward(self, inputs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_outputs(inputs, valid)["logits"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())


def build_system(cfg: SystemConfig, ast: AST | None = None, with_fbank: bool = False) -> nn.Module:
    """The module for ``cfg``; ``ast`` supplies pretrained backbone weights (else random)."""
    if cfg.baseline == "cnn-bs":
        return CNNBaselineSystem(cfg, with_fbank)
    return ReprogrammedAST(cfg, ast, with_fbank)


# The paper's systems, as reprogrammer settings (Table 1, authors'-code architecture).
PAPER_SYSTEMS: dict[str, dict] = {
    "AST-BS": {"reprogrammer": "none"},
    "CNN-BS": {"baseline": "cnn-bs"},
    "AST-TL": {"baseline": "finetune"},
    "AST-NRP": {"reprogrammer": "noise"},
    "AST-CNNRP": {"reprogrammer": "cnn"},
    "AST-URP": {"reprogrammer": "unet"},
}


def parameter_table(ast_cfg: ASTConfig | None = None, mapper: str = "head") -> list[tuple[str, int]]:
    """Trainable-parameter counts of the paper's systems (built on the meta device: no memory)."""
    ast_cfg = ast_cfg or ASTConfig()
    fbank = FbankConfig.from_dict({**AST_FBANK.to_dict(), "target_frames": ast_cfg.input_frames,
                                   "num_mel_bins": ast_cfg.num_mel_bins})
    rows = []
    with torch.device("meta"):
        for name, settings in PAPER_SYSTEMS.items():
            cfg = SystemConfig(ast=ast_cfg, fbank=fbank, mapper=mapper, **settings)
            rows.append((name, build_system(cfg).num_trainable()))
    return rows
