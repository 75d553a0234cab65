"""Device buffers, pinned host buffers, streams and events for the native TensorRT backend.

TensorRT's Python API takes raw device addresses and a raw stream handle; something else has to
own the memory. Two implementations sit behind one small interface (:class:`CudaMemory`):

- :class:`CudartMemory`, over NVIDIA's ``cuda-python`` runtime bindings (``cuda.bindings.runtime``;
  ``cuda.cudart`` in releases before 12.6). A thin wheel without torch: chosen first, so that a
  TensorRT scan stays as lean as the rest of the runtime.
- :class:`TorchCudaMemory`, over ``torch.cuda``: used only when cuda-python is not importable,
  since importing torch costs seconds and hundreds of MB.

:func:`cuda_memory` picks one. Both keep every allocation for the life of their owner: the
backend allocates once, for the engine profile's largest batch, and reuses the buffers.
"""

from __future__ import annotations

import ctypes
import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mictag.errors import MictagError

NEEDS_CUDA_MEMORY = ("the tensorrt backend needs a CUDA memory API: pip install cuda-python "
                     "(or install torch with CUDA)")


@dataclass(eq=False)
class DeviceBuffer:
    """``nbytes`` of device memory at address ``ptr``."""

    ptr: int
    nbytes: int
    keep: Any = None  # what owns the memory, where that is a Python object (a torch tensor)


@dataclass(eq=False)
class PinnedBuffer:
    """``nbytes`` of page-locked host memory at ``ptr``; ``array`` is a uint8 numpy view of it.
    Only pinned memory lets a host-to-device copy run asynchronously, overlapping compute."""

    ptr: int
    nbytes: int
    array: np.ndarray
    keep: Any = None

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The buffer's start as a typed array of ``shape`` (no copy)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"a {shape} {dtype} view needs {count * dtype.itemsize} bytes; the buffer has {self.nbytes}")
        return self.array[: count * dtype.itemsize].view(dtype).reshape(shape)


@dataclass(eq=False)
class Stream:
    """A CUDA stream; ``handle`` is the ``cudaStream_t`` as an integer (what TensorRT takes)."""

    handle: int
    raw: Any = field(repr=False, default=None)


@dataclass(eq=False)
class Event:
    raw: Any = field(repr=False, default=None)


