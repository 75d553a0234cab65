"""The GPU backends' buffer discipline, checked where it can be checked without a GPU.

- The native TensorRT backend runs here against a fake ``tensorrt`` module and a fake
  ``cuda-python`` runtime (``cuda.bindings.runtime``), both injected through ``sys.modules``. The
  fake GPU holds memory by address, and its streams run their work only when something waits
  on it (or, with ``progress``, at random moments in between): a missing event, a host buffer
  rewritten too early or a result read before its copy shows up as wrong numbers. The fake
  engine applies :func:`reference` to whatever its tensor addresses hold, so a wrong offset or
  a stale buffer shows too. Counters prove one deserialization, one context and buffers
  allocated once and reused.
- The ONNX Runtime IO-binding path runs for real on the CPU provider, against plain
  ``session.run``.
- What needs a real GPU is marked ``gpu`` / ``tensorrt`` and skipped elsewhere.
"""

from __future__ import annotations

import collections
import ctypes
import enum
import importlib.machinery
import json
import os
import random
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

SPEC = {"fake_engine": 1, "samples": 64, "labels": 5, "embed": 3, "batch": [2, 4, 8], "seed": 3,
        "valid": "int64", "probabilities": "float32"}


def reference(spec: dict, x: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """What the fake engine computes: a masked linear map (valid counts matter even where x is 0)."""
    n = spec["samples"]
    rng = np.random.default_rng(spec["seed"])
    w = rng.standard_normal((n, spec["labels"])) / np.sqrt(n)
    e = rng.standard_normal((n, spec["embed"]))
    valid = np.asarray(valid, np.int64)
    xm = np.where(np.arange(n)[None, :] < valid[:, None], np.asarray(x, np.float64), 0.0)
    logits = xm @ w + valid[:, None] / n
    return {"probabilities": 1 / (1 + np.exp(-logits)), "logits": logits, "embedding": xm @ e}


# -- a fake GPU ----------------------------------------------------------------------------------


class _Stream:
    def __init__(self, handle: int):
        self.handle, self.ops, self.done = handle, [], 0


class FakeGpu:
    """Memory by address (device or pinned host), streams whose work runs lazily, events."""

    def __init__(self, progress: float = 0.0, seed: int = 0):
        self.blocks: dict[int, tuple[str, int, object]] = {}
        self.streams: dict[int, _Stream] = {}
        self.counts: collections.Counter = collections.Counter()
        self.copied: collections.Counter = collections.Counter()  # bytes, by direction
        self.log: list[tuple[str, int]] = []  # (what, stream handle), as enqueued
        self.engine_runs: list[int] = []  # the batch of each engine run, as executed
        self.progress, self.rng = progress, random.Random(seed)
        self._handle = 0x1000

    def alloc(self, kind: str, nbytes: int) -> int:
        buf = (ctypes.c_uint8 * nbytes)()
        ctypes.memset(buf, 0xFF, nbytes)  # NaN in every float: memory never written shows
        ptr = ctypes.addressof(buf)
        self.blocks[ptr] = (kind, nbytes, buf)
        self.counts[f"alloc_{kind}"] += 1
        return ptr

    def free(self, kind: str, ptr: int) -> None:
        assert self.blocks.pop(ptr)[0] == kind
        self.counts[f"free_{kind}"] += 1

    def check(self, ptr: int, nbytes: int, kind: str) -> None:
        for base, (k, size, _) in self.blocks.items():
            if base <= ptr and ptr + nbytes <= base + size:
                assert k == kind, f"{kind} memory expected at {ptr:#x}, found {k} memory"
                return
        raise AssertionError(f"{nbytes} bytes at {ptr:#x} are not inside one {kind} allocation")

    @staticmethod
    def view(ptr: int, nbytes: int) -> np.ndarray:
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))

    def new_stream(self) -> _Stream:
        self._handle += 0x10
        self.streams[self._handle] = s = _Stream(self._handle)
        return s

    def enqueue(self, handle: int, what: str, op) -> None:
        self.tick()
        self.streams[handle].ops.append(op)
        self.log.append((what, handle))

    def run_until(self, stream: _Stream, mark: int) -> None:
        while stream.done < mark:
            op = stream.ops[stream.done]
            if isinstance(op, tuple):  # ("wait", (stream, index))
                self.run_until(*op[1])
            else:
                op()
            stream.done += 1

    def tick(self) -> None:
        """With probability ``progress``, let one stream do its next piece of work now."""
        if self.progress and self.rng.random() < self.progress:
            busy = [s for s in self.streams.values() if s.done < len(s.ops)]
            if busy:
                s = self.rng.choice(busy)
                op = s.ops[s.done]
                if isinstance(op, tuple):
                    target, index = op[1]
                    if target.done < index:
                        return  # blocked on another stream: the GPU would wait too
                else:
                    op()
                s.done += 1


