"""Packaging a trained system as a shipped tagger, and building the shipped tagger into an ONNX
model against the user's frozen backbone (see :mod:`mictag.catalog` for the layout)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mictag.backbones.frozen import backbone_reference, same_weights
from mictag.digest import file_digest
from mictag.errors import CheckpointError
from mictag.model.system import SystemConfig, build_system, frozen_backbone
from mictag.catalog.shipped import TAGGERS_DIR, built_name, provenance, weights_path
from mictag.train.checkpoint import read_model, trained_state


def package(model_file: str | os.PathLike, name: str, thresholds, record: dict, out_dir: Path = TAGGERS_DIR) -> Path:
    """Write a trained model's trained weights (``<name>.safetensors``) and its provenance
    (``<name>.json``: ``record`` plus the system, labels, thresholds, backbone and recipe)."""
    from safetensors.torch import save_file

    payload = read_model(model_file)
    cfg = SystemConfig.from_dict(payload["system"])
    ref = payload["backbone"]
    same, _ = same_weights(cfg.backbone, ref["source"], ref["sha256"])
    if not same:
        raise CheckpointError(f"{model_file} was trained on other {cfg.backbone} weights than {ref['source']} here")
    backbone = backbone_reference(cfg.backbone, ref["source"])  # the digest users' copies are checked against
    if cfg.baseline == "finetune":
        raise CheckpointError("a fine-tuned backbone is megabytes, not a shipped tagger's kilobytes: ship a "
                              "reprogrammed or mapper-only system")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    tensors = {k: v.contiguous() for k, v in payload["weights"].items()}
    save_file(tensors, str(weights), metadata={"name": name})
    os.chmod(weights, 0o644)  # a package file: readable by everyone who installs it
    full = {
        "name": name, "system_name": cfg.system_name, "system": cfg.to_dict(), "labels": list(cfg.labels),
        "thresholds": [float(t) for t in thresholds], "backbone": backbone, "recipe": payload["recipe"],
        "trainable": int(sum(v.numel() for k, v in tensors.items() if not k.endswith(("running_mean", "running_var",
                                                                                          "num_batches_tracked")))),
        "trained_with": payload.get("mictag_version"),
        "weights": {"file": weights.name, "sha256": file_digest(weights), "bytes": weights.stat().st_size},
        **record,
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(full, indent=1) + "\n", encoding="utf-8")
    return path


def load_shipped(name: str, source: str | os.PathLike | None = None) -> tuple[torch.nn.Module, dict]:
    """The shipped system rebuilt on the frozen backbone at ``source`` (default: the one it records),
    refused if that backbone's sha256 differs from the one it was trained on."""
    from safetensors.torch import load_file

    record = provenance(name)
    cfg = SystemConfig.from_dict(record["system"])
    ref = record["backbone"]
    source = source or ref["source"]
    same, actual = same_weights(cfg.backbone, source, ref["sha256"])
    if not same:
        raise CheckpointError(f"the shipped tagger {name} was trained on {ref['file']} (weights sha256 {ref['sha256'][:12]}...), "
                              f"but {source} has {actual[:12]}...: scan with --zero-training, or pull the original "
                              f"musicnn 0.1.0 weights")
    weights_file = weights_path(name)
    if file_digest(weights_file) != record["weights"]["sha256"]:
        raise CheckpointError(f"{weights_file} does not match its record (sha256): reinstall mictag")
    model = build_system(cfg, backbone=frozen_backbone(cfg, source))
    weights = load_file(str(weights_file))
    expected = trained_state(model)
    if set(weights) != set(expected):
        raise CheckpointError(f"{weights_file} does not fit its system: missing {sorted(set(expected) - set(weights))}, "
                              f"unexpected {sorted(set(weights) - set(expected))}")
    model.load_state_dict(weights, strict=False)
    return model.eval(), record


def build_shipped(name: str, models_dir: Path, on_message=None, source: str | os.PathLike | None = None) -> Path:
    """The shipped tagger as an ONNX model (fbank input, as the zero-training taggers), built once
    into ``models_dir`` and reused while its weights and backbone stay the same."""
    from mictag.export.onnx import export_onnx, metadata

    record = provenance(name)
    kind = record["system"]["backbone"]
    backbone_sha = backbone_reference(kind, source or record["backbone"]["source"])["sha256"]  # of the tensors
    target = models_dir / built_name(name, backbone_sha)
    if target.is_file():
        return target
    if on_message:
        on_message(f"building the {name} tagger (once; cached as {target})")
    system, record = load_shipped(name, source)
    extra = {"backbone": record["backbone"], "recipe": record["recipe"], "metrics": record.get("metrics"),
             "shipped": {k: record.get(k) for k in ("name", "system_name", "corpus", "seed", "selection", "weights")},
             "precision": "fp32"}
    meta = metadata(system, record["thresholds"], extra, "fbank")
    tmp = target.with_name(target.name + ".partial.onnx")
    export_onnx(system, tmp, meta, "fbank")
    os.replace(tmp, target)
    return target
