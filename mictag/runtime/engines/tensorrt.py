"""Serialized TensorRT engines at run time (TensorRT >= 10, tensor-name API).

- :func:`load_engine` deserializes an engine file once per process (and per version of the file:
  a rebuilt engine is loaded again) and shares it: a full-size AST engine is ~350 MB.
- :class:`EngineRunner` runs it the way a GPU wants to be fed: one execution context; a device
  buffer for every I/O tensor, sized for the profile's largest batch, in two sets (slots) so
  that batch n+1 can be uploaded while batch n computes; pinned host staging, since only
  page-locked memory copies asynchronously; a copy stream and a compute stream ordered by
  events. Only the outputs asked for (the probabilities) come back, and only their real rows.

Batches between the profile's bounds run at their own size (TensorRT's dynamic shapes); one
smaller than the profile's minimum is padded with copies of its last row, one larger than its
maximum is split. One runner serves one thread at a time. :class:`TensorRTBackend` is the scan's
engine on it; :func:`metadata_path` names the engine's metadata file.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mictag.errors import MictagError, ModelError
from mictag.runtime.engines.base import Backend, Submitted, input_names, model_errors
from mictag.runtime.engines.cuda_buffers import CudaMemory, DeviceBuffer, Event, PinnedBuffer, cuda_memory

NEEDS_TRT = ("running a TensorRT engine needs TensorRT and an NVIDIA GPU; install them with "
             "pip install 'mictag[gpu]' on a CUDA machine, or use the ONNX model instead")
PROFILE = 0  # mictag engines have one optimisation profile (over the batch axis)


def import_tensorrt(needs: str = "Runtime", message: str = NEEDS_TRT):
    """The ``tensorrt`` module, or a :class:`MictagError` (``message``) saying what to install;
    ``needs`` is the class the caller uses (a stub package lacks it)."""
    try:
        import tensorrt as trt
    except Exception as exc:  # absent, or a stub package that cannot load its libraries
        raise MictagError(message) from exc
    if not hasattr(trt, needs):
        raise MictagError(message)
    return trt


@dataclass(frozen=True)
class TensorSpec:
    """One I/O tensor: its name, element type and the shape of one batch row."""

    name: str
    dtype: np.dtype
    row: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class Engine:
    """A deserialized engine, its inputs and the batch range of its profile."""

    trt: Any
    runtime: Any  # kept alive for as long as the engine is
    engine: Any
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[tuple[str, np.dtype], ...]  # row shapes need a context: see EngineRunner
    min_batch: int
    opt_batch: int
    max_batch: int

    @classmethod
    def describe(cls, trt, runtime, engine, path: Path) -> "Engine":
        inputs, outputs, bounds = [], [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                lo, opt, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, PROFILE))
                if lo[1:] != hi[1:]:
                    raise MictagError(f"{path}: input {name} varies beyond the batch axis ({lo} to {hi}); "
                                      f"rebuild it with `mictag export --engine`")
                inputs.append(TensorSpec(name, dtype, hi[1:]))
                bounds.append((lo[0], opt[0], hi[0]))
            else:
                outputs.append((name, dtype))
        if not inputs or not outputs:
            raise MictagError(f"{path}: the engine has no inputs or no outputs")
        low, high = max(b[0] for b in bounds), min(b[2] for b in bounds)
        if low > high:
            raise MictagError(f"{path}: its inputs' batch ranges do not overlap")
        return cls(trt, runtime, engine, path, tuple(inputs), tuple(outputs), low, min(max(bounds[0][1], low), high), high)


_ENGINES: dict[str, tuple[tuple[int, int], Engine]] = {}
_LOCK = threading.Lock()


def load_engine(path: str | Path) -> Engine:
    """The engine in ``path``, deserialized on first use in this process and shared after."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as exc:
        raise MictagError(f"cannot read the engine {p}: {exc.strerror or exc}") from None
    version = (st.st_size, st.st_mtime_ns)
    with _LOCK:
        cached = _ENGINES.get(str(p))
        if cached is not None and cached[0] == version:
            return cached[1]
        trt = import_tensorrt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(p.read_bytes())
        if engine is None:
            raise MictagError(f"TensorRT {getattr(trt, '__version__', '')} cannot load {p}: an engine only runs with the "
                              f"TensorRT version and GPU it was built for; rebuild it here with `mictag export --engine`")
        loaded = Engine.describe(trt, runtime, engine, p)
        _ENGINES[str(p)] = (version, loaded)
        return loaded


