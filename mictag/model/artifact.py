"""Loading mictag's torch files: the payload check every one of them passes (:func:`load_payload`,
also used by training's model files), and the torch artifact that ``mictag export --torch-out``
writes, rebuilt for inference (:func:`load_torch_artifact`, the runtime's torch engine).

Rebuilding from the config (rather than shipping a traced program) lets the loading machine pick
its own attention kernels, precision and torch.compile / CUDA-graph settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mictag.backbones.attention import fastest_kernel, set_kernel
from mictag.errors import CheckpointError
from mictag.model.graph import ExportGraph
from mictag.model.system import SystemConfig, build_system, new_backbone

FORMAT = "mictag-torch"

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}



def load_payload(path: str | os.PathLike, fmt: str, what: str, how: str = "", mmap: bool = False) -> dict:
    """A mictag torch file's payload (weights only, on the CPU), refused clearly unless it is a
    readable ``fmt`` file; ``what`` names the kind of file, ``how`` says how to write one.
    ``mmap`` maps the tensors from the file instead of reading them (large files load at once)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path} is not a mictag {what}{how}")
    return payload



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


def _rebuilt(payload: dict) -> nn.Module:
    """The system of a payload with its weights, without initialising the frozen backbone first:
    the backbone is built on the meta device and takes the (memory-mapped) tensors as they are."""
    cfg = SystemConfig.from_dict(payload["system"])
    state = payload["state"]
    prefix = "backbone."
    if cfg.baseline == "cnn-bs":
        system = build_system(cfg)
        system.load_state_dict(state)
        return system
    with torch.device("meta"):
        backbone = new_backbone(cfg)
    backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, assign=True)
    system = build_system(cfg, backbone=backbone)
    system.load_state_dict(state)
    return system


def load_torch_artifact(path: str | os.PathLike, device: str | torch.device = "cpu", precision: str = "fp32",
                        variant: str = "waveform", compile: bool = False,
                        attention: str | None = None) -> tuple[nn.Module, dict]:
    """(module, metadata) ready for inference on ``device``. On a CPU the attention kernel is the
    faster of SDPA and blocked matmuls at the model's shape and dtype, measured once per machine
    (``attention`` names one instead); the chosen one is ``module.attention``."""
    payload = load_payload(path, FORMAT, "torch model", " (write one with `mictag export --torch-out`)", mmap=True)
    if precision not in DTYPES:
        raise CheckpointError(f"unknown precision {precision!r}; choose {', '.join(DTYPES)}")
    system = _rebuilt(payload)
    module = TorchTagger(system.eval(), variant, DTYPES[precision]).to(device).eval()
    module.attention = "sdpa"
    if str(device) == "cpu" and system.cfg.backbone == "ast" and system.cfg.baseline != "cnn-bs":
        module.attention = attention or _cpu_attention_kernel(system.cfg.ast, DTYPES[precision])
        set_kernel(module, module.attention)
    if compile:
        module = torch.compile(module, mode="max-autotune-no-cudagraphs" if str(device) == "cpu" else "reduce-overhead")
    return module, payload["meta"]


def _cpu_attention_kernel(cfg, dtype: torch.dtype) -> str:
    from mictag.paths import mictag_home

    kernel, _ = fastest_kernel(cfg.num_heads, cfg.num_patches + 2, cfg.hidden_size // cfg.num_heads, dtype,
                               cache=mictag_home() / "cache" / "attention-kernels.json")
    return kernel
