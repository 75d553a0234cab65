"""Export a composed system as ONE self-describing ONNX graph.

Two variants from the same weights:
- ``waveform``: inputs ``windows`` (batch, window_samples) float32 16 kHz and ``valid_samples``
  (batch,) int64; the fbank, its fbank-domain padding and the normalisation run in the graph.
- ``fbank``: inputs ``frames`` (batch, target_frames, mel_bins) raw log-mel (as
  :func:`mictag.frontends.log_mel` gives) and ``valid_frames`` (batch,) int64, for the runtime's
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
from mictag.metadata import METADATA_KEY, read_metadata  # noqa: F401  (re-exported for export users)
from mictag.model.graph import VARIANTS, ExportGraph  # noqa: F401  (VARIANTS re-exported for export users)




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
    _set_metadata(model, {**meta, "variant": variant})
    onnx.save(model, str(path))
    return path


def _probe_feeds(meta: dict, items: int = 4) -> dict:
    """Random inputs of the right kind for a graph described by ``meta``."""
    import numpy as np

    rng = np.random.default_rng(0)
    fb = meta["features"]
    if meta["variant"] == "waveform":
        n = int(meta["window_samples"])
        return {"windows": (0.3 * rng.standard_normal((items, n))).astype(np.float32),
                "valid_samples": np.full(items, n, np.int64)}
    shape = (items, fb["target_frames"], fb["num_mel_bins"])
    return {"frames": rng.uniform(-12, 4, shape).astype(np.float32),
            "valid_frames": np.full(items, fb["target_frames"], np.int64)}


def _set_metadata(model, meta: dict) -> None:
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)


def _inline_initializer_aliases(model):
    """Replace ``Identity(initializer)`` nodes (the exporter's way of sharing equal weights) by
    initializers of their own, so that a type conversion sees every weight where it is used."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _fp16(src: Path, dst: Path) -> None:
    """Weights and activations in float16, except the fbank front end (its power spectrum spans far
    more than float16's range and its log floor is a float16 subnormal) and LayerNorm/Softmax;
    inputs and outputs stay float32."""
    import onnx
    from onnxconverter_common import float16

    model = _inline_initializer_aliases(onnx.load(str(src)))
    del model.graph.value_info[:]  # stale float32 annotations; ONNX Runtime re-infers the types
    front = [n.name for n in model.graph.node if n.name.startswith(("/fbank/", "/finish/"))]
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=["LayerNormalization", "Softmax", "Log", "Clip", "Sigmoid"],
        node_block_list=front)
    onnx.save(converted, str(dst))


def _int8_dynamic(src: Path, dst: Path) -> None:
    """Dynamically quantised int8 weights (CPU; activations quantised at run time). Kept to compare
    with the static, calibrated int8 of :func:`write_int8`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


PRECISIONS = {"fp16": _fp16, "int8-dynamic": _int8_dynamic}


def write_int8(path: Path, meta: dict, calibrate: str | os.PathLike | None = None, windows: int = 16) -> tuple[Path, dict]:
    """Write the static, calibrated int8 variant of the fp32 graph at ``path`` beside it
    (:func:`mictag.metadata.int8_path`), with its deviation from fp32 measured on windows it was
    not calibrated on and recorded in its metadata. Returns (its path, the deviation)."""
    import onnx

    from mictag.export.int8 import calibration_windows, deviation, quantize_static_int8
    from mictag.metadata import int8_path

    path = Path(path)
    feeds, source = calibration_windows(meta, calibrate, count=2 * windows)
    dst = int8_path(path)
    tmp = dst.with_name(dst.name + ".partial.onnx")
    unshared = dst.with_name(dst.name + ".fp32.partial.onnx")
    try:
        # A weight the exporter shares between a product and, say, a LayerNorm (equal values) would
        # otherwise reach the LayerNorm through the product's quantisation.
        onnx.save(_inline_initializer_aliases(onnx.load(str(path))), str(unshared))
        quantize_static_int8(unshared, tmp, feeds[0::2])
        measured = deviation(path, tmp, feeds[1::2], meta["thresholds"])
        record = {"method": "static QDQ (MatMul/Gemm/Conv weights int8 per channel, activations uint8)",
                  "calibration": source, **measured}
        model = onnx.load(str(tmp))
        _set_metadata(model, {**meta, "precision": "int8", "int8": record})
        onnx.save(model, str(tmp))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
        unshared.unlink(missing_ok=True)
    return dst, record


def convert_precision(path: Path, meta: dict, precision: str) -> tuple[Path, float]:
    """Rewrite the fp32 graph at ``path`` in ``precision`` (in place) and return the measured max
    absolute probability deviation from the fp32 graph on random windows."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose fp32, {', '.join(PRECISIONS)}")
    fp32 = path.with_name(path.stem + ".fp32" + path.suffix)
    os.replace(path, fp32)
    try:
        PRECISIONS[precision](fp32, path)
        model = onnx.load(str(path))
        _set_metadata(model, {**meta, "precision": precision})
        onnx.save(model, str(path))
        feeds = _probe_feeds(meta)
        outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["probabilities"], feeds)[0]
                for p in (fp32, path)]
    finally:
        fp32.unlink(missing_ok=True)
    return path, float(np.abs(outs[0] - outs[1]).max())