def make_cudart(gpu: FakeGpu) -> types.ModuleType:
    """The few cuda-python runtime calls the backend makes, as cuda-python spells them."""
    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStream_t:
        def __init__(self, s: _Stream):
            self.s = s

        def __int__(self) -> int:
            return self.s.handle

    class cudaEvent_t:
        mark = None

    ok = cudaError_t.cudaSuccess
    rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    rt.cudaStreamNonBlocking, rt.cudaEventDisableTiming = 1, 2
    rt.cudaGetErrorString = lambda err: (ok, b"invalid argument")

    def call(fn):
        def wrapped(*args):
            gpu.tick()
            gpu.counts[fn.__name__] += 1
            return fn(*args)
        setattr(rt, fn.__name__, wrapped)
        return fn

    @call
    def cudaMalloc(n):
        return ok, gpu.alloc("device", n)

    @call
    def cudaMallocHost(n):
        return ok, gpu.alloc("pinned", n)

    @call
    def cudaFree(ptr):
        gpu.free("device", ptr)
        return (ok,)

    @call
    def cudaFreeHost(ptr):
        gpu.free("pinned", ptr)
        return (ok,)

    @call
    def cudaStreamCreateWithFlags(flags):
        assert flags == 1, "the backend's streams must not synchronise with the legacy default stream"
        return ok, cudaStream_t(gpu.new_stream())

    @call
    def cudaStreamDestroy(stream):
        return (ok,)

    @call
    def cudaEventCreateWithFlags(flags):
        return ok, cudaEvent_t()

    @call
    def cudaEventDestroy(event):
        return (ok,)

    @call
    def cudaMemcpyAsync(dst, src, count, kind, stream):
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            gpu.check(dst, count, "device")
            gpu.check(src, count, "pinned")  # asynchronous only from pinned memory
            direction = "to_device"
        else:
            gpu.check(dst, count, "pinned")
            gpu.check(src, count, "device")
            direction = "to_host"
        gpu.copied[direction] += count
        gpu.enqueue(int(stream), direction, lambda: ctypes.memmove(dst, src, count))
        return (ok,)

    @call
    def cudaEventRecord(event, stream):
        event.mark = (stream.s, len(stream.s.ops))
        return (ok,)

    @call
    def cudaStreamWaitEvent(stream, event, flags):
        if event.mark is not None:
            stream.s.ops.append(("wait", event.mark))
        return (ok,)

    @call
    def cudaEventSynchronize(event):
        if event.mark is not None:
            gpu.run_until(*event.mark)
        return (ok,)

    @call
    def cudaStreamSynchronize(stream):
        gpu.run_until(stream.s, len(stream.s.ops))
        return (ok,)

    return rt


