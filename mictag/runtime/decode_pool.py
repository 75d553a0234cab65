"""Decode worker processes: one file at a time each, over pipes, ended with their parent.

- Each worker is spawned (a crashing native decoder takes down only its worker) and holds one
  duplex pipe to the scan. The scan sends it one file; it sends back that file's window and
  ``done``/``error`` messages; then it gets the next file. So the scan always knows which file a
  worker holds (a dead worker becomes an error row for exactly that file), and "take no new
  files" is simply not sending one.
- A reader thread in the scan moves messages from the pipes into a bounded queue
  (``QUEUE_WINDOWS``): decoders run ahead of the model, and memory stays bounded.
- Pipes, a thread-safe queue and no ``multiprocessing.Queue``: no named semaphores to leak, so
  the resource tracker has nothing to warn about, even after kill -9.
- Workers die with the scan on every path: on Linux through ``PR_SET_PDEATHSIG`` (the kernel
  sends SIGKILL when the scan's thread that started them ends, kill -9 included), elsewhere
  through a thread that checks every second that the parent is still there. They ignore SIGINT
  and SIGHUP, which a terminal sends to the whole process group: the scan decides when they stop.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from multiprocessing.connection import wait

from mictag.frontends import frontend_from_dict

QUEUE_WINDOWS = 64  # messages (mostly windows) in flight between decoders and the model
PR_SET_PDEATHSIG = 1
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class single_threaded_children:
    """Start decode workers with one BLAS thread each: parallelism comes from the processes, and
    per-process thread pools would only fight over the same cores."""

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update({k: "1" for k in _THREAD_VARS})

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` does, however that ends."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker(conn, parent_pid: int, cfg_dict: dict, variant: str, hop: int, chunk_seconds: float) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the scan handles the terminal's signals
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from mictag.runtime.pipeline import decode_file  # the worker's own import (spawned process)

    cfg = frontend_from_dict(cfg_dict)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the scan closed our pipe
        if job is None:
            return
        fid, path = job
        try:
            for message in decode_file(fid, path, cfg, variant, hop, chunk_seconds):
                conn.send(message)
        except (BrokenPipeError, EOFError, OSError):
            return


class _Slot:
    __slots__ = ("process", "conn", "fid")

    def __init__(self, process, conn):
        self.process, self.conn, self.fid = process, conn, None


class DecodePool:
    """``workers`` decode processes over ``jobs`` ((file id, path) pairs, taken in order).
    :meth:`get` returns the next message (or None after ``timeout``); :meth:`stop_taking` lets
    the workers finish their files but starts no new ones; :meth:`close` ends everything."""

    def __init__(self, jobs: Iterable[tuple[int, str]], workers: int, cfg_dict: dict, variant: str, hop: int,
                 chunk_seconds: float):
        self._ctx = mp.get_context("spawn")
        self._todo = deque(jobs)
        self._args = (os.getpid(), cfg_dict, variant, hop, chunk_seconds)
        self._out: queue.Queue = queue.Queue(maxsize=QUEUE_WINDOWS)
        self._lock = threading.Lock()
        self._taking = True
        self._closed = threading.Event()
        self._slots: list[_Slot] = []
        for _ in range(max(1, min(workers, len(self._todo) or 1))):
            slot = self._start()
            self._dispatch(slot)
        self._reader = threading.Thread(target=self._read, name="decode-reader", daemon=True)
        self._reader.start()

    # -- the reader thread --------------------------------------------------------------------
    def _start(self) -> _Slot:
        mine, theirs = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker, args=(theirs, *self._args), daemon=True)
        with single_threaded_children():
            process.start()
        theirs.close()
        slot = _Slot(process, mine)
        self._slots.append(slot)
        return slot

    def _dispatch(self, slot: _Slot) -> None:
        """Give ``slot`` its next file, or tell it to exit."""
        with self._lock:
            job = self._todo.popleft() if self._taking and self._todo else None
        slot.fid = job[0] if job else None
        try:
            slot.conn.send(job)
        except (BrokenPipeError, OSError):
            pass  # its death is noticed by the reader

    def _put(self, message: tuple) -> bool:
        while not self._closed.is_set():
            try:
                self._out.put(message, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            while not self._closed.is_set():
                live = [s for s in self._slots if s.conn is not None]
                if not live:
                    self._put(("idle",))
                    return
                for conn in wait([s.conn for s in live], timeout=0.2):
                    slot = next(s for s in live if s.conn is conn)
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):
                        self._ended(slot)
                        continue
                    if not self._put(message):
                        return
                    if message[0] in ("done", "error"):
                        self._dispatch(slot)
        except Exception as exc:  # never a silent hang: the scan reports it and stops
            self._put(("fatal", f"{type(exc).__name__}: {exc}"))

    def _ended(self, slot: _Slot) -> None:
        """A worker's pipe closed: it exited after being told to, or it died holding a file."""
        slot.conn.close()
        slot.conn = None
        slot.process.join(timeout=5)
        if slot.fid is None:
            return
        code = slot.process.exitcode
        why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        self._put(("error", slot.fid, f"the decoder crashed on this file ({why})"))
        slot.fid = None
        with self._lock:
            more = self._taking and bool(self._todo)
        if more and not self._closed.is_set():
            self._dispatch(self._start())

    # -- the scan's side ----------------------------------------------------------------------
    def get(self, timeout: float = 0.2) -> tuple | None:
        try:
            return self._out.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop_taking(self) -> None:
        with self._lock:
            self._taking = False

    def close(self) -> None:
        """End the reader and every worker (terminated if still busy) and release their pipes."""
        self.stop_taking()
        self._closed.set()
        self._reader.join(timeout=5)
        for slot in self._slots:
            if slot.process.is_alive():
                slot.process.terminate()
        for slot in self._slots:
            slot.process.join(timeout=5)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=5)
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None
            slot.process.close()