def clear_engine_cache() -> None:
    """Forget the engines loaded so far (their memory is freed once no runner holds them)."""
    with _LOCK:
        _ENGINES.clear()


@dataclass(eq=False)
class _Slot:
    """One set of buffers; a batch owns its slot until its results are fetched."""

    device: dict[str, DeviceBuffer]  # every I/O tensor: TensorRT writes all outputs
    pinned: dict[str, PinnedBuffer]  # the inputs and the outputs copied back
    host: dict[str, np.ndarray]  # typed (max_batch, *row) views of ``pinned``
    uploaded: Event  # the slot's inputs are on the device
    ready: Event  # the engine has run on the slot and its outputs are in ``pinned``
    pending: "Pending | None" = None


class Pending:
    """A batch on its way through the GPU; ``result()`` waits for it (once) and returns
    ``{output name: rows}`` as arrays of its own."""

    def __init__(self, runner: "EngineRunner", slot: _Slot, rows: int):
        self._runner, self._slot, self.rows = runner, slot, rows
        self._value: dict[str, np.ndarray] | None = None

    def result(self) -> dict[str, np.ndarray]:
        if self._value is None:
            slot = self._slot
            self._runner.memory.synchronize(slot.ready)
            self._value = {s.name: slot.host[s.name][: self.rows].copy() for s in self._runner.copy_back}
            if slot.pending is self:
                slot.pending = None  # the slot is free for the next batch
            self._runner = self._slot = None
        return self._value


class _Parts:
    """A batch larger than the profile allows, run as several."""

    def __init__(self, parts: list):
        self.parts, self.rows = parts, sum(p.rows for p in parts)

    def result(self) -> dict[str, np.ndarray]:
        values = [p.result() for p in self.parts]
        return {name: np.concatenate([v[name] for v in values]) for name in values[0]}


@dataclass
class _Done:
    value: dict[str, np.ndarray]
    rows: int = 0

    def result(self) -> dict[str, np.ndarray]:
        return self.value


@dataclass
class RunnerStats:
    """What a runner did, for tests and benchmarks."""

    batches: int = 0
    shape_changes: int = 0
    address_rebinds: int = 0
    waits_for_slot: int = 0  # submits that had to wait for an older batch to free its slot
    notes: list[str] = field(default_factory=list)