def make_tensorrt(gpu: FakeGpu) -> types.ModuleType:
    """The TensorRT 10 classes the runtime touches; ``trt.counts`` counts what it did."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0-fake"
    counts: collections.Counter = collections.Counter()
    trt.counts, trt.addresses = counts, []

    class DataType(enum.Enum):
        FLOAT = "float32"
        HALF = "float16"
        INT32 = "int32"
        INT64 = "int64"

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class Logger:
        WARNING = 2

        def __init__(self, severity=None):
            pass

    trt.DataType, trt.TensorIOMode, trt.Logger = DataType, TensorIOMode, Logger
    trt.float32, trt.float16, trt.int32, trt.int64 = DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.INT64
    trt.nptype = lambda dt: np.dtype(dt.value).type

    class Engine:
        def __init__(self, spec: dict):
            self.spec = spec
            n, k = spec["samples"], spec["labels"]
            self.io = {"windows": (TensorIOMode.INPUT, DataType.FLOAT, (n,)),
                       "valid_samples": (TensorIOMode.INPUT, DataType(spec["valid"]), ()),
                       "probabilities": (TensorIOMode.OUTPUT, DataType(spec["probabilities"]), (k,)),
                       "logits": (TensorIOMode.OUTPUT, DataType.FLOAT, (k,)),
                       "embedding": (TensorIOMode.OUTPUT, DataType.FLOAT, (spec["embed"],))}
            self.names = list(self.io)
            self.num_io_tensors = len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return self.io[name][0]

        def get_tensor_dtype(self, name):
            return self.io[name][1]

        def get_tensor_shape(self, name):
            return (-1, *self.io[name][2])

        def get_tensor_profile_shape(self, name, profile):
            assert profile == 0 and self.io[name][0] == TensorIOMode.INPUT
            return [(b, *self.io[name][2]) for b in self.spec["batch"]]

        def create_execution_context(self):
            counts["contexts"] += 1
            return Context(self)

    class Context:
        def __init__(self, engine: Engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            counts["set_input_shape"] += 1
            mode, _, row = self.engine.io[name]
            lo, _, hi = self.engine.spec["batch"]
            if mode != TensorIOMode.INPUT or tuple(shape[1:]) != row or not lo <= shape[0] <= hi:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def _batch(self):
            batches = {self.shapes.get(n, (-1,))[0] for n, io in self.engine.io.items() if io[0] == TensorIOMode.INPUT}
            return batches.pop() if len(batches) == 1 else -1

        def get_tensor_shape(self, name):
            return (self._batch(), *self.engine.io[name][2])

        def set_tensor_address(self, name, ptr):
            counts["set_tensor_address"] += 1
            trt.addresses.append(ptr)
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            counts["execute"] += 1
            b, spec = self._batch(), self.engine.spec
            assert b > 0 and set(self.addresses) == set(self.engine.io), "every I/O tensor needs a shape and an address"
            # TensorRT reads the addresses and shapes at enqueue time: so does the fake.
            where = {}
            for name, (_, dtype, row) in self.engine.io.items():
                nbytes = b * int(np.prod(row, dtype=np.int64)) * np.dtype(dtype.value).itemsize
                gpu.check(self.addresses[name], nbytes, "device")
                where[name] = (self.addresses[name], nbytes, np.dtype(dtype.value), (b, *row))

            def run():
                def read(name):
                    ptr, nbytes, dtype, shape = where[name]
                    return gpu.view(ptr, nbytes).view(dtype).reshape(shape).copy()

                out = reference(spec, read("windows"), read("valid_samples"))
                for name, value in out.items():
                    ptr, nbytes, dtype, shape = where[name]
                    gpu.view(ptr, nbytes).view(dtype).reshape(shape)[:] = value.astype(dtype)
                gpu.engine_runs.append(b)

            gpu.enqueue(stream_handle, "engine", run)
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data: bytes):
            counts["deserialize"] += 1
            try:
                spec = json.loads(bytes(data))
            except ValueError:
                return None  # what TensorRT does with a foreign or incompatible engine
            return Engine(spec) if spec.get("fake_engine") else None

    trt.Runtime = Runtime
    return trt


def install(gpu: FakeGpu, modules=None) -> types.ModuleType:
    """Put the fake ``tensorrt`` and ``cuda.bindings.runtime`` in ``modules`` (sys.modules)."""
    modules = sys.modules if modules is None else modules
    trt, rt = make_tensorrt(gpu), make_cudart(gpu)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, rt
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # what find_spec reports
        modules[name] = module
    return trt


def write_engine(path: Path, **changes) -> tuple[Path, dict]:
    spec = {**SPEC, **changes}
    path.write_text(json.dumps(spec))
    meta = {"labels": [f"l{i}" for i in range(spec["labels"])], "thresholds": [0.5] * spec["labels"],
            "variant": "waveform", "window_samples": spec["samples"],
            "engine": {"tensorrt": "10.0.0-fake", "fp16": True, "int8": False, "batch": spec["batch"]}}
    Path(str(path) + ".json").write_text(json.dumps(meta))
    return path, spec


def batch(spec: dict, rows: int, rng) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((rows, spec["samples"])).astype(np.float32)
    return x, rng.integers(1, spec["samples"] + 1, rows).astype(np.int64)


@pytest.fixture
def fake_gpu(monkeypatch, request):
    from mictag.runtime.engines import tensorrt as tensorrt_engine

    gpu = FakeGpu(progress=getattr(request, "param", 0.0))
    trt = install(gpu, _Setter(monkeypatch))
    tensorrt_engine.clear_engine_cache()
    yield gpu, trt
    tensorrt_engine.clear_engine_cache()


class _Setter:
    """sys.modules entries through monkeypatch, so that they are undone after the test."""

    def __init__(self, monkeypatch):
        self.mp = monkeypatch

    def __setitem__(self, name, module):
        self.mp.setitem(sys.modules, name, module)


# -- native TensorRT, on the fake ----------------------------------------------------------------

SIZES = [8, 8, 3, 8, 5, 1, 8, 19, 7, 2, 8, 6, 4, 5]  # full, partial, below the profile, above it


@pytest.mark.parametrize("fake_gpu", [0.0, 0.3, 0.9], indirect=True, ids=["lazy-gpu", "some-progress", "eager-gpu"])
def test_tensorrt_deserializes_once_and_reuses_its_buffers_across_batches(fake_gpu, tmp_path):
    from mictag.runtime.engines.tensorrt import TensorRTBackend

    gpu, trt = fake_gpu
    path, spec = write_engine(tmp_path / "m.engine")
    backend = TensorRTBackend(path)
    assert backend.in_flight == 2 and backend.preferred_batch == 4  # the profile's opt
    after_load = (gpu.counts["alloc_device"], gpu.counts["alloc_pinned"])
    # 2 buffer sets: every I/O tensor on the device (TensorRT writes all outputs), pinned staging
    # only for the inputs and the probabilities.
    assert after_load == (2 * 5, 2 * 3)

    rng = np.random.default_rng(0)
    batches = [batch(spec, n, rng) for n in SIZES]
    expected = [reference(spec, x, v)["probabilities"] for x, v in batches]
    got, waiting = {}, collections.deque()
    for i, (x, v) in enumerate(batches):
        handle = backend.submit(x, v)
        x[:] = np.nan  # the caller's arrays are free once submit returns
        v[:] = 0
        waiting.append((i, handle))
        while len(waiting) >= backend.in_flight:  # what a pipeline does: keep one batch in flight
            j, h = waiting.popleft()
            got[j] = backend.result(h)
    for j, h in waiting:
        got[j] = h.result()
    for i, want in enumerate(expected):
        assert got[i].shape == want.shape and got[i].dtype == np.float32
        np.testing.assert_allclose(got[i], want, atol=1e-6, rtol=0, err_msg=f"batch {i} of {SIZES[i]} rows")
    device = {ptr for ptr, (kind, _, _) in gpu.blocks.items() if kind == "device"}
    assert set(trt.addresses) <= device and len(set(trt.addresses)) == 2 * 5  # two buffer sets, five tensors

    second = TensorRTBackend(path)  # another backend on the same file shares the engine
    x, v = batch(spec, 3, rng)
    np.testing.assert_allclose(second.run(x, v), reference(spec, x, v)["probabilities"], atol=1e-6)
    assert trt.counts["deserialize"] == 1
    assert trt.counts["contexts"] == 2  # one per backend, never one per batch
    assert (gpu.counts["alloc_device"], gpu.counts["alloc_pinned"]) == (2 * after_load[0], 2 * after_load[1])

    runs = sum(-(-n // 8) for n in SIZES)  # 19 rows run as 8 + 8 + 3
    assert trt.counts["execute"] == runs + 1
    # Each batch ran at its own size inside the profile: 19 rows as 8 + 8 + 3, one row padded to 2.
    chunks = [max(2, min(8, n - i)) for n in SIZES for i in range(0, n, 8)] + [3]
    assert sorted(gpu.engine_runs) == sorted(chunks)
    assert trt.counts["set_tensor_address"] <= 5 * (runs + 1)  # at most once per tensor and batch
    # Only the probabilities come back, and only the real rows.
    assert gpu.copied["to_host"] == (sum(SIZES) + 3) * spec["labels"] * 4


def test_submit_returns_before_the_gpu_runs_and_uploads_go_on_their_own_stream(fake_gpu, tmp_path):
    from mictag.runtime.engines.tensorrt import TensorRTBackend

    gpu, _ = fake_gpu  # lazy: nothing runs unless the backend waits for it
    path, spec = write_engine(tmp_path / "m.engine")
    backend = TensorRTBackend(path)
    rng = np.random.default_rng(1)
    data = [batch(spec, n, rng) for n in (8, 6, 8, 3)]
    h0, h1 = backend.submit(*data[0]), backend.submit(*data[1])
    assert gpu.engine_runs == []  # two batches queued, the host never waited
    uploads = {h for what, h in gpu.log if what == "to_device"}
    computes = {h for what, h in gpu.log if what == "engine"}
    assert len(uploads) == 1 and len(computes) == 1 and uploads != computes
    np.testing.assert_allclose(h0.result(), reference(spec, *data[0])["probabilities"], atol=1e-6)
    assert gpu.engine_runs == [8]  # fetching batch 0 waited for batch 0 only, not for batch 1
    h2 = backend.submit(*data[2])  # batch 0's buffers, free since it was fetched
    assert backend.runner.stats.waits_for_slot == 0
    h3 = backend.submit(*data[3])  # batch 1 still holds the other buffers: it is finished first
    assert backend.runner.stats.waits_for_slot == 1 and gpu.engine_runs == [8, 6]
    for h, (x, v) in zip((h3, h1, h2), (data[3], data[1], data[2])):  # any order
        np.testing.assert_allclose(h.result(), reference(spec, x, v)["probabilities"], atol=1e-6)
    assert backend.result(h1) is h1.result()  # fetched once, kept


def test_tensorrt_converts_dtypes_and_handles_empty_batches(fake_gpu, tmp_path):
    from mictag.runtime.engines.tensorrt import TensorRTBackend

    gpu, _ = fake_gpu
    path, spec = write_engine(tmp_path / "h.engine", valid="int32", probabilities="float16")
    backend = TensorRTBackend(path)
    rng = np.random.default_rng(2)
    for n in (5, 8, 1):
        x, v = batch(spec, n, rng)
        got = backend.run(x.astype(np.float64), v)  # float64 in: cast while staging
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, reference(spec, x, v)["probabilities"], atol=1e-3)
    empty = backend.run(np.zeros((0, spec["samples"]), np.float32), np.zeros(0, np.int64))
    assert empty.shape == (0, spec["labels"])


def test_a_rebuilt_engine_is_loaded_again_and_a_foreign_one_refused(fake_gpu, tmp_path):
    from mictag.errors import ModelError
    from mictag.runtime.engines.tensorrt import TensorRTBackend

    gpu, trt = fake_gpu
    path, spec = write_engine(tmp_path / "m.engine")
    TensorRTBackend(path)
    TensorRTBackend(path)
    assert trt.counts["deserialize"] == 1
    write_engine(path, seed=7)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    rebuilt = TensorRTBackend(path)
    assert trt.counts["deserialize"] == 2
    x, v = batch(spec, 4, np.random.default_rng(3))
    np.testing.assert_allclose(rebuilt.run(x, v), reference({**spec, "seed": 7}, x, v)["probabilities"], atol=1e-6)
    path.write_bytes(b"not an engine")
    with pytest.raises(ModelError, match="rebuild it here"):
        TensorRTBackend(path)


def test_a_runner_returns_every_output_and_shares_the_engine(fake_gpu, tmp_path):
    from mictag.runtime.engines.tensorrt import EngineRunner, TensorRTBackend, load_engine

    gpu, trt = fake_gpu
    path, spec = write_engine(tmp_path / "m.engine")
    rng = np.random.default_rng(4)
    runner = EngineRunner(load_engine(path), outputs=None)
    for n in (3, 11):
        x, v = batch(spec, n, rng)
        out = runner.run({"windows": x, "valid_samples": v})
        want = reference(spec, x, v)
        assert set(out) == set(want)
        for name in want:
            np.testing.assert_allclose(out[name], want[name], atol=1e-5, rtol=1e-6)
    TensorRTBackend(path)
    assert trt.counts["deserialize"] == 1 and trt.counts["contexts"] == 2  # the runner's, the backend's


def test_closing_a_runner_frees_what_it_allocated(fake_gpu, tmp_path):
    from mictag.runtime.engines.tensorrt import TensorRTBackend

    gpu, _ = fake_gpu
    path, spec = write_engine(tmp_path / "m.engine")
    backend = TensorRTBackend(path)
    backend.submit(*batch(spec, 8, np.random.default_rng(5)))
    backend.runner.close()
    assert gpu.counts["free_device"] == gpu.counts["alloc_device"] == 10
    assert gpu.counts["free_pinned"] == gpu.counts["alloc_pinned"] == 6
    assert not gpu.blocks


def test_tensorrt_backend_never_imports_torch(tmp_path):
    """With cuda-python present, the native TensorRT path needs no torch (run in a fresh process)."""
    write_engine(tmp_path / "m.engine")
    code = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_gpu_backends as t\n"
        "t.install(t.FakeGpu())\n"
        "from mictag.runtime.engines.open import open_backend\n"
        f"b = open_backend({str(tmp_path / 'm.engine')!r}, 'tensorrt')\n"
        "x, v = t.batch(t.SPEC, 5, np.random.default_rng(0))\n"
        "assert np.allclose(b.run(x, v), t.reference(t.SPEC, x, v)['probabilities'], atol=1e-6)\n"
        "assert b.runner.memory.name == 'cuda-python', b.runner.memory.name\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_without_a_cuda_memory_api_the_error_says_what_to_install(monkeypatch):
    from mictag.errors import MictagError
    from mictag.runtime.engines import cuda_buffers

    monkeypatch.setitem(sys.modules, "cuda", None)  # cuda-python absent
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        pytest.skip("torch has a GPU here: it would be used")
    with pytest.raises(MictagError, match="pip install cuda-python"):
        cuda_buffers.cuda_memory()


def test_tensorrt_backend_without_tensorrt_is_a_model_error(monkeypatch, tmp_path):
    from mictag.runtime.engines import tensorrt as tensorrt_engine
    from mictag.errors import ModelError
    from mictag.runtime.engines.tensorrt import TensorRTBackend

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    tensorrt_engine.clear_engine_cache()
    path, _ = write_engine(tmp_path / "m.engine")
    with pytest.raises(ModelError, match="needs TensorRT and an NVIDIA GPU"):
        TensorRTBackend(path)


# -- shared pieces ---------------------------------------------------------------------------------


def test_batch_buckets():
    from mictag.runtime.engines.buckets import batch_buckets, bucket_for

    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(100, smallest=8) == (8, 16, 32, 64, 100)
    assert batch_buckets(8, smallest=8) == (8,)
    assert [bucket_for(n, (8, 16, 32)) for n in (1, 8, 9, 32)] == [8, 8, 16, 32]
    with pytest.raises(ValueError):
        bucket_for(33, (8, 16, 32))


# -- ONNX Runtime: IO binding on the CPU provider, against plain session.run -----------------------


@pytest.fixture(scope="module")
def onnx_models(tiny_ast_dir, tmp_path_factory):
    pytest.importorskip("onnx")
    from click.testing import CliRunner

    from mictag.cli import main

    out = tmp_path_factory.mktemp("iobinding")
    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--out", str(out / "w.onnx"),
                                       "--fbank-out", str(out / "f.onnx"), "--torch-out", str(out / "m.pt")])
    assert result.exit_code == 0, result.output
    return out


def _windows(meta: dict, rows: int, rng) -> tuple[np.ndarray, np.ndarray]:
    from mictag.frontends import frontend_from_dict

    if meta["variant"] == "waveform":
        n = meta["window_samples"]
        x = (0.2 * rng.standard_normal((rows, n))).astype(np.float32)
        return x, rng.integers(n // 4, n + 1, rows).astype(np.int64)
    cfg = frontend_from_dict(meta["features"])
    x = rng.standard_normal((rows, cfg.target_frames, cfg.num_mel_bins)).astype(np.float32) - 5
    return x, rng.integers(cfg.target_frames // 4, cfg.target_frames + 1, rows).astype(np.int64)


@pytest.mark.parametrize("model", ["w.onnx", "f.onnx"])
def test_ort_io_binding_equals_plain_session_run(onnx_models, model, monkeypatch):
    import onnxruntime as ort

    from mictag.runtime.engines.ort import OrtBackend

    made = collections.Counter()
    real = ort.OrtValue.ortvalue_from_shape_and_type

    def counted(*args, **kwargs):
        made["ortvalues"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_shape_and_type", staticmethod(counted))
    backend = OrtBackend(onnx_models / model, "ort-cpu", io_binding=True, batch=4)
    bindings = backend.session.io_binding

    def counted_binding():
        made["bindings"] += 1
        return bindings()

    backend.session.io_binding = counted_binding
    plain = ort.InferenceSession(str(onnx_models / model), providers=["CPUExecutionProvider"])
    names = backend.inputs
    assert backend.in_flight == 2 and backend.bound.buckets == (1, 2, 4)
    rng = np.random.default_rng(0)
    sizes = [4, 3, 1, 4, 2, 9, 3, 4, 1]
    data = [_windows(backend.meta, n, rng) for n in sizes]
    for rnd in range(3):
        handles = [backend.submit(x, v) for x, v in data[:3]]  # three in flight: the first is finished early
        handles += [backend.submit(x, v) for x, v in data[3:]]
        for (x, v), h in reversed(list(zip(data, handles))):  # fetched in any order
            want = plain.run(["probabilities"], {names[0]: x, names[1]: v})[0]
            got = h.result()
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
        if rnd == 1:  # each (buffer set, bucket) pair has been used by now
            seen = dict(made)
    assert made == seen  # the third round allocated nothing and bound nothing new
    assert seen["ortvalues"] == backend.bound.allocations <= 2 * 3 * 3  # sets x buckets x (2 inputs + output)
    assert seen["bindings"] == seen["ortvalues"] // 3
    np.testing.assert_allclose(backend.run(*data[5]), plain.run(["probabilities"], dict(zip(names, data[5])))[0],
                               atol=1e-6, rtol=0)


def test_ort_cpu_without_io_binding_runs_as_before(onnx_models):
    from mictag.runtime.engines.ort import OrtBackend

    backend = OrtBackend(onnx_models / "w.onnx", "ort-cpu")
    assert backend.bound is None and backend.in_flight == 1
    x, v = _windows(backend.meta, 3, np.random.default_rng(1))
    np.testing.assert_allclose(backend.submit(x, v).result(), backend.run(x, v), atol=0)


def test_ort_trt_provider_options_cache_engines_beside_the_model(tmp_path, monkeypatch):
    from mictag.runtime.engines import ort_binding

    model = tmp_path / "lib" / "m.onnx"
    model.parent.mkdir()
    model.write_bytes(b"onnx")
    rows = {"windows": (20480,), "valid_samples": ()}
    providers = ort_binding.provider_options("ort-trt", model, rows, 64, "fp32",
                                             ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    (name, trt), (cuda, _), cpu = providers
    assert (name, cuda, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    cache = Path(trt["trt_engine_cache_path"])
    assert cache.is_dir() and cache.parent == model.with_name("m.onnx.ort-trt")
    assert trt["trt_engine_cache_enable"] and trt["trt_timing_cache_enable"] and trt["trt_timing_cache_path"] == str(cache)
    assert trt["trt_fp16_enable"] is False
    assert trt["trt_profile_min_shapes"] == "windows:1x20480,valid_samples:1"
    assert trt["trt_profile_max_shapes"] == trt["trt_profile_opt_shapes"] == "windows:64x20480,valid_samples:64"
    fp16 = dict(ort_binding.provider_options("ort-trt", model, rows, 64, "fp16", ("TensorrtExecutionProvider",))[0][1])
    assert fp16["trt_fp16_enable"] is True
    model.write_bytes(b"onnx, rebuilt")  # a new model version gets a fresh cache folder
    assert ort_binding.engine_cache_dir(model) != cache
    monkeypatch.setattr(ort_binding.os, "access", lambda p, mode: False)  # a read-only library
    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home"))
    assert str(ort_binding.engine_cache_dir(model)).startswith(str(tmp_path / "home" / "cache" / "ort-trt"))
    assert ort_binding.provider_options("ort-cuda", model, rows, 64)[0][0] == "CUDAExecutionProvider"


def test_torch_backend_on_the_cpu_submits_synchronously(onnx_models):
    pytest.importorskip("torch")
    from mictag.runtime.engines.torch import TorchBackend

    backend = TorchBackend(onnx_models / "m.pt", device="cpu", precision="fp32")
    assert backend.pipeline is None and backend.in_flight == 1
    x, v = _windows(backend.meta, 3, np.random.default_rng(2))
    np.testing.assert_allclose(backend.submit(x, v).result(), backend.run(x, v), atol=1e-6)


# -- real GPUs ---------------------------------------------------------------------------------------


def _ort_has(provider: str) -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return provider in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _ort_has("CUDAExecutionProvider"), reason="needs onnxruntime-gpu and a CUDA GPU")
def test_ort_cuda_io_binding_equals_the_cpu(onnx_models):
    import onnxruntime as ort

    from mictag.runtime.engines.ort import OrtBackend

    gpu = OrtBackend(onnx_models / "w.onnx", "ort-cuda", batch=8)
    assert gpu.bound is not None and gpu.bound.device == "cuda"
    cpu = ort.InferenceSession(str(onnx_models / "w.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    data = [_windows(gpu.meta, n, rng) for n in (8, 3, 8, 1, 13, 5)]
    handles = [gpu.submit(x, v) for x, v in data]
    for (x, v), h in zip(data, handles):
        want = cpu.run(["probabilities"], {"windows": x, "valid_samples": v})[0]
        np.testing.assert_allclose(h.result(), want, atol=2e-3, rtol=0)  # TF32 / kernel differences


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not _ort_has("TensorrtExecutionProvider"), reason="needs onnxruntime-gpu with TensorRT")
def test_ort_trt_builds_its_engine_once_into_the_cache(onnx_models):
    import onnxruntime as ort

    from mictag.runtime.engines import ort_binding
    from mictag.runtime.engines.ort import OrtBackend

    first = OrtBackend(onnx_models / "w.onnx", "ort-trt", batch=8)
    cache = ort_binding.engine_cache_dir(onnx_models / "w.onnx")
    cpu = ort.InferenceSession(str(onnx_models / "w.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    for n in (8, 3, 1, 8, 6):  # every bucket inside the one profile
        x, v = _windows(first.meta, n, rng)
        want = cpu.run(["probabilities"], {"windows": x, "valid_samples": v})[0]
        np.testing.assert_allclose(first.run(x, v), want, atol=2e-2, rtol=0)
    engines = sorted(p.name for p in cache.iterdir() if p.suffix == ".engine")
    assert engines, f"no engine cached in {cache}"
    again = OrtBackend(onnx_models / "w.onnx", "ort-trt", batch=8)
    x, v = _windows(again.meta, 5, rng)
    again.run(x, v)
    assert sorted(p.name for p in cache.iterdir() if p.suffix == ".engine") == engines  # loaded, not rebuilt


def _real_tensorrt() -> bool:
    try:
        import tensorrt

        return hasattr(tensorrt, "Builder")
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not _real_tensorrt(), reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("memory", ["cuda-python", "torch"])
def test_real_tensorrt_engine_pipelined_equals_onnx_runtime(onnx_models, tmp_path, memory):
    import onnxruntime as ort

    from mictag.errors import MictagError
    from mictag.export.tensorrt import EngineSpec, build_engine
    from mictag.metadata import read_metadata
    from mictag.runtime.engines import tensorrt as tensorrt_engine
    from mictag.runtime.engines.tensorrt import TensorRTBackend
    from mictag.runtime.engines.cuda_buffers import cuda_memory

    try:
        api = cuda_memory(memory)
    except MictagError as exc:
        pytest.skip(str(exc))
    meta = read_metadata(onnx_models / "w.onnx")
    engine = build_engine(onnx_models / "w.onnx", tmp_path / "w.engine", meta, EngineSpec(1, 4, 8))
    backend = TensorRTBackend(engine, memory=api)
    assert tensorrt_engine.load_engine(engine) is backend.runner.engine  # deserialized once
    cpu = ort.InferenceSession(str(onnx_models / "w.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    data = [_windows(meta, n, rng) for n in (8, 3, 1, 8, 19, 5, 8, 2)]
    handles = [backend.submit(x, v) for x, v in data]  # more than two in flight: each waits its turn
    for (x, v), h in zip(data, handles):
        want = cpu.run(["probabilities"], {"windows": x, "valid_samples": v})[0]
        np.testing.assert_allclose(h.result(), want, atol=2e-2, rtol=0)
    assert backend.runner.stats.address_rebinds <= backend.runner.stats.batches
    backend.runner.close()


# -- embeddings (`scan --embeddings`) through the pipelined engines ------------------------------
@pytest.mark.parametrize("model", ["w.onnx", "f.onnx"])
def test_ort_io_binding_returns_the_embedding_output_when_asked(onnx_models, model):
    import onnxruntime as ort

    from mictag.runtime.engines.ort import OrtBackend

    plain = ort.InferenceSession(str(onnx_models / model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    for io_binding in (True, False):
        backend = OrtBackend(onnx_models / model, "ort-cpu", io_binding=io_binding, batch=4)
        x0, v0 = _windows(backend.meta, 3, rng)
        assert backend.submit(x0, v0).embeddings() is None  # not asked: only the probabilities come back
        backend.want_embeddings()
        names = backend.inputs
        for n in (4, 3, 9, 1):  # 9: three parts of a bound batch, joined
            x, v = _windows(backend.meta, n, rng)
            done = backend.submit(x, v)
            want_p, want_e = plain.run(["probabilities", "embedding"], {names[0]: x, names[1]: v})
            np.testing.assert_allclose(done.result(), want_p, atol=1e-6, rtol=0)
            assert done.embeddings().shape == want_e.shape == (n, want_e.shape[1])
            np.testing.assert_allclose(done.embeddings(), want_e, atol=1e-5, rtol=0)


def test_tensorrt_copies_the_embeddings_back_when_asked(fake_gpu, tmp_path):
    from mictag.runtime.engines.tensorrt import TensorRTBackend

    gpu, _ = fake_gpu
    path, spec = write_engine(tmp_path / "m.engine")
    backend = TensorRTBackend(path)
    backend.want_embeddings()
    rng = np.random.default_rng(5)
    for n in (8, 3, 19):
        x, v = batch(spec, n, rng)
        want = reference(spec, x, v)
        done = backend.submit(x, v)
        np.testing.assert_allclose(done.result(), want["probabilities"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(done.embeddings(), want["embedding"], atol=1e-5, rtol=0)
