"""The frozen backbones behind one interface: the AudioSet AST and musicnn (MTT).

A backbone module has ``forward_features(x) -> (B, hidden_size)`` on its front end's
(B, frames, mel_bins) input, ``forward_head(features) -> (B, num_classes)`` source-class logits,
and ``head_modules()`` (what is off the path when a mapper reads the features). Each kind names
its front end, its source classes and its many-to-one map to the OpenMIC labels, and where its
weights come from: an AST checkpoint (file, directory, hub id) or a musicnn model name in the
model cache (``mictag models pull musicnn``) or a converted ``.safetensors`` file.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from torch import nn

from mictag.digest import file_digest
from mictag.errors import ConfigError
from mictag.frontends import FbankConfig, MusicnnMelConfig
from mictag.labels import MTT_LABELS, audioset_labels, openmic_audioset_map, openmic_mtt_map

BACKBONES = ("ast", "musicnn")
DEFAULT_MUSICNN = "MTT_musicnn"


def check_kind(kind: str) -> str:
    if kind not in BACKBONES:
        raise ConfigError(f"unknown backbone {kind!r}; choose one of {', '.join(BACKBONES)}")
    return kind


def frontend_for(kind: str, backbone_cfg) -> FbankConfig | MusicnnMelConfig:
    """The front end a backbone config was trained on, sized to its input."""
    if check_kind(kind) == "musicnn":
        return MusicnnMelConfig(target_frames=backbone_cfg.frames, num_mel_bins=backbone_cfg.n_mels)
    return FbankConfig(target_frames=backbone_cfg.input_frames, num_mel_bins=backbone_cfg.num_mel_bins)


def source_labels(kind: str) -> tuple[str, ...]:
    return MTT_LABELS if check_kind(kind) == "musicnn" else audioset_labels()


def openmic_source_map(kind: str) -> dict[str, tuple[int, ...]]:
    """OpenMIC label -> the backbone's source-class indices (only the labels it can express)."""
    return openmic_mtt_map() if check_kind(kind) == "musicnn" else openmic_audioset_map()


def _musicnn_file(source: str | os.PathLike) -> Path:
    from mictag.backbones.musicnn_weights import MODELS, weights_path

    path = Path(source)
    if path.suffix == ".safetensors" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"musicnn weights file {path} does not exist")
        return path
    if str(source) not in MODELS:
        raise ConfigError(f"unknown musicnn model {source!r}: give one of {', '.join(MODELS)} or a .safetensors file")
    return weights_path(str(source))


def weights_file(kind: str, source: str | os.PathLike) -> Path:
    """The file holding a backbone's weights (what its sha256 is taken of)."""
    if check_kind(kind) == "musicnn":
        from mictag.backbones.musicnn_weights import require_weights

        path = _musicnn_file(source)
        return path if path.is_file() else require_weights(str(source))
    from mictag.backbones.ast_sources import weights_file as ast_weights_file

    return ast_weights_file(source)


def backbone_reference(kind: str, source: str | os.PathLike) -> dict:
    """Where a frozen backbone came from and the sha256 of its weights: of the file for the AST
    (the hub's own blob name), of the tensors for musicnn's conversions (see
    :func:`mictag.backbones.musicnn_weights.tensor_digest`)."""
    path = weights_file(kind, source)
    return {"kind": kind, "source": str(source), "file": path.name, "sha256": weights_digest(kind, path)}


def weights_digest(kind: str, path: Path) -> str:
    if check_kind(kind) == "musicnn":
        from mictag.backbones.musicnn_weights import tensor_digest

        return tensor_digest(path)
    return file_digest(path)


def same_weights(kind: str, source: str | os.PathLike, recorded: str) -> tuple[bool, str]:
    """Whether ``source``'s weights are the ones ``recorded`` names (their digest now, or, for a
    musicnn model recorded before tensor digests, the file's sha256), and the digest found."""
    path = weights_file(kind, source)
    actual = weights_digest(kind, path)
    return recorded in (actual, file_digest(path) if kind == "musicnn" else actual), actual


def musicnn_tags(source: str | os.PathLike, path: Path) -> str:
    """"MSD" or "MTT": from the model name, or the converted file's recorded source (a file
    without one is taken as MTT)."""
    from safetensors import safe_open

    name = str(source)
    if not Path(name).is_file():
        return "MSD" if name.startswith("MSD") else "MTT"
    with safe_open(str(path), "np") as f:
        recorded = (f.metadata() or {}).get("source", "")
    return "MSD" if ":MSD_" in recorded else "MTT"


def load_backbone(kind: str, source: str | os.PathLike, input_frames: int | None = None,
                  features: str = "dense") -> nn.Module:
    """A frozen backbone with its pretrained weights (musicnn: giving the ``features`` its mappers
    read, see :class:`~mictag.backbones.musicnn.MusicnnConfig`)."""
    if check_kind(kind) == "musicnn":
        from mictag.backbones.musicnn import MusicnnConfig, load_musicnn
        from mictag.backbones.musicnn_weights import load_weights

        path = _musicnn_file(source)
        if Path(source).is_file():
            from safetensors.numpy import load_file

            weights = load_file(str(path))
        else:
            weights = load_weights(str(source))  # checked against the manifest's sha256
        cfg = MusicnnConfig(tags=musicnn_tags(source, path), features=features)
        return load_musicnn(weights, cfg if input_frames is None else replace(cfg, frames=input_frames))
    from mictag.backbones.ast_checkpoints import load_ast

    return load_ast(source, input_frames=input_frames)
