"""OpenVINO, the CPU engine for bf16 (and fp32 on AVX-512): it runs the exported ONNX graph as
it is, with its own fused attention and bf16/int8 matmul kernels, and no torch.

Two things are done here and nowhere else:
- **Telemetry stays off.** ``import openvino`` imports its model-conversion tools, which send a
  usage event through the ``openvino_telemetry`` package (and write a client id under
  ``~/intel``) unless the user opted out. mictag imports OpenVINO with that package hidden, so
  the tools fall back to their built-in no-op stub; nothing is sent or written.
- **Compiled models are cached** under ``$MICTAG_HOME/cache/openvino``: the first start compiles
  (seconds for the full AST), later starts load the cached blob (a fraction of a second).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mictag.errors import ModelError
from mictag.paths import mictag_home
from mictag.runtime.engines.base import Backend, embedding_width, input_names, model_errors

# The precision of what a graph computes in floating point; an int8 (QDQ) graph's int8 products come
# from the graph itself, and its other operations run in f32 (or bf16, when asked for "bf16").
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}


def import_openvino():
    """The ``openvino`` module, imported with its telemetry package hidden."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    hidden = "openvino_telemetry" not in sys.modules
    if hidden:
        sys.modules["openvino_telemetry"] = None  # makes `import openvino_telemetry` raise ImportError
    try:
        import openvino
    finally:
        if hidden and sys.modules.get("openvino_telemetry", 0) is None:
            del sys.modules["openvino_telemetry"]
    return openvino


def cache_dir() -> Path:
    return mictag_home() / "cache" / "openvino"


def compile_model(path: str | Path, precision: str, threads: int | None = None, cache: bool = True,
                  cache_root: Path | None = None):
    """(compiled model, its CPU inference precision) for the ONNX file at ``path``; compiled
    models are cached in ``cache_root`` (default :func:`cache_dir`) unless ``cache`` is False."""
    ov = import_openvino()
    core = ov.Core()
    if cache:
        root = cache_root or cache_dir()
        try:
            root.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(root)})
        except OSError:
            pass  # an unwritable cache only costs start-up time
    config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(str(path), "CPU", config)
    runs_in = compiled.get_property("INFERENCE_PRECISION_HINT")
    return compiled, runs_in.to_string() if hasattr(runs_in, "to_string") else str(runs_in)


class OpenVINOBackend(Backend):
    """OpenVINO on the CPU, in the precision asked (bf16 where the CPU has it natively)."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None, rest: str = ""):
        from mictag.metadata import read_metadata


        with model_errors():
            self.meta = read_metadata(path)
        try:
            self.compiled, self.runs_in = compile_model(path, rest or precision, threads)
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot load {path}: {str(exc).strip().splitlines()[-1][:200]}") from None
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output("probabilities")
        self.name = "openvino"
        self.inputs = input_names(self.variant)
        self.preferred_batch = 4

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = self.request.infer({self.inputs[0]: np.ascontiguousarray(x, np.float32),
                                  self.inputs[1]: valid.astype(np.int64)})
        return np.array(out[self.output], np.float32)  # a copy: the request reuses its buffers

    def run_embedded(self, x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.request.infer({self.inputs[0]: np.ascontiguousarray(x, np.float32),
                                  self.inputs[1]: valid.astype(np.int64)})
        return np.array(out[self.output], np.float32), np.array(out[self.embedding], np.float32)

    def want_embeddings(self) -> None:
        widths = {}
        for out in self.compiled.outputs:
            last = out.get_partial_shape()[-1]
            for name in out.get_names():
                widths[name] = last.get_length() if last.is_static else str(last)
        embedding_width(widths)
        self.embedding = self.compiled.output("embedding")
        self.embeds = True
