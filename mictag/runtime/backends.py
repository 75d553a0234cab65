"""Inference backends behind one interface. Each imports its library only when chosen.

- ``openvino``: OpenVINO on an exported ``.onnx`` (the CPU engine for bf16; no torch);
- ``ort-cpu`` / ``ort-cuda`` / ``ort-trt``: ONNX Runtime with the CPU, CUDA or TensorRT execution
  provider, on an exported ``.onnx``;
- ``tensorrt``: a serialized TensorRT engine (``.engine`` + its ``.json`` metadata);
- ``torch``: the PyTorch artifact from ``mictag export --torch-out`` (bf16 on GPU and on CPUs
  with native bf16).
``auto`` takes the fastest path whose deviation is bounded, for the model, the engines installed
and the CPU (:mod:`mictag.runtime.choice`); the plan it made is ``backend.plan``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mictag.cpu import cpu_info
from mictag.errors import MictagError
from mictag.metadata import int8_path
from mictag.runtime.choice import ChoiceError, EnginePlan, Engines, Int8Variant, choose_engine

BACKENDS = ("auto", "openvino", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch")


class ModelError(MictagError):
    """A model file that cannot be used: missing, foreign, or without mictag metadata."""


class Backend:
    """``run(x, valid) -> probabilities`` on a batch of windows; ``meta`` describes the model."""

    name = ""
    meta: dict
    preferred_batch = 8
    plan: EnginePlan | None = None

    @property
    def description(self) -> str:
        """What runs the model, e.g. "openvino bf16 (avx512_bf16)"."""
        return self.plan.describe() if self.plan else self.name

    @property
    def variant(self) -> str:
        return self.meta.get("variant", "waveform")

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _input_names(variant: str) -> tuple[str, str]:
    return ("windows", "valid_samples") if variant == "waveform" else ("frames", "valid_frames")


class OrtBackend(Backend):
    PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                 "ort-trt": "TensorrtExecutionProvider"}

    def __init__(self, path: Path, name: str, threads: int | None = None):
        import onnxruntime as ort

        from mictag.metadata import check_metadata

        provider = self.PROVIDERS[name]
        if provider not in ort.get_available_providers():
            raise ModelError(f"backend {name} needs ONNX Runtime's {provider}, which this installation lacks "
                             f"(it has {', '.join(ort.get_available_providers())})")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
            self.meta = check_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        except MictagError as exc:
            raise ModelError(str(exc)) from None
        except Exception as exc:
            raise ModelError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
        self.name = name
        self.inputs = _input_names(self.variant)
        self.preferred_batch = 4 if name == "ort-cpu" else 64

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {self.inputs[0]: x, self.inputs[1]: valid.astype(np.int64)})[0]


class OpenVINOBackend(Backend):
    """OpenVINO on the CPU, in the precision asked (bf16 where the CPU has it natively)."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None, rest: str = ""):
        from mictag.metadata import read_metadata
        from mictag.runtime.openvino_engine import compile_model

        try:
            self.meta = read_metadata(path)
        except MictagError as exc:
            raise ModelError(str(exc)) from None
        try:
            self.compiled, self.runs_in = compile_model(path, rest or precision, threads)
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot load {path}: {str(exc).strip().splitlines()[-1][:200]}") from None
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output("probabilities")
        self.name = "openvino"
        self.inputs = _input_names(self.variant)
        self.preferred_batch = 4

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = self.request.infer({self.inputs[0]: np.ascontiguousarray(x, np.float32),
                                  self.inputs[1]: valid.astype(np.int64)})
        return np.array(out[self.output], np.float32)  # a copy: the request reuses its buffers


class TorchBackend(Backend):
    """The torch artifact. On a GPU: bf16 by default, torch.compile in reduce-overhead mode (CUDA
    graphs) with batches padded to one static size so the graph is captured once, and inputs
    staged through pinned host buffers with non-blocking copies."""

    def __init__(self, path: Path, device: str | None = None, precision: str | None = None,
                 compile: bool | None = None, batch: int | None = None):
        import torch

        from mictag.export.torch_artifact import load_torch_artifact

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.startswith("cuda")
        precision = precision or ("bf16" if self.cuda or cpu_info().bf16 else "fp32")
        self.compiled = self.cuda if compile is None else compile
        if self.cuda:
            torch.backends.cudnn.allow_tf32 = False  # the fbank conv must stay exact fp32
        try:
            self.module, self.meta = load_torch_artifact(path, self.device, precision, compile=self.compiled)
        except MictagError as exc:
            raise ModelError(str(exc)) from None
        self.name = "torch"
        self.precision = precision
        self.preferred_batch = batch or (64 if self.cuda else 4)
        self._pinned: dict[tuple, object] = {}

    def _stage(self, array: np.ndarray):
        """Host array -> device tensor, through a reused pinned buffer on CUDA."""
        torch = self.torch
        src = torch.from_numpy(np.ascontiguousarray(array))
        if not self.cuda:
            return src
        key = (tuple(src.shape), src.dtype)
        buf = self._pinned.get(key)
        if buf is None:
            buf = self._pinned[key] = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
        buf.copy_(src)
        return buf.to(self.device, non_blocking=True)

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if self.compiled and self.cuda and n != self.preferred_batch:
            if n > self.preferred_batch:
                step = self.preferred_batch
                return np.concatenate([self.run(x[i : i + step], valid[i : i + step]) for i in range(0, n, step)])
            pad = self.preferred_batch - n  # one static shape: the CUDA graph is captured once
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            valid = np.concatenate([valid, np.zeros(pad, valid.dtype)])
        with self.torch.inference_mode():
            out = self.module(self._stage(x), self._stage(valid.astype(np.int64)))[0]
            return out[:n].float().cpu().numpy()


