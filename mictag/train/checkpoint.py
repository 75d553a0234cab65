"""Small model files: the trained weights only (never the frozen backbone), plus everything needed
to rebuild and trust the model: the system config, a reference to the frozen checkpoint with its
sha256, labels, feature parameters, thresholds, recipe, metrics and the mictag version."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mictag import __version__
from mictag.backbones.frozen import same_weights
from mictag.errors import CheckpointError
from mictag.model.artifact import load_payload
from mictag.model.system import SystemConfig, build_system, frozen_backbone

FORMAT = "mictag-model"
FORMAT_VERSION = 1


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights and buffers training can change: everything but a frozen backbone."""
    finetune = getattr(model, "finetune", False)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if finetune or not k.startswith("backbone.")}


def save_model(path: str | os.PathLike, model: torch.nn.Module, cfg: SystemConfig, backbone: dict | None,
               thresholds, recipe: dict, metrics: dict, history: list | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "mictag_version": __version__,
        "system": cfg.to_dict(), "backbone": backbone, "labels": list(cfg.labels),
        "features": cfg.fbank.to_dict(), "thresholds": [float(t) for t in thresholds],
        "recipe": recipe, "metrics": metrics, "history": history or [],
        "weights": trained_state(model),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_model(path: str | os.PathLike) -> dict:
    """The raw payload of a model file, validated."""
    payload = load_payload(path, FORMAT, "model file")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer mictag ({payload.get('mictag_version')}); upgrade mictag")
    return payload


def load_model(path: str | os.PathLike, source: str | os.PathLike | None = None,
               verify_backbone: bool = True) -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained system. ``source`` overrides where the frozen backbone is read from; its
    sha256 must equal the one the model was trained against."""
    payload = read_model(path)
    cfg = SystemConfig.from_dict(payload["system"])
    backbone = None
    if cfg.baseline != "cnn-bs":
        ref = payload.get("backbone") or {}
        source = source or ref.get("source")
        option = "--ast" if cfg.backbone == "ast" else "--musicnn"
        if not source:
            raise CheckpointError(f"{path} does not say which {cfg.backbone} backbone it was trained on: pass {option}")
        if verify_backbone and ref.get("sha256"):
            same, actual = same_weights(cfg.backbone, source, ref["sha256"])
            if not same:
                raise CheckpointError(
                    f"{path} was trained on the frozen {cfg.backbone.replace('ast', 'AST')} {ref.get('file')} (sha256 {ref['sha256'][:12]}...), "
                    f"but {source} has sha256 {actual[:12]}...: pass the original backbone with {option}")
        backbone = frozen_backbone(cfg, source)
    model = build_system(cfg, backbone=backbone)
    expected = trained_state(model)
    weights = payload["weights"]
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit its own config: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(weights, strict=False)
    return model.eval(), payload