class EngineRunner:
    """Runs an :class:`Engine` with one execution context and double-buffered I/O (see the module
    docstring). ``submit(feeds)`` returns at once with a handle; ``handle.result()`` waits.
    ``outputs`` names what is copied back (None: every output)."""

    def __init__(self, engine: Engine, memory: CudaMemory | None = None,
                 outputs: Iterable[str] | None = ("probabilities",), slots: int = 2):
        self.engine = engine
        self.context = engine.engine.create_execution_context()
        if self.context is None:
            raise MictagError(f"TensorRT could not create an execution context for {engine.path} (out of GPU memory?)")
        top = engine.max_batch
        for spec in engine.inputs:
            self._set_shape(spec, top)
        self._rows = top  # the batch the context's input shapes are set for
        specs = []
        for name, dtype in engine.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if not shape or shape[0] != top or min(shape) < 0:
                raise MictagError(f"{engine.path}: output {name} has shape {shape} at batch {top}; "
                                  f"rebuild it with `mictag export --engine`")
            specs.append(TensorSpec(name, dtype, shape[1:]))
        self.outputs = tuple(specs)
        wanted = [s.name for s in specs] if outputs is None else list(outputs)
        missing = sorted(set(wanted) - {s.name for s in specs})
        if missing:
            raise MictagError(f"{engine.path} has no output {', '.join(missing)} (it has {', '.join(s.name for s in specs)})")
        self.copy_back = tuple(s for s in specs if s.name in wanted)
        self.memory = m = memory or cuda_memory()
        self.copy_stream, self.compute_stream = m.stream(), m.stream()
        self.slots: list[_Slot] = []
        owned: list = []
        for _ in range(slots):
            device = {s.name: m.device(top * s.row_bytes) for s in (*engine.inputs, *self.outputs)}
            pinned = {s.name: m.pinned(top * s.row_bytes) for s in (*engine.inputs, *self.copy_back)}
            host = {s.name: pinned[s.name].view(s.dtype, (top, *s.row)) for s in (*engine.inputs, *self.copy_back)}
            slot = _Slot(device, pinned, host, m.event(), m.event())
            self.slots.append(slot)
            owned += [*device.values(), *pinned.values(), slot.uploaded, slot.ready]
        self._bound: int | None = None  # the slot whose addresses the context holds
        self._next = 0
        self.stats = RunnerStats()
        # Free the buffers when the runner goes (not at interpreter exit: the driver does that).
        self._release = weakref.finalize(self, _release, m, (self.copy_stream, self.compute_stream), owned)
        self._release.atexit = False

    @property
    def description(self) -> str:
        e = self.engine
        return f"batch {e.min_batch}-{e.max_batch}, {len(self.slots)} buffer sets, {self.memory.name}"

    def _set_shape(self, spec: TensorSpec, rows: int) -> None:
        if not self.context.set_input_shape(spec.name, (rows, *spec.row)):
            raise MictagError(f"TensorRT refused batch {rows} for input {spec.name} of {self.engine.path}")

    def submit(self, feeds: dict[str, np.ndarray]):
        """Queue one batch (``{input name: (rows, *row) array}``); the arrays are copied before
        this returns. The handle's ``result()`` gives ``{output: rows}``."""
        arrays, rows = {}, None
        for spec in self.engine.inputs:
            if spec.name not in feeds:
                raise MictagError(f"{self.engine.path} needs input {spec.name}; got {', '.join(feeds) or 'none'}")
            a = np.asarray(feeds[spec.name])
            if a.shape[1:] != spec.row:
                raise MictagError(f"input {spec.name} of {self.engine.path}: rows of shape {spec.row} expected, "
                                  f"got {a.shape[1:]}")
            if rows is not None and a.shape[0] != rows:
                raise MictagError(f"inputs of {self.engine.path} disagree on the batch ({rows} and {a.shape[0]} rows)")
            arrays[spec.name], rows = a, a.shape[0]
        if not rows:
            return _Done({s.name: np.zeros((0, *s.row), s.dtype) for s in self.copy_back})
        top = self.engine.max_batch
        parts = [self._submit({k: v[i : i + top] for k, v in arrays.items()}) for i in range(0, rows, top)]
        return parts[0] if len(parts) == 1 else _Parts(parts)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.submit(feeds).result()

    def _submit(self, arrays: dict[str, np.ndarray]) -> Pending:
        n = next(iter(arrays.values())).shape[0]
        b = max(n, self.engine.min_batch)
        k = self._next
        self._next = (k + 1) % len(self.slots)
        slot = self.slots[k]
        if slot.pending is not None:
            # Two batches are already in flight: wait for the older one, which holds this slot.
            # Its results are kept in its handle, so callers may fetch them in any order.
            self.stats.waits_for_slot += 1
            slot.pending.result()
        m = self.memory
        for spec in self.engine.inputs:
            host = slot.host[spec.name]
            np.copyto(host[:n], arrays[spec.name], casting="same_kind")
            if b > n:
                host[n:b] = host[n - 1]  # below the profile's minimum: pad with a real row (discarded)
            m.copy_to_device(slot.device[spec.name], slot.pinned[spec.name], b * spec.row_bytes, self.copy_stream)
        m.record(slot.uploaded, self.copy_stream)
        m.wait(self.compute_stream, slot.uploaded)  # the engine waits for this upload only, not the next
        if b != self._rows:
            for spec in self.engine.inputs:
                self._set_shape(spec, b)
            self._rows = b
            self.stats.shape_changes += 1
        if self._bound != k:
            for name, buf in slot.device.items():
                if not self.context.set_tensor_address(name, buf.ptr):
                    raise MictagError(f"TensorRT refused the buffer for {name} of {self.engine.path}")
            self._bound = k
            self.stats.address_rebinds += 1
        if not self.context.execute_async_v3(self.compute_stream.handle):
            raise MictagError(f"TensorRT failed to run {self.engine.path} on a batch of {b}")
        for spec in self.copy_back:  # on the compute stream: the copy stream stays free for uploads
            m.copy_to_host(slot.pinned[spec.name], slot.device[spec.name], n * spec.row_bytes, self.compute_stream)
        m.record(slot.ready, self.compute_stream)
        self.stats.batches += 1
        slot.pending = Pending(self, slot, n)
        return slot.pending

    def close(self) -> None:
        """Wait for the GPU and free the buffers now (otherwise when the runner is collected)."""
        for slot in self.slots:
            if slot.pending is not None:
                slot.pending.result()
        self._release()