class TensorRTBackend(Backend):
    def __init__(self, path: Path):
        from mictag.export.tensorrt import metadata_path, run_engine

        meta_file = metadata_path(path)
        if not meta_file.is_file():
            raise ModelError(f"{path} has no metadata beside it ({meta_file.name}): rebuild it with `mictag export --engine`")
        self.meta = json.loads(meta_file.read_text("utf-8"))
        self.path, self._run = path, run_engine
        self.name = "tensorrt"
        self.inputs = _input_names(self.variant)
        self.preferred_batch = self.meta.get("engine", {}).get("batch", [1, 32, 128])[1]

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self._run(self.path, {self.inputs[0]: x, self.inputs[1]: valid.astype(np.int64)})["probabilities"]


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

    try:
        precision = str(read_metadata(path).get("precision", "fp32"))
        return "int8" if precision.startswith("int8") else precision  # int8-dynamic runs as int8 does
    except MictagError as exc:
        raise ModelError(str(exc)) from None


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
    from mictag.runtime.int8_check import load_verdict

    return Int8Variant(sibling, float(deviation), load_verdict(sibling))


def plan_engine(model: str | os.PathLike, backend: str = "auto", precision: str | None = None) -> EnginePlan:
    """What ``open_backend`` would run ``model`` on here, and why (nothing is loaded)."""
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
    try:
        plan = choose_engine(path, kind, model_precision, cpu_info(), engines, backend, precision, int8, cuda)
    except ChoiceError as exc:
        raise ModelError(str(exc)) from None
    if plan.backend in ("openvino", "tensorrt", "torch") and not engines.has(plan.backend):
        what = {"openvino": "pip install openvino", "tensorrt": "TensorRT", "torch": "pip install 'mictag[train]'"}
        raise ModelError(f"backend {plan.backend} is not installed here ({what[plan.backend]})")
    return plan


def open_backend(model: str | os.PathLike, backend: str = "auto", threads: int | None = None,
                 precision: str | None = None, on_message=None) -> Backend:
    """Load ``model`` once with the chosen backend (``auto``: the fastest bounded path here, see
    :mod:`mictag.runtime.choice`) in ``precision`` (None: the backend's best here).
    ``on_message`` hears the plan's warnings and what to install for a faster path."""
    plan = plan_engine(model, backend, precision)
    for line in (*plan.warnings, *([plan.advice] if plan.advice else [])):
        if on_message:
            on_message(line)
    engine = _load(plan, threads)
    if plan.check:  # an int8 variant not yet checked on real audio: check it on the first windows
        from mictag.runtime.int8_check import CheckedInt8

        reference = _load(plan_engine(model, backend, "bf16" if plan.rest == "bf16" else "fp32"), threads)
        return CheckedInt8(engine, reference, on_message)
    return engine


def _load(plan: EnginePlan, threads: int | None) -> Backend:
    if plan.backend == "torch":
        engine: Backend = TorchBackend(plan.model, precision=plan.precision)
    elif plan.backend == "tensorrt":
        engine = TensorRTBackend(plan.model)
    elif plan.backend == "openvino":
        engine = OpenVINOBackend(plan.model, plan.precision, threads, plan.rest)
    else:
        engine = OrtBackend(plan.model, plan.backend, threads)
    engine.plan = plan
    return engine


def model_metadata(model: str | os.PathLike) -> dict:
    """A model's mictag metadata without loading it for inference (e.g. on a Ray driver)."""
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model {path} does not exist")
    kind = model_kind(path)
    try:
        if kind == "onnx":
            from mictag.metadata import read_metadata

            return read_metadata(path)
        if kind == "engine":
            from mictag.export.tensorrt import metadata_path

            return json.loads(metadata_path(path).read_text("utf-8"))
        import torch

        return torch.load(str(path), map_location="cpu", weights_only=True)["meta"]
    except MictagError as exc:
        raise ModelError(str(exc)) from None
    except Exception as exc:
        raise ModelError(f"cannot read the metadata of {path}: {exc}") from None
