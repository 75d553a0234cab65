"""Inference backends behind one interface. Each imports its library only when chosen.

- ``ort-cpu`` / ``ort-cuda`` / ``ort-trt``: ONNX Runtime with the CPU, CUDA or TensorRT execution
  provider, on an exported ``.onnx``;
- ``tensorrt``: a serialized TensorRT engine (``.engine`` + its ``.json`` metadata);
- ``torch``: the PyTorch artifact from ``mictag export --torch-out`` (fp16/bf16 on GPU).
``auto`` picks, for the model file given, the fastest backend that is present: TensorRT EP, then
CUDA EP, then CPU for ONNX; CUDA if available for the torch artifact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mictag.errors import MictagError

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch")


class ModelError(MictagError):
    """A model file that cannot be used: missing, foreign, or without mictag metadata."""


class Backend:
    """``run(x, valid) -> probabilities`` on a batch of windows; ``meta`` describes the model."""

    name = ""
    meta: dict
    preferred_batch = 8

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
        precision = precision or ("bf16" if self.cuda else "fp32")
        self.compiled = self.cuda if compile is None else compile
        if self.cuda:
            torch.backends.cudnn.allow_tf32 = False  # the fbank conv must stay exact fp32
        try:
            self.module, self.meta = load_torch_artifact(path, self.device, precision, compile=self.compiled)
        except MictagError as exc:
            raise ModelError(str(exc)) from None
        self.name = "torch"
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


def open_backend(model: str | os.PathLike, backend: str = "auto", threads: int | None = None) -> Backend:
    """Load ``model`` once with the chosen backend (``auto``: the fastest present for it)."""
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model {path} does not exist")
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    kind = model_kind(path)
    if backend == "auto":
        if kind == "engine":
            backend = "tensorrt"
        elif kind == "torch":
            backend = "torch"
        else:
            import onnxruntime as ort

            present = ort.get_available_providers()
            backend = next((b for b in ("ort-trt", "ort-cuda") if OrtBackend.PROVIDERS[b] in present), "ort-cpu")
    wanted = {"ort-cpu": "onnx", "ort-cuda": "onnx", "ort-trt": "onnx", "tensorrt": "engine", "torch": "torch"}[backend]
    if wanted != kind:
        raise ModelError(f"backend {backend} needs a {wanted} model, but {path.name} is a {kind} model")
    if backend == "torch":
        return TorchBackend(path)
    if backend == "tensorrt":
        return TensorRTBackend(path)
    return OrtBackend(path, backend, threads)


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
