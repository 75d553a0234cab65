"""One composed model: [front end ->] reprogrammer -> frozen backbone -> mapper, which knows what
it trains. The backbone is the AudioSet AST or musicnn (:mod:`mictag.backbones.frozen`).

:class:`SystemConfig` is plain data (saved in checkpoints and export metadata); :func:`build_system`
turns it into a module. Systems of Table 1: ``AST-BS`` (none + head), ``AST-NRP`` (noise + head),
``AST-CNNRP`` (cnn + head), ``AST-URP`` (unet + head), ``AST-TL`` (fine-tuning) and ``CNN-BS``;
the same with musicnn in place of the AST.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mictag.backbones.ast import AST, ASTConfig
from mictag.backbones.frozen import check_kind, frontend_for, load_backbone, openmic_source_map, source_labels
from mictag.backbones.musicnn import MusicnnConfig, build_musicnn
from mictag.frontends import FbankConfig, MusicnnMelConfig, frontend_from_dict
from mictag.labels import OPENMIC_LABELS
from mictag.model.baselines import CNNBaseline
from mictag.model.fbank import Fbank
from mictag.model.mappers import Mapper, build_mapper
from mictag.model.reprogram import Reprogrammer, build_reprogrammer

BASELINES = ("cnn-bs", "finetune")


@dataclass
class SystemConfig:
    """Everything needed to rebuild a system (weights aside). ``fbank`` is the backbone's front end
    (derived from the backbone's config when not given)."""

    ast: ASTConfig = field(default_factory=ASTConfig)
    fbank: FbankConfig | MusicnnMelConfig | None = None
    reprogrammer: str = "none"
    reprogrammer_options: dict = field(default_factory=dict)
    mapper: str = "head"
    mapper_options: dict = field(default_factory=dict)
    labels: tuple[str, ...] = OPENMIC_LABELS
    # AudioSet normalisation of the fbank (what the AST was trained on). The authors' code fed the
    # raw fbank; we normalise by default so that the frozen AST sees its training distribution.
    normalize_input: bool = True
    baseline: str | None = None  # "cnn-bs" (no backbone) or "finetune" (backbone trainable)
    backbone: str = "ast"  # "ast" or "musicnn"
    musicnn: MusicnnConfig = field(default_factory=MusicnnConfig)

    def __post_init__(self) -> None:
        check_kind(self.backbone)
        if self.baseline not in (None, *BASELINES):
            raise ValueError(f"unknown baseline {self.baseline!r}; choose one of {', '.join(BASELINES)}")
        expected = frontend_for(self.backbone, self.backbone_config)
        if self.fbank is None:
            self.fbank = expected
        if type(self.fbank) is not type(expected):
            raise ValueError(f"the {self.backbone} backbone takes the {expected.kind} front end, not {self.fbank.kind}")
        shape = (self.fbank.target_frames, self.fbank.num_mel_bins)
        if shape != (expected.target_frames, expected.num_mel_bins):
            raise ValueError(f"the front end gives {shape[0]}x{shape[1]} frames but the {self.backbone} backbone takes "
                             f"{expected.target_frames}x{expected.num_mel_bins}")
        self.labels = tuple(self.labels)

    @property
    def backbone_config(self) -> ASTConfig | MusicnnConfig:
        return self.musicnn if self.backbone == "musicnn" else self.ast

    def to_dict(self) -> dict:
        return {
            "backbone": self.backbone, "ast": self.ast.to_dict(), "musicnn": self.musicnn.to_dict(),
            "fbank": self.fbank.to_dict(), "reprogrammer": self.reprogrammer,
            "reprogrammer_options": dict(self.reprogrammer_options), "mapper": self.mapper,
            "mapper_options": dict(self.mapper_options), "labels": list(self.labels),
            "normalize_input": self.normalize_input, "baseline": self.baseline,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SystemConfig":
        d = dict(d)
        d["ast"] = ASTConfig.from_dict(d["ast"])
        d["musicnn"] = MusicnnConfig.from_dict(d.get("musicnn", {}))
        d["fbank"] = frontend_from_dict(d["fbank"])
        d["labels"] = tuple(d["labels"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def system_name(self) -> str:
        prefix = "musicnn" if self.backbone == "musicnn" else "AST"
        if self.baseline == "cnn-bs":
            return "CNN-BS"
        if self.baseline == "finetune":
            return f"{prefix}-TL"
        suffix = {"none": "BS", "noise": "NRP", "cnn": "CNNRP", "unet": "URP"}.get(self.reprogrammer, self.reprogrammer)
        return f"{prefix}-{suffix}"


def default_source_map(cfg: SystemConfig) -> dict[str, tuple[int, ...]] | None:
    """The packaged OpenMIC <- source-class map of the backbone, where it applies to this system's
    labels and the backbone's outputs."""
    if cfg.backbone_config.num_classes != len(source_labels(cfg.backbone)):
        return None
    if cfg.backbone == "musicnn" and cfg.musicnn.tags != "MTT":
        return None  # MSD's tags are genres and moods: no map to instruments
    table = openmic_source_map(cfg.backbone)
    return table if all(label in table for label in cfg.labels) else None


def frozen_backbone(cfg: SystemConfig, source) -> nn.Module:
    """The pretrained backbone at ``source``, shaped as the system reads it (input frames, and
    which musicnn features)."""
    if cfg.backbone == "musicnn":
        return load_backbone("musicnn", source, input_frames=cfg.musicnn.frames, features=cfg.musicnn.features)
    return load_backbone("ast", source, input_frames=cfg.ast.input_frames)


def new_backbone(cfg: SystemConfig) -> nn.Module:
    """A randomly initialised backbone of the system's kind and shape."""
    return build_musicnn(cfg.musicnn) if cfg.backbone == "musicnn" else AST(cfg.ast)


class _System(nn.Module):
    """What every composed system gives: ``forward_outputs`` (logits, and the embedding where there
    is one), ``forward`` (the logits alone) and its trainable weights."""

    def forward(self, inputs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_outputs(inputs, valid)["logits"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())


class ReprogrammedModel(_System):
    """The composed model. Takes the backbone's input (B, frames, mel_bins), or 16 kHz waveforms
    (B, samples) plus optional valid-sample counts when built ``with_fbank``; returns logits."""

    def __init__(self, cfg: SystemConfig, backbone: nn.Module | None = None, with_fbank: bool = False,
                 source_map: dict[str, tuple[int, ...]] | None = None):
        super().__init__()
        self.cfg = cfg
        self.fbank = Fbank(cfg.fbank, normalize=cfg.normalize_input) if with_fbank else None
        if backbone is not None and backbone.cfg != cfg.backbone_config:
            raise ValueError(f"the backbone given has config {backbone.cfg}, the system expects {cfg.backbone_config}")
        self.reprogrammer: Reprogrammer = build_reprogrammer(
            cfg.reprogrammer, cfg.fbank.target_frames, cfg.fbank.num_mel_bins, **cfg.reprogrammer_options)
        self.backbone = backbone if backbone is not None else new_backbone(cfg)
        self.mapper: Mapper = build_mapper(
            cfg.mapper, self.backbone.hidden_size, self.backbone.num_classes, cfg.labels,
            source_map=source_map if source_map is not None else default_source_map(cfg),
            **cfg.mapper_options)
        self.finetune = cfg.baseline == "finetune"
        self.backbone.requires_grad_(self.finetune)
        if self.mapper.source == "pooled":
            # The backbone's own classifier is not on the path: never count or train it.
            for module in self.backbone.head_modules():
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> "ReprogrammedModel":
        super().train(mode)
        if not self.finetune:
            self.backbone.eval()  # frozen: never in training mode
        return self

    def forward_outputs(self, inputs: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``logits`` (B, labels) and the backbone's ``embedding`` (B, hidden)."""
        x = self.fbank(inputs, valid) if self.fbank is not None else inputs
        x = self.reprogrammer(x)
        pooled = self.backbone.forward_features(x)
        if self.mapper.source == "pooled":
            logits = self.mapper(pooled)
        else:
            logits = self.mapper(self.backbone.forward_head(pooled))
        return {"logits": logits, "embedding": pooled}


class CNNBaselineSystem(_System):
    """CNN-BS wrapped with the same inputs and outputs as :class:`ReprogrammedModel`."""

    def __init__(self, cfg: SystemConfig, with_fbank: bool = False):
        super().__init__()
        self.cfg = cfg
        self.fbank = Fbank(cfg.fbank, normalize=cfg.normalize_input) if with_fbank else None
        self.cnn = CNNBaseline(len(cfg.labels))

    def forward_outputs(self, inputs: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = self.fbank(inputs, valid) if self.fbank is not None else inputs
        return {"logits": self.cnn(x)}


def build_system(cfg: SystemConfig, backbone: nn.Module | None = None, with_fbank: bool = False) -> nn.Module:
    """The module for ``cfg``; ``backbone`` supplies the pretrained weights (else random)."""
    if cfg.baseline == "cnn-bs":
        return CNNBaselineSystem(cfg, with_fbank)
    return ReprogrammedModel(cfg, backbone, with_fbank)


# The paper's systems, as reprogrammer settings (Table 1, authors'-code architecture).
PAPER_SYSTEMS: dict[str, dict] = {
    "AST-BS": {"reprogrammer": "none"},
    "CNN-BS": {"baseline": "cnn-bs"},
    "AST-TL": {"baseline": "finetune"},
    "AST-NRP": {"reprogrammer": "noise"},
    "AST-CNNRP": {"reprogrammer": "cnn"},
    "AST-URP": {"reprogrammer": "unet"},
}


def parameter_table(ast_cfg: ASTConfig | None = None, mapper: str = "head",
                    backbone: str = "ast") -> list[tuple[str, int]]:
    """Trainable-parameter counts of the paper's systems on ``backbone`` (built on the meta device:
    no memory), named as in Table 1 with the backbone's prefix."""
    ast_cfg = ast_cfg or ASTConfig()
    rows = []
    with torch.device("meta"):
        for settings in PAPER_SYSTEMS.values():
            cfg = SystemConfig(ast=ast_cfg, backbone=backbone, mapper=mapper, **settings)
            rows.append((cfg.system_name, build_system(cfg).num_trainable()))
    return rows
