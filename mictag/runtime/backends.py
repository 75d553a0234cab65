"""Inference backends behind one interface. Each imports its library only when chosen.

- ``openvino``: OpenVINO on an exported ``.onnx`` (the CPU engine for bf16; no torch);
- ``ort-cpu`` / ``ort-cuda`` / ``ort-trt``: ONNX Runtime with the CPU, CUDA or TensorRT execution
  provider, on an exported ``.onnx``;
- ``tensorrt``: a serialized TensorRT engine (``.engine`` + its ``.json`` metadata);
- ``torch``: the PyTorch artifact from ``mictag export --torch-out`` (bf16 on GPU and on CPUs
  with native bf16).
``auto`` takes the fastest path whose deviation is bounded, for the model, the engines installed
and the CPU (:mod:`mictag.runtime.choice`); the plan it made is ``backend.plan``.

Every backend has ``run(x, valid)`` (synchronous) and ``submit(x, valid) -> Submitted`` with
``Submitted.result()``: the GPU backends (tensorrt, ort-cuda, ort-trt, torch on CUDA) return from
``submit`` once the batch is copied into their own staging, so a caller that submits batch n+1
before fetching batch n overlaps n+1's upload with n's compute. ``in_flight`` says how many
batches a backend usefully holds at once (1: ``submit`` runs the batch before it returns).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mictag.cpu import cpu_info
from mictag.errors import MictagError
from mictag.metadata import int8_path
from mictag.runtime.choice import ORT_PROVIDERS, EnginePlan, Engines, Int8Variant, choose_engine
from mictag.runtime.engines.base import Backend, Submitted, _in_parts

BACKENDS = ("auto", "openvino", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch")


class ModelError(MictagError):
    """A model file that cannot be used: missing, foreign, or without mictag metadata."""


@contextmanager
def model_errors(foreign: Callable[[Exception], str] | None = None):
    """mictag's own errors from loading or running a model become ModelError, with their message;
    with ``foreign``, so does any other exception (an engine library's), saying ``foreign(exc)``."""
    try:
        yield
    except ModelError:
        raise
    except MictagError as exc:
        raise ModelError(str(exc)) from None
    except Exception as exc:
        if foreign is None:
            raise
        raise ModelError(foreign(exc)) from None


def _input_names(variant: str) -> tuple[str, str]:
    return ("windows", "valid_samples") if variant == "waveform" else ("frames", "valid_frames")


def _row_shapes(meta: dict, names: tuple[str, str]) -> dict[str, tuple[int, ...]]:
    """The shape of one row of each model input, from the model's metadata."""
    if meta.get("variant", "waveform") == "waveform":
        window: tuple[int, ...] = (int(meta["window_samples"]),)
    else:
        from mictag.frontends import frontend_from_dict

        cfg = frontend_from_dict(meta["features"])
        window = (cfg.target_frames, cfg.num_mel_bins)
    return {names[0]: window, names[1]: ()}


class OrtBackend(Backend):
    """ONNX Runtime. On the CUDA and TensorRT providers the session runs behind IO binding
    (:mod:`mictag.runtime.ort_binding`): device buffers per batch bucket, bound once, uploads of
    batch n+1 while batch n runs, only the probabilities read back; the TensorRT provider caches
    its engines beside the model. ``io_binding`` forces it on or off (the CPU provider runs plain
    ``session.run`` unless asked)."""

    def __init__(self, path: Path, name: str, threads: int | None = None, precision: str = "fp32",
                 io_binding: bool | None = None, batch: int | None = None):
        import onnxruntime as ort

        from mictag.metadata import check_metadata, read_metadata

        provider = ORT_PROVIDERS[name]
        available = tuple(ort.get_available_providers())
        if provider not in available:
            raise ModelError(f"backend {name} needs ONNX Runtime's {provider}, which this installation lacks "
                             f"(it has {', '.join(available)})")
        self.name = name
        self.preferred_batch = batch or (4 if name == "ort-cpu" else 64)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        with model_errors(lambda exc: f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}"):
            if name == "ort-cpu":
                providers: list = [provider]
            else:
                from mictag.runtime.ort_binding import provider_options

                meta = read_metadata(path)
                names = _input_names(meta.get("variant", "waveform"))
                providers = provider_options(name, Path(path), _row_shapes(meta, names), self.preferred_batch,
                                             precision, available)
            self.session = ort.InferenceSession(str(path), options, providers=providers)
            self.meta = check_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        if provider not in self.session.get_providers():
            # ONNX Runtime falls back to the CPU when a provider fails to start; say so, don't crawl.
            raise ModelError(f"ONNX Runtime could not start its {provider} for {path} (its 'EP Error' above says why); "
                             f"it would run on {', '.join(self.session.get_providers())}")
        self.inputs = _input_names(self.variant)
        self.bound = None
        if (name != "ort-cpu") if io_binding is None else io_binding:
            from mictag.runtime.ort_binding import BoundSession

            device = "cpu" if name == "ort-cpu" else "cuda"
            self.bound = BoundSession(self.session, self.inputs, self.preferred_batch, device=device)
            self.in_flight = 2

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.bound is not None:
            return self.submit(x, valid).result()
        return self.session.run(["probabilities"], {self.inputs[0]: x, self.inputs[1]: valid.astype(np.int64)})[0]

    def submit(self, x: np.ndarray, valid: np.ndarray) -> Submitted:
        if self.bound is None:
            return super().submit(x, valid)
        if x.shape[0] == 0:
            return self._empty()
        labels = len(self.meta["labels"])
        return _in_parts(lambda a, v: self.bound.submit(a, v, labels), np.asarray(x, np.float32),
                         np.asarray(valid), self.bound.max_batch)


class OpenVINOBackend(Backend):
    """OpenVINO on the CPU, in the precision asked (bf16 where the CPU has it natively)."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None, rest: str = ""):
        from mictag.metadata import read_metadata
        from mictag.runtime.openvino_engine import compile_model

        with model_errors():
            self.meta = read_metadata(path)
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
    """The torch artifact. On a GPU (:mod:`mictag.runtime.torch_cuda`): bf16 by default; windows
    staged through pinned buffers and uploaded on a side stream, double-buffered, so that batch
    n+1's upload overlaps batch n's compute; each batch padded to a bucket (powers of two up to
    ``batch``) whose CUDA graph is captured on first use and replayed after (``graphs=False``:
    eager). ``compile`` adds torch.compile (inductor, without its own CUDA graphs)."""

    def __init__(self, path: Path, device: str | None = None, precision: str | None = None,
                 compile: bool | None = None, batch: int | None = None, graphs: bool | None = None,
                 buckets: tuple[int, ...] | None = None):
        import torch

        from mictag.export.torch_artifact import load_torch_artifact

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.startswith("cuda")
        precision = precision or ("bf16" if self.cuda or cpu_info().bf16 else "fp32")
        self.compiled = bool(compile)
        if self.cuda:
            torch.backends.cudnn.allow_tf32 = False  # the fbank conv must stay exact fp32
        with model_errors():
            # On CUDA our own graphs replace torch.compile's reduce-overhead mode (which captures
            # per shape on the current stream and cannot share our streams).
            self.module, self.meta = load_torch_artifact(path, self.device, precision,
                                                         compile=self.compiled and not self.cuda)
        if self.compiled and self.cuda:
            self.module = torch.compile(self.module, dynamic=False)
        self.name = "torch"
        self.precision = precision
        self.preferred_batch = batch or (buckets[-1] if buckets else (64 if self.cuda else 4))
        self.pipeline = None
        if self.cuda:
            from mictag.runtime.torch_cuda import CudaPipeline

            names = _input_names(self.variant)
            row = _row_shapes(self.meta, names)[names[0]]
            self.pipeline = CudaPipeline(torch, self.module, self.device, row, row[0], len(self.meta["labels"]),
                                         self.preferred_batch, buckets, graphs=True if graphs is None else graphs)
            self.in_flight = 2

    @property
    def notes(self) -> list[str]:
        """What did not go as planned (a CUDA graph that could not be captured)."""
        return self.pipeline.notes if self.pipeline is not None else []

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.pipeline is not None:
            return self.submit(x, valid).result()
        torch = self.torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x)),
                              torch.from_numpy(np.ascontiguousarray(valid, np.int64)))[0]
            return out.float().numpy()

    def submit(self, x: np.ndarray, valid: np.ndarray) -> Submitted:
        if self.pipeline is None:
            return super().submit(x, valid)
        if x.shape[0] == 0:
            return self._empty()
        return _in_parts(self.pipeline.submit, x, valid, self.pipeline.max_batch)


class TensorRTBackend(Backend):
    """A serialized TensorRT engine (:mod:`mictag.runtime.tensorrt_engine`): deserialized once per
    process, one execution context, double-buffered device and pinned buffers sized for the
    profile's largest batch, uploads on a copy stream overlapping compute, only the probabilities
    copied back. ``memory``: the CUDA memory API (default: cuda-python, else torch)."""

    def __init__(self, path: Path, memory=None):
        from mictag.export.tensorrt import metadata_path
        from mictag.runtime.tensorrt_engine import EngineRunner, load_engine

        meta_file = metadata_path(path)
        if not meta_file.is_file():
            raise ModelError(f"{path} has no metadata beside it ({meta_file.name}): rebuild it with `mictag export --engine`")
        self.meta = json.loads(meta_file.read_text("utf-8"))
        self.path = path
        self.name = "tensorrt"
        self.inputs = _input_names(self.variant)
        with model_errors():
            self.runner = EngineRunner(load_engine(path), memory, outputs=("probabilities",))
        missing = [n for n in self.inputs if n not in {s.name for s in self.runner.engine.inputs}]
        if missing:
            raise ModelError(f"{path} has no input {', '.join(missing)}: rebuild it with `mictag export --engine`")
        self.preferred_batch = self.runner.engine.opt_batch
        self.in_flight = len(self.runner.slots)

    def submit(self, x: np.ndarray, valid: np.ndarray) -> Submitted:
        with model_errors():
            pending = self.runner.submit({self.inputs[0]: x, self.inputs[1]: valid})
        return Submitted(x.shape[0], lambda: pending.result()["probabilities"])


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
    from mictag.runtime.trust import Verdicts, verdict_key

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
    from mictag.runtime.trust import library_scope

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
    :mod:`mictag.runtime.choice`) in ``precision`` (None: the backend's best here).
    ``on_message`` hears the plan's warnings and what to install for a faster path. A fast path
    that mictag chose comes wrapped in :class:`mictag.runtime.trust.TrustedBackend`, checked
    against fp32 as it scores ``library`` (None: the Python API's verdicts)."""
    plan = plan_engine(model, backend, precision, library)
    for line in (*plan.warnings, *([plan.advice] if plan.advice else [])):
        if on_message:
            on_message(line)
    engine = _load(plan, threads)
    if plan.check:
        from mictag.runtime.trust import TrustedBackend, library_scope, verdict_key

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
    if plan.backend == "torch":
        engine: Backend = TorchBackend(plan.model, precision=plan.precision)
    elif plan.backend == "tensorrt":
        engine = TensorRTBackend(plan.model)
    elif plan.backend == "openvino":
        engine = OpenVINOBackend(plan.model, plan.precision, threads, plan.rest)
    else:
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
            from mictag.export.tensorrt import metadata_path

            return json.loads(metadata_path(path).read_text("utf-8"))
        import torch

        return torch.load(str(path), map_location="cpu", weights_only=True)["meta"]
