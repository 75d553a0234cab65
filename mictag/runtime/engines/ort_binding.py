"""ONNX Runtime on a GPU without per-batch host round trips: provider options and IO binding.

``session.run(feeds)`` with numpy feeds allocates device inputs and copies both ways on every
call, and every output (logits and embedding too) comes back. :class:`BoundSession` instead
keeps, per batch bucket, device OrtValues bound once to an ``IOBinding``: a batch is copied
into its bucket's input buffers in place, run with ``run_with_iobinding``, and only the
probabilities of its real rows are read back. Buckets are powers of two up to the largest batch,
so that the TensorRT provider sees a handful of shapes inside its one profile and never rebuilds,
and a short last batch computes at most twice its rows.

Runs go to one worker thread, with two sets of buffers: while the GPU runs batch n, the caller's
thread uploads batch n+1 (ONNX Runtime releases the GIL while it runs). IO binding works on the
CPU provider as on CUDA, which is how the tests check it.

:func:`provider_options` gives the TensorRT provider an engine cache and a timing cache next to
the model (built once, loaded in seconds after) and explicit profile shapes over the batch axis.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from mictag.paths import mictag_home
from mictag.runtime.engines.buckets import batch_buckets, bucket_for


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "none"


def engine_cache_dir(model: Path) -> Path:
    """Where the TensorRT provider keeps its engines for ``model``: ``<model>.ort-trt/`` beside it
    (a folder per model version and ONNX Runtime / TensorRT version, since an engine is valid for
    exactly those), or under ``$MICTAG_HOME/cache/ort-trt`` when the model's folder is read-only."""
    model = Path(model).resolve()
    st = model.stat()
    import onnxruntime

    key = f"{st.st_size}-{st.st_mtime_ns}-ort{onnxruntime.__version__}-trt{_version('tensorrt')}"
    beside = model.with_name(model.name + ".ort-trt")
    if os.access(model.parent, os.W_OK) or beside.is_dir() and os.access(beside, os.W_OK):
        root = beside
    else:
        digest = hashlib.sha256(str(model).encode()).hexdigest()[:16]
        root = mictag_home() / "cache" / "ort-trt" / f"{model.stem}-{digest}"
    return root / key


def _shape_string(inputs: dict[str, tuple[int, ...]], batch: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in (batch, *row))}" for name, row in inputs.items())


def provider_options(backend: str, model: Path, row_shapes: dict[str, tuple[int, ...]], max_batch: int,
                     precision: str = "fp32", available: tuple[str, ...] = ()) -> list:
    """The ``providers`` list for an ``ort-cuda`` / ``ort-trt`` session on ``model``, whose inputs
    have rows of ``row_shapes``. ``ort-trt`` falls back to CUDA (where installed) for the nodes
    TensorRT cannot take, then to the CPU."""
    cuda = ("CUDAExecutionProvider", {"device_id": 0})
    if backend == "ort-cuda":
        return [cuda, "CPUExecutionProvider"]
    if backend != "ort-trt":
        raise ValueError(f"no GPU provider options for {backend!r}")
    cache = engine_cache_dir(model)
    cache.mkdir(parents=True, exist_ok=True)
    trt = {
        "device_id": 0,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        # The model's precision: choice.py runs fp16 on ONNX Runtime only from an fp16 file.
        "trt_fp16_enable": precision == "fp16",
        # One profile over the batch axis: every bucket runs in the same engine.
        "trt_profile_min_shapes": _shape_string(row_shapes, 1),
        "trt_profile_opt_shapes": _shape_string(row_shapes, max_batch),
        "trt_profile_max_shapes": _shape_string(row_shapes, max_batch),
    }
    providers: list = [("TensorrtExecutionProvider", trt)]
    if not available or "CUDAExecutionProvider" in available:
        providers.append(cuda)
    return [*providers, "CPUExecutionProvider"]


@dataclass(eq=False)
class _Bucket:
    """The bound buffers of one (slot, bucket)."""

    rows: int
    host: dict[str, np.ndarray]  # staging for update_inplace, (rows, *row)
    values: dict[str, Any]  # OrtValues on the session's device: inputs and the outputs
    binding: Any


@dataclass(eq=False)
class _Slot:
    buckets: dict[int, _Bucket]
    pending: "_Pending | None" = None


