"""Serialized TensorRT engines from the exported ONNX graph (TensorRT >= 10 Python API).

The engine gets one optimisation profile over the batch axis, fp16 by default (the fbank's
Log/Clip are pinned to fp32 by the precision constraints), a timing cache that makes rebuilds
fast, and the ONNX metadata written beside it as ``<engine>.json``: an engine file has no room
for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mictag.errors import MictagError
from mictag.runtime.engines.tensorrt import metadata_path

NEEDS_TRT = ("building a TensorRT engine needs TensorRT and an NVIDIA GPU; install them with "
             "pip install 'mictag[gpu]' on a CUDA machine, or use the ONNX model or --torch-out instead")


@dataclass(frozen=True)
class EngineSpec:
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 128
    fp16: bool = True
    int8: bool = False  # needs a calibrator or a Q/DQ graph; only the flag is set here
    workspace_gb: float = 8.0


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, meta: dict,
                 spec: EngineSpec = EngineSpec(), timing_cache: str | os.PathLike | None = None) -> Path:
    """Build and write a serialized engine for ``onnx_path``; returns its path."""
    from mictag.runtime.engines.tensorrt import import_tensorrt

    trt = import_tensorrt("Builder", NEEDS_TRT)
    if not spec.min_batch <= spec.opt_batch <= spec.max_batch:
        raise MictagError(f"batch sizes must satisfy min <= opt <= max, got {spec.min_batch}/{spec.opt_batch}/{spec.max_batch}")
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no GPU / driver
        raise MictagError(f"TensorRT found no usable NVIDIA GPU ({exc}); {NEEDS_TRT}") from exc
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MictagError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gb * (1 << 30)))
    if spec.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if spec.int8:
        config.set_flag(trt.BuilderFlag.INT8)
    # Keep the fbank's log and its floor in fp32: fp16's range cannot hold the power spectrum.
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name.startswith(("/fbank/", "/finish/")):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype in (trt.float32, trt.float16):
                    layer.set_output_type(j, trt.float32)
    cache_file = Path(timing_cache) if timing_cache else Path(str(engine_path) + ".timing-cache")
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (spec.min_batch, *rest), (spec.opt_batch, *rest), (spec.max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MictagError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    engine_meta = {**meta, "engine": {"tensorrt": trt.__version__, "fp16": spec.fp16, "int8": spec.int8,
                                      "batch": [spec.min_batch, spec.opt_batch, spec.max_batch]}}
    metadata_path(engine_path).write_text(json.dumps(engine_meta, indent=1))
    return engine_path
