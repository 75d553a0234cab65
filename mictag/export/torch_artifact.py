"""The PyTorch export target, for GPUs without TensorRT: one self-contained file (system config,
every weight including the frozen AST, and the same metadata as the ONNX export) that the
runtime's torch backend rebuilds with SDPA attention, in fp32/fp16/bf16, optionally compiled.

Rebuilding from the config (rather than shipping a traced program) lets the loading machine pick
its own attention kernels, precision and torch.compile / CUDA-graph settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from mictag.errors import CheckpointError
from mictag.export.onnx import ExportGraph
from mictag.model.system import SystemConfig, build_system
from mictag.train.checkpoint import load_payload

FORMAT = "mictag-torch"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


class TorchTagger(nn.Module):
    """Front end in fp32 (its dynamic range needs it), the rest in ``dtype``; returns
    (probabilities, logits, embedding) in fp32, like the ONNX graph."""

    def __init__(self, system: nn.Module, variant: str, dtype: torch.dtype):
        super().__init__()
        self.graph = ExportGraph(system, variant)
        self.dtype = dtype
        self.graph.system.to(dtype)

    def forward(self, x: torch.Tensor, valid: torch.Tensor):
        g = self.graph
        inputs = g.fbank(x, valid) if g.fbank is not None else g.finish(x, valid)
        out = g.system.forward_outputs(inputs.to(self.dtype))
        logits = out["logits"].float()
        return torch.sigmoid(logits), logits, out.get("embedding", out["logits"]).float()


def load_torch_artifact(path: str | os.PathLike, device: str | torch.device = "cpu", precision: str = "fp32",
                        variant: str = "waveform", compile: bool = False) -> tuple[nn.Module, dict]:
    """(module, metadata) ready for inference on ``device``."""
    payload = load_payload(path, FORMAT, "torch model", " (write one with `mictag export --torch-out`)")
    if precision not in DTYPES:
        raise CheckpointError(f"unknown precision {precision!r}; choose {', '.join(DTYPES)}")
    cfg = SystemConfig.from_dict(payload["system"])
    system = build_system(cfg)
    system.load_state_dict(payload["state"])
    module = TorchTagger(system.eval(), variant, DTYPES[precision]).to(device).eval()
    if compile:
        module = torch.compile(module, mode="max-autotune-no-cudagraphs" if str(device) == "cpu" else "reduce-overhead")
    return module, payload["meta"]