def _release(memory: CudaMemory, streams, owned: list) -> None:
    try:
        for s in streams:
            memory.synchronize_stream(s)
        memory.free(*owned, *streams)
    except Exception:  # freeing is best effort: a failed context frees everything with it
        pass


def metadata_path(engine_path: str | os.PathLike) -> Path:
    """The metadata file beside a serialized engine (``<engine>.json``)."""
    return Path(str(engine_path) + ".json")


class TensorRTBackend(Backend):
    """A serialized TensorRT engine (:mod:`mictag.runtime.engines.tensorrt`): deserialized once per
    process, one execution context, double-buffered device and pinned buffers sized for the
    profile's largest batch, uploads on a copy stream overlapping compute, only the probabilities
    copied back. ``memory``: the CUDA memory API (default: cuda-python, else torch)."""

    def __init__(self, path: Path, memory=None):



        meta_file = metadata_path(path)
        if not meta_file.is_file():
            raise ModelError(f"{path} has no metadata beside it ({meta_file.name}): rebuild it with `mictag export --engine`")
        self.meta = json.loads(meta_file.read_text("utf-8"))
        self.path = path
        self.name = "tensorrt"
        self.inputs = input_names(self.variant)
        self._memory = memory
        with model_errors():
            self.runner = EngineRunner(load_engine(path), memory, outputs=("probabilities",))
        missing = [n for n in self.inputs if n not in {s.name for s in self.runner.engine.inputs}]
        if missing:
            raise ModelError(f"{path} has no input {', '.join(missing)}: rebuild it with `mictag export --engine`")
        self.preferred_batch = self.runner.engine.opt_batch
        self.in_flight = len(self.runner.slots)

    def want_embeddings(self) -> None:
        """A runner that copies the embeddings back too (the engine computes them anyway)."""
        if "embedding" not in {s.name for s in self.runner.outputs}:
            raise ModelError(f"{self.path} has no embedding output: rebuild it with `mictag export --engine`")
        with model_errors():
            self.runner = EngineRunner(self.runner.engine, self._memory, outputs=("probabilities", "embedding"))
        self.embeds = True

    def submit(self, x: np.ndarray, valid: np.ndarray) -> Submitted:
        with model_errors():
            pending = self.runner.submit({self.inputs[0]: x, self.inputs[1]: valid})
        if self.embeds:
            return Submitted(x.shape[0], lambda: _probabilities_and_embeddings(pending.result()))
        return Submitted(x.shape[0], lambda: pending.result()["probabilities"])


def _probabilities_and_embeddings(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return outputs["probabilities"], outputs["embedding"]