class _Pending:
    def __init__(self, slot: _Slot, bucket: _Bucket, rows: int, future):
        self.slot, self.bucket, self.rows, self.future = slot, bucket, rows, future
        self._value: np.ndarray | None = None

    def result(self) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The probabilities, or (probabilities, embeddings) where the session binds both."""
        if self._value is None:
            self.future.result()  # re-raises what the run raised
            # numpy() copies from the device (or views CPU memory): copy the rows out either way.
            values = self.bucket.values
            self._value = np.array(values["out"].numpy()[: self.rows], np.float32, copy=True)
            if "emb" in values:
                self._value = (self._value, np.array(values["emb"].numpy()[: self.rows], np.float32, copy=True))
            if self.slot.pending is self:
                self.slot.pending = None
            self.slot = self.bucket = self.future = None
        return self._value


class BoundSession:
    """``session`` behind IO binding (see the module docstring). ``inputs`` are the two input
    names (windows or frames, then valid counts); batches of up to ``max_batch`` rows."""

    def __init__(self, session, inputs: tuple[str, str], max_batch: int, output: str = "probabilities",
                 device: str = "cuda", slots: int = 2):
        import onnxruntime as ort

        self.ort, self.session, self.inputs, self.output = ort, session, inputs, output
        self.device = device
        self.max_batch = max_batch
        self.buckets = batch_buckets(max_batch)
        types = {i.name: i.type for i in session.get_inputs()}
        self.valid_dtype = np.int32 if types.get(inputs[1]) == "tensor(int32)" else np.int64
        self.slots = [_Slot({}) for _ in range(slots)]
        self._next = 0
        self._row: tuple[int, ...] | None = None
        self.allocations = 0  # OrtValues made (bounded: slots x buckets used x 3)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mictag-ort")
        self.embedding_dim: int | None = None  # bind the embedding output too (see bind_embeddings)

    def bind_embeddings(self, dim: int) -> None:
        """From the next batch on, read back the ``embedding`` output ((rows, ``dim``)) too."""
        for slot in self.slots:
            if slot.pending is not None:
                slot.pending.result()
            slot.buckets.clear()
        self.embedding_dim = dim

    def _bucket(self, slot: _Slot, rows: int, row: tuple[int, ...], labels: int) -> _Bucket:
        bucket = slot.buckets.get(rows)
        if bucket is None:
            new = self.ort.OrtValue.ortvalue_from_shape_and_type
            shapes = {"x": ((rows, *row), np.float32), "valid": ((rows,), self.valid_dtype)}
            values = {k: new(shape, dtype, self.device, 0) for k, (shape, dtype) in shapes.items()}
            values["out"] = new((rows, labels), np.float32, self.device, 0)
            self.allocations += 3
            host = {k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()}
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.inputs[0], values["x"])
            binding.bind_ortvalue_input(self.inputs[1], values["valid"])
            binding.bind_ortvalue_output(self.output, values["out"])
            if self.embedding_dim:
                values["emb"] = new((rows, self.embedding_dim), np.float32, self.device, 0)
                self.allocations += 1
                binding.bind_ortvalue_output("embedding", values["emb"])
            bucket = slot.buckets[rows] = _Bucket(rows, host, values, binding)
        return bucket

    def submit(self, x: np.ndarray, valid: np.ndarray, labels: int) -> _Pending:
        """Queue a batch of at most ``max_batch`` rows; ``x`` and ``valid`` are copied before this
        returns. ``labels``: the width of the probabilities."""
        n = x.shape[0]
        if not 0 < n <= self.max_batch:
            raise ValueError(f"a bound batch holds 1 to {self.max_batch} rows, not {n}")
        row = tuple(x.shape[1:])
        if self._row is None:
            self._row = row
        elif row != self._row:
            raise ValueError(f"windows of shape {row}, but this session was fed {self._row}")
        slot = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        if slot.pending is not None:
            slot.pending.result()  # the slot's last batch still holds its buffers
        bucket = self._bucket(slot, bucket_for(n, self.buckets), row, labels)
        hx, hv = bucket.host["x"], bucket.host["valid"]
        hx[:n], hv[:n] = x, valid
        if bucket.rows > n:  # padding rows: copies of the last real row, scored and discarded
            hx[n:], hv[n:] = x[n - 1], valid[n - 1]
        # Synchronous copies into the bound buffers, made while the worker runs the other slot.
        bucket.values["x"].update_inplace(hx)
        bucket.values["valid"].update_inplace(hv)
        future = self._pool.submit(self._run, bucket.binding)
        slot.pending = _Pending(slot, bucket, n, future)
        return slot.pending

    def _run(self, binding) -> None:
        """On the worker thread. ``update_inplace`` copies on the legacy default stream, which a
        non-blocking provider stream does not wait for: the inputs are synchronised first (this
        waits only for our own uploads, the previous run being already done), and the outputs
        after, before anyone reads them."""
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
