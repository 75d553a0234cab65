"""Window slots in shared memory that has no name: how decoded windows reach the model process
without being pickled.

A :class:`SlotArena` is ``count`` slots of one window shape (float32) in one shared mapping. The
scan creates one per decode worker and hands the worker the mapping's file descriptor when it
spawns it (as :mod:`multiprocessing` hands over a pipe's end). The worker writes a window into a
free slot and sends only the slot's number; the scan copies the window into its batch and gives
the slot back. So memory is bounded by the slots, whatever the files.

The mapping is anonymous: ``memfd_create`` on Linux, elsewhere an already-unlinked temporary
file. Nothing in ``/dev/shm`` or on disk carries its name, so there is nothing for anyone to
unlink and nothing to leak: the kernel frees the memory when the last process holding it ends,
however it ends (kill -9 of the scan included; its workers follow it through PDEATHSIG). Nor does
the resource tracker take part (named ``SharedMemory`` would register with it and warn about
"leaked" segments after a kill).
"""

from __future__ import annotations

import mmap
import os
import tempfile
from multiprocessing import reduction

import numpy as np

DTYPE = np.float32


def shared_memory_available() -> bool:
    """Whether a spawned worker can be handed a mapping's descriptor here (POSIX: yes)."""
    return os.name == "posix"


def _anonymous_fd(size: int) -> int:
    if hasattr(os, "memfd_create"):  # Linux: anonymous memory, not bounded by /dev/shm's size
        fd = os.memfd_create("mictag-windows", getattr(os, "MFD_CLOEXEC", 0))
    else:
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryFile(dir=folder) as f:  # unlinked as soon as it is created
            fd = os.dup(f.fileno())
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


class SlotArena:
    """``count`` window slots of ``shape`` in one shared mapping. :meth:`create` makes one (the
    scan); a worker rebuilds it from the descriptor it inherited (:meth:`for_child`)."""

    def __init__(self, fd: int, count: int, shape: tuple[int, ...]):
        self.count, self.shape = count, tuple(shape)
        self.slot_bytes = int(np.prod(self.shape)) * np.dtype(DTYPE).itemsize
        self._fd = fd
        self._map = mmap.mmap(fd, count * self.slot_bytes)
        self._slots = np.frombuffer(self._map, DTYPE).reshape(count, *self.shape)
        self._base = self._slots.__array_interface__["data"][0]

    @classmethod
    def create(cls, count: int, shape: tuple[int, ...]) -> "SlotArena":
        if count <= 0:
            raise ValueError("an arena needs at least one slot")
        size = count * int(np.prod(shape)) * np.dtype(DTYPE).itemsize
        return cls(_anonymous_fd(size), count, shape)

    def view(self, slot: int) -> np.ndarray:
        """The slot's window, in place (writable)."""
        return self._slots[slot]

    def index_of(self, array: np.ndarray) -> int:
        """Which slot ``array`` (a :meth:`view`) is."""
        offset = array.__array_interface__["data"][0] - self._base
        slot, rest = divmod(offset, self.slot_bytes)
        if rest or not 0 <= slot < self.count or array.nbytes != self.slot_bytes:
            raise ValueError("not a slot of this arena")
        return slot

    def for_child(self) -> "InheritedArena":
        """What to put in a spawned worker's arguments to give it this arena."""
        return InheritedArena(self._fd, self.count, self.shape)

    def close(self) -> None:
        """Unmap and close the descriptor (the memory goes once no process maps it)."""
        self._slots = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive somewhere: the mapping goes with it
                pass
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class InheritedArena:
    """A :class:`SlotArena` as a spawned process receives it: pickling this during
    ``Process.start()`` passes the descriptor to the child (``reduction.DupFd``, as for a
    ``Pipe``'s end), and unpickling maps it there."""

    def __init__(self, fd: int, count: int, shape: tuple[int, ...]):
        self.fd, self.count, self.shape = fd, count, shape

    def __reduce__(self):
        return _rebuild, (reduction.DupFd(self.fd), self.count, self.shape)


def _rebuild(dup, count: int, shape: tuple[int, ...]) -> SlotArena:
    return SlotArena(dup.detach(), count, shape)

