"""The PyTorch export target, for GPUs without TensorRT: one self-contained file (system config,
every weight including the frozen backbone, and the same metadata as the ONNX export) that the
runtime's torch engine rebuilds (:mod:`mictag.model.artifact`) with SDPA attention, in
fp32/fp16/bf16, optionally compiled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from mictag.model.artifact import FORMAT


def save_torch_artifact(system: nn.Module, path: str | os.PathLike, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.loads(json.dumps(meta))  # the same plain JSON values as the ONNX metadata
    payload = {"format": FORMAT, "format_version": 1, "meta": meta, "system": system.cfg.to_dict(),
               "state": {k: v.detach().cpu() for k, v in system.state_dict().items()}}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path