class CudaMemory:
    """What the TensorRT backend needs of CUDA: memory, asynchronous copies, streams, events."""

    name = ""

    def device(self, nbytes: int) -> DeviceBuffer:
        raise NotImplementedError

    def pinned(self, nbytes: int) -> PinnedBuffer:
        raise NotImplementedError

    def stream(self) -> Stream:
        raise NotImplementedError

    def event(self) -> Event:
        raise NotImplementedError

    def copy_to_device(self, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
        """Enqueue a copy of the first ``nbytes`` of ``src`` to ``dst`` on ``stream``."""
        raise NotImplementedError

    def copy_to_host(self, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
        raise NotImplementedError

    def record(self, event: Event, stream: Stream) -> None:
        """``event`` completes when the work enqueued on ``stream`` so far has."""
        raise NotImplementedError

    def wait(self, stream: Stream, event: Event) -> None:
        """Work enqueued on ``stream`` from now on starts after ``event`` (the host does not wait)."""
        raise NotImplementedError

    def synchronize(self, event: Event) -> None:
        """The host waits for ``event``."""
        raise NotImplementedError

    def synchronize_stream(self, stream: Stream) -> None:
        raise NotImplementedError

    def free(self, *things: DeviceBuffer | PinnedBuffer | Stream | Event) -> None:
        raise NotImplementedError


def _import_cudart():
    try:
        return importlib.import_module("cuda.bindings.runtime")  # cuda-python >= 12.6
    except ImportError:
        return importlib.import_module("cuda.cudart")  # older cuda-python (removed in 13)


def _handle_value(raw) -> int:
    """A cuda-python handle (``cudaStream_t``) as the integer it wraps."""
    try:
        return int(raw)
    except TypeError:  # a build without __int__: getPtr() is the address of the handle
        return int(ctypes.c_void_p.from_address(raw.getPtr()).value or 0)


class CudartMemory(CudaMemory):
    """CUDA through cuda-python's runtime bindings: every call returns ``(error, *values)``."""

    name = "cuda-python"

    def __init__(self, cudart=None):
        self.rt = cudart or _import_cudart()
        self._h2d = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._d2h = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def _call(self, what: str, result) -> Any:
        err = result[0]
        if err != self.rt.cudaError_t.cudaSuccess:
            try:
                text = self.rt.cudaGetErrorString(err)[1]
                text = text.decode() if isinstance(text, bytes) else str(text)
            except Exception:
                text = str(err)
            raise MictagError(f"CUDA {what} failed: {text}")
        return result[1] if len(result) == 2 else None

    def device(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(int(self._call(f"cudaMalloc({nbytes})", self.rt.cudaMalloc(nbytes))), nbytes)

    def pinned(self, nbytes: int) -> PinnedBuffer:
        ptr = int(self._call(f"cudaMallocHost({nbytes})", self.rt.cudaMallocHost(nbytes)))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        return PinnedBuffer(ptr, nbytes, array)

    def stream(self) -> Stream:
        # Non-blocking: the legacy default stream (used by other libraries' synchronous copies)
        # must not serialise our copy stream against our compute stream.
        flags = getattr(self.rt, "cudaStreamNonBlocking", 1)
        raw = self._call("cudaStreamCreateWithFlags", self.rt.cudaStreamCreateWithFlags(flags))
        return Stream(_handle_value(raw), raw)

    def event(self) -> Event:
        flags = getattr(self.rt, "cudaEventDisableTiming", 2)  # no timestamps: the cheapest event
        return Event(self._call("cudaEventCreateWithFlags", self.rt.cudaEventCreateWithFlags(flags)))

    def copy_to_device(self, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
        self._call("cudaMemcpyAsync (to the device)",
                   self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, self._h2d, stream.raw))

    def copy_to_host(self, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
        self._call("cudaMemcpyAsync (to the host)",
                   self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, self._d2h, stream.raw))

    def record(self, event: Event, stream: Stream) -> None:
        self._call("cudaEventRecord", self.rt.cudaEventRecord(event.raw, stream.raw))

    def wait(self, stream: Stream, event: Event) -> None:
        self._call("cudaStreamWaitEvent", self.rt.cudaStreamWaitEvent(stream.raw, event.raw, 0))

    def synchronize(self, event: Event) -> None:
        self._call("cudaEventSynchronize", self.rt.cudaEventSynchronize(event.raw))

    def synchronize_stream(self, stream: Stream) -> None:
        self._call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream.raw))

    def free(self, *things) -> None:
        for t in things:
            if isinstance(t, DeviceBuffer):
                self._call("cudaFree", self.rt.cudaFree(t.ptr))
            elif isinstance(t, PinnedBuffer):
                t.array = np.empty(0, np.uint8)  # no view may outlive the memory
                self._call("cudaFreeHost", self.rt.cudaFreeHost(t.ptr))
            elif isinstance(t, Stream):
                self._call("cudaStreamDestroy", self.rt.cudaStreamDestroy(t.raw))
            elif isinstance(t, Event):
                self._call("cudaEventDestroy", self.rt.cudaEventDestroy(t.raw))


class TorchCudaMemory(CudaMemory):
    """CUDA through torch: buffers are uint8 tensors (the caching allocator's), copies are
    non-blocking ``copy_`` on the given stream."""

    name = "torch"

    def __init__(self, device: str = "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MictagError(f"torch sees no CUDA GPU; {NEEDS_CUDA_MEMORY}")
        self.torch, self.dev = torch, torch.device(device)

    def device(self, nbytes: int) -> DeviceBuffer:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.dev)
        return DeviceBuffer(t.data_ptr(), nbytes, t)

    def pinned(self, nbytes: int) -> PinnedBuffer:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=True)
        return PinnedBuffer(t.data_ptr(), nbytes, t.numpy(), t)

    def stream(self) -> Stream:
        s = self.torch.cuda.Stream(self.dev)
        return Stream(int(s.cuda_stream), s)

    def event(self) -> Event:
        return Event(self.torch.cuda.Event())

    def copy_to_device(self, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
        with self.torch.cuda.stream(stream.raw):
            dst.keep[:nbytes].copy_(src.keep[:nbytes], non_blocking=True)

    def copy_to_host(self, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
        with self.torch.cuda.stream(stream.raw):
            dst.keep[:nbytes].copy_(src.keep[:nbytes], non_blocking=True)

    def record(self, event: Event, stream: Stream) -> None:
        event.raw.record(stream.raw)

    def wait(self, stream: Stream, event: Event) -> None:
        stream.raw.wait_event(event.raw)

    def synchronize(self, event: Event) -> None:
        event.raw.synchronize()

    def synchronize_stream(self, stream: Stream) -> None:
        stream.raw.synchronize()

    def free(self, *things) -> None:
        for t in things:
            if isinstance(t, PinnedBuffer):
                t.array = np.empty(0, np.uint8)
            if isinstance(t, (DeviceBuffer, PinnedBuffer)):
                t.keep = None  # back to torch's caching allocator


def cuda_memory(prefer: str | None = None) -> CudaMemory:
    """cuda-python where importable, else torch's CUDA (only then is torch imported); ``prefer``
    ("cuda-python" or "torch") forces one."""
    if prefer not in (None, "cuda-python", "torch"):
        raise ValueError(f"unknown CUDA memory API {prefer!r}")
    if prefer != "torch":
        try:
            return CudartMemory()
        except (ImportError, AttributeError, OSError):  # absent, or a build that cannot load here
            if prefer == "cuda-python":
                raise MictagError(f"cuda-python is not installed; {NEEDS_CUDA_MEMORY}") from None
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MictagError(NEEDS_CUDA_MEMORY) from None
    return TorchCudaMemory()
