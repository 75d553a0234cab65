"""Inference backends behind one interface. Each imports its library only when chosen.

- ``openvino``: OpenVINO on an exported ``.onnx`` (the CPU engine for bf16; no torch);
- ``ort-cpu`` / ``ort-cuda`` / ``ort-trt``: ONNX Runtime with the CPU, CUDA or TensorRT execution
  provider, on an exported ``.onnx``;
- ``tensorrt``: a serialized TensorRT engine (``.engine`` + its ``.json`` metadata);
- ``torch``: the PyTorch artifact from ``mictag export --torch-out`` (bf16 on GPU and on CPUs
  with native bf16).
``auto`` takes the fastest path whose deviation is bounded, for the model, the engines installed
and the CPU (:mod:`mictag.runtime.engines.choice`); the plan it made is ``backend.plan``.

Every backend has ``run(x, valid)`` (synchronous) and ``submit(x, valid) -> Submitted`` with
``Submitted.result()``: the GPU backends (tensorrt, ort-cuda, ort-trt, torch on CUDA) return from
``submit`` once the batch is copied into their own staging, so a caller that submits batch n+1
before fetching batch n overlaps n+1's upload with n's compute. ``in_flight`` says how many
batches a backend usefully holds at once (1: ``submit`` runs the batch before it returns).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mictag.cpu import cpu_info
from mictag.errors import MictagError, ModelError
from mictag.metadata import int8_path
from mictag.runtime.engines.choice import EnginePlan, Engines, Int8Variant, choose_engine
from mictag.runtime.engines.base import Backend, model_errors

BACKENDS = ("auto", "openvino", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch")


def model_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".engine", ".plan", ".trt"):
        return "engine"
    if suffix in (".pt", ".pth"):
        return "torch"
    raise ModelError(f"{path}: unknown model type (expected .onnx, .engine or a torch artifact .pt)")


def _onnx_precision(path: Path) -> str:
    from mictag.metadata import read_metadata

    with model_errors():
        precision = str(read_metadata(path).get("precision", "fp32"))
        return "int8" if precision.startswith("int8") else precision  # int8-dynamic runs as int8 does


def int8_variant(path: Path) -> Int8Variant | None:
    """The calibrated int8 sibling of an fp32 ONNX model, if one was exported from the same model
    (its metadata, precision aside, equals the model's) and records its deviation."""
    from mictag.metadata import read_metadata

    sibling = int8_path(path)
    if not sibling.is_file():
        return None
    try:
        meta, mine = read_metadata(sibling), read_metadata(path)
    except MictagError:
        return None
    deviation = meta.get("int8", {}).get("max_abs_dp")
    strip = lambda m: {k: v for k, v in m.items() if k not in ("precision", "int8")}  # noqa: E731
    if meta.get("precision") != "int8" or deviation is None or strip(meta) != strip(mine):
        return None
    return Int8Variant(sibling, float(deviation))


def _refusals(scope: str):
    """Why each fast path is refused on ``scope`` (a library, or the Python API), from the checks
    of earlier scans there."""
    from mictag.runtime.engines.trust import Verdicts, verdict_key

    verdicts = Verdicts()
    return lambda model, backend, precision, rest: verdicts.refusal(verdict_key(model, backend, precision, rest), scope)


def plan_engine(model: str | os.PathLike, backend: str = "auto", precision: str | None = None,
                library: str | os.PathLike | None = None) -> EnginePlan:
    """What ``open_backend`` would run ``model`` on here, for ``library`` (None: the Python API),
    and why (nothing is loaded)."""
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model {path} does not exist")
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    kind = model_kind(path)
    wanted = {"openvino": "onnx", "ort-cpu": "onnx", "ort-cuda": "onnx", "ort-trt": "onnx", "tensorrt": "engine",
              "torch": "torch"}.get(backend, kind)
    if wanted != kind:
        raise ModelError(f"backend {backend} needs a {wanted} model, but {path.name} is a {kind} model")
    model_precision = _onnx_precision(path) if kind == "onnx" else "fp32"
    cuda = False
    if kind == "torch":
        import torch

        cuda = torch.cuda.is_available()
    engines = Engines.detect()
    int8 = int8_variant(path) if kind == "onnx" and model_precision == "fp32" else None
    from mictag.runtime.engines.trust import library_scope

    with model_errors():
        plan = choose_engine(path, kind, model_precision, cpu_info(), engines, backend, precision, int8, cuda,
                             _refusals(library_scope(library)))
    if plan.backend in ("openvino", "tensorrt", "torch") and not engines.has(plan.backend):
        what = {"openvino": "pip install openvino", "tensorrt": "TensorRT", "torch": "pip install 'mictag[train]'"}
        raise ModelError(f"backend {plan.backend} is not installed here ({what[plan.backend]})")
    return plan


def open_backend(model: str | os.PathLike, backend: str = "auto", threads: int | None = None,
                 precision: str | None = None, on_message=None, library: str | os.PathLike | None = None) -> Backend:
    """Load ``model`` once with the chosen backend (``auto``: the fastest bounded path here, see
    :mod:`mictag.runtime.engines.choice`) in ``precision`` (None: the backend's best here).
    ``on_message`` hears the plan's warnings and what to install for a faster path. A fast path
    that mictag chose comes wrapped in :class:`mictag.runtime.engines.trust.TrustedBackend`, checked
    against fp32 as it scores ``library`` (None: the Python API's verdicts)."""
    plan = plan_engine(model, backend, precision, library)
    for line in (*plan.warnings, *([plan.advice] if plan.advice else [])):
        if on_message:
            on_message(line)
    engine = _load(plan, threads)
    if plan.check:
        from mictag.runtime.engines.trust import TrustedBackend, library_scope, verdict_key

        reference = reference_plan(plan, Path(model))
        return TrustedBackend(engine, lambda: _load(reference, threads),
                              key=verdict_key(plan.model, plan.backend, plan.precision, plan.rest),
                              scope=library_scope(library), on_message=on_message)
    return engine


def reference_plan(plan: EnginePlan, model: Path) -> EnginePlan:
    """What a fast path is checked against: the fp32 model on the same engine (OpenVINO, ONNX
    Runtime's CPU provider, or torch on the CPU)."""
    return EnginePlan(plan.backend, "fp32", "the reference a fast path is checked against", model)


def _load(plan: EnginePlan, threads: int | None) -> Backend:
    # Each engine's module is imported only when it is the one chosen.
    if plan.backend == "torch":
        from mictag.runtime.engines.torch import TorchBackend

        engine: Backend = TorchBackend(plan.model, precision=plan.precision)
    elif plan.backend == "tensorrt":
        from mictag.runtime.engines.tensorrt import TensorRTBackend

        engine = TensorRTBackend(plan.model)
    elif plan.backend == "openvino":
        from mictag.runtime.engines.openvino import OpenVINOBackend

        engine = OpenVINOBackend(plan.model, plan.precision, threads, plan.rest)
    else:
        from mictag.runtime.engines.ort import OrtBackend

        engine = OrtBackend(plan.model, plan.backend, threads, plan.precision)
    engine.plan = plan
    return engine


def model_metadata(model: str | os.PathLike) -> dict:
    """A model's mictag metadata without loading it for inference (e.g. on a Ray driver)."""
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model {path} does not exist")
    kind = model_kind(path)
    with model_errors(lambda exc: f"cannot read the metadata of {path}: {exc}"):
        if kind == "onnx":
            from mictag.metadata import read_metadata

            return read_metadata(path)
        if kind == "engine":
            from mictag.runtime.engines.tensorrt import metadata_path

            return json.loads(metadata_path(path).read_text("utf-8"))
        import torch

        return torch.load(str(path), map_location="cpu", weights_only=True)["meta"]
