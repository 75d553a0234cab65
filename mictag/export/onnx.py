"""Export a composed system as ONE self-describing ONNX graph.

Two variants from the same weights:
- ``waveform``: inputs ``windows`` (batch, window_samples) float32 16 kHz and ``valid_samples``
  (batch,) int64; the fbank, its fbank-domain padding and the normalisation run in the graph.
- ``fbank``: inputs ``frames`` (batch, target_frames, mel_bins) raw log-mel (as
  :func:`mictag.features.log_mel` gives) and ``valid_frames`` (batch,) int64, for the runtime's
  streaming-mel path.
Outputs: ``probabilities`` (batch, labels), ``logits`` and ``embedding``. The batch axis is
dynamic. Metadata (key ``mictag``, JSON) carries everything the runtime needs.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from mictag import __version__
from mictag.errors import CheckpointError
from mictag.model.fbank import Fbank, FrameFinish

METADATA_KEY = "mictag"
VARIANTS = ("waveform", "fbank")


class ExportGraph(nn.Module):
    """front end (waveform or raw frames) -> system -> (probabilities, logits, embedding)."""

    def __init__(self, system: nn.Module, variant: str):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown export variant {variant!r}; choose {', '.join(VARIANTS)}")
        cfg = system.cfg
        self.variant = variant
        self.fbank = Fbank(cfg.fbank, normalize=cfg.normalize_input) if variant == "waveform" else None
        self.finish = FrameFinish(cfg.fbank, normalize=cfg.normalize_input) if variant == "fbank" else None
        self.system = system

    def forward(self, x: torch.Tensor, valid: torch.Tensor):
        inputs = self.fbank(x, valid) if self.fbank is not None else self.finish(x, valid)
        out = self.system.forward_outputs(inputs)
        logits = out["logits"]
        embedding = out.get("embedding", logits)
        return torch.sigmoid(logits), logits, embedding


def metadata(system: nn.Module, thresholds, extra: dict | None = None, variant: str = "waveform") -> dict:
    cfg = system.cfg
    return {
        "format": "mictag-onnx", "format_version": 1, "mictag_version": __version__, "variant": variant,
        "labels": list(cfg.labels), "thresholds": [float(t) for t in thresholds],
        "sample_rate": cfg.fbank.sample_rate, "window_samples": cfg.fbank.window_samples,
        "window_seconds": cfg.fbank.window_seconds, "default_hop_seconds": cfg.fbank.window_seconds,
        "features": cfg.fbank.to_dict(), "system": cfg.to_dict(), "mapper": cfg.mapper,
        **(extra or {}),
    }


def export_onnx(system: nn.Module, path: str | os.PathLike, meta: dict, variant: str = "waveform",
                opset: int = 17) -> Path:
    """Write ``system`` as one ONNX graph at ``path`` with ``meta`` stored under key ``mictag``.

    Weights are stored inside the file (protobuf allows up to 2 GB; the full AST is ~350 MB),
    so the runtime has exactly one file to find, copy and hash.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportGraph(system, variant).eval()
    fb = system.cfg.fbank
    if variant == "waveform":
        example = (torch.zeros(2, fb.window_samples), torch.full((2,), fb.window_samples, dtype=torch.int64))
        names = ["windows", "valid_samples"]
    else:
        example = (torch.zeros(2, fb.target_frames, fb.num_mel_bins), torch.full((2,), fb.target_frames, dtype=torch.int64))
        names = ["frames", "valid_frames"]
    outputs = ["probabilities", "logits", "embedding"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, example, str(path), input_names=names, output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in names + outputs}, opset_version=opset,
                          dynamo=False)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**meta, "variant": variant})
    onnx.save(model, str(path))
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The mictag metadata of an exported model, or a clear refusal. Needs only onnxruntime."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model {path} does not exist")
    try:
        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable ONNX model: {exc}") from exc
    if METADATA_KEY not in props:
        raise CheckpointError(f"{path} has no mictag metadata (labels, thresholds, features): export it with `mictag export`")
    meta = json.loads(props[METADATA_KEY])
    missing = [k for k in ("labels", "thresholds", "sample_rate", "window_samples", "features") if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: mictag metadata lacks {', '.join(missing)}")
    return meta


def quantize_int8(path: Path, meta: dict, probe_items: int = 4) -> tuple[Path, float]:
    """Dynamically quantise ``path``'s weights to int8 (CPU), in place; returns the path and the
    measured max absolute probability deviation from the fp32 graph on random windows."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_name(path.stem + ".fp32" + path.suffix)
    os.replace(path, fp32)
    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**meta, "precision": "int8"})
    onnx.save(model, str(path))
    rng = np.random.default_rng(0)
    fb = meta["features"]
    if meta["variant"] == "waveform":
        n = int(meta["window_samples"])
        feeds = {"windows": (0.3 * rng.standard_normal((probe_items, n))).astype(np.float32),
                 "valid_samples": np.full(probe_items, n, np.int64)}
    else:
        shape = (probe_items, fb["target_frames"], fb["num_mel_bins"])
        feeds = {"frames": rng.uniform(-12, 4, shape).astype(np.float32),
                 "valid_frames": np.full(probe_items, fb["target_frames"], np.int64)}
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["probabilities"], feeds)[0]
            for p in (fp32, path)]
    fp32.unlink()
    return path, float(np.abs(outs[0] - outs[1]).max())
