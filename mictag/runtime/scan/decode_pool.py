"""Decode worker processes: one file at a time each, over pipes, ended with their parent.

- Each worker is spawned (a crashing native decoder takes down only its worker) and holds one
  duplex pipe to the scan. The scan sends it one file (:class:`Job`); it sends back that file's
  :class:`~mictag.runtime.scan.decode.Window` s and its ``Done`` or ``Failed``; then it gets the next file. So the scan always knows which file a
  worker holds (a dead worker becomes an error row for exactly that file), and "take no new
  files" is simply not sending one.
- Windows do not cross the pipe (``feed="shm"``): each worker seat has an arena of
  ``SLOTS_PER_WORKER`` window slots in anonymous shared memory (:mod:`mictag.runtime.scan.shm_slots`).
  The worker cuts a window straight into a free slot and sends the slot's number; the scan copies
  the window into its batch (:meth:`DecodePool.fill`) and sends the slot back (:class:`FreeSlots`)
  on the same pipe. A worker with no free slot waits for one: the slots bound memory and let
  decoders run ahead of the model. ``feed="pickle"`` sends pickled arrays instead (platforms
  that cannot hand a spawned process a descriptor).
- On the pipe, the two messages sent once per window travel in a compact form that only this
  module writes and reads (:func:`_to_wire`, :func:`_window_from_wire`): a window as a plain tuple
  of its fields, a slot given back as its bare number (a pickled NamedTuple names its class: twice
  the bytes and five times the time of a plain tuple). Everything else (jobs, a seat's first slots, ``Done``, ``Failed``) crosses typed.
- A reader thread in the scan moves messages from the pipes into a bounded queue
  (``QUEUE_WINDOWS``), so the scan's loop never waits on a particular worker.
- A dead worker's replacement takes its seat and arena, and gets the slots the scan is not
  still holding (the dead one's windows that were sent are scored; the rest is its file's
  error row).
- Pipes, a thread-safe queue, no ``multiprocessing.Queue`` and shared memory without a name: no
  named semaphore or segment to leak, so the resource tracker has nothing to warn about and
  ``/dev/shm`` nothing to keep, even after kill -9.
- Workers die with the scan on every path: on Linux through ``PR_SET_PDEATHSIG`` (the kernel
  sends SIGKILL when the scan's thread that started them ends, kill -9 included), elsewhere
  through a thread that checks every second that the parent is still there. They ignore SIGINT,
  SIGHUP and SIGTERM, which a terminal, a service manager or ``kill -- -PGID`` send to the whole
  process group: the scan decides when they stop (it finishes the files in progress), and kills
  them itself when it must.
- What the native decoders print on the process's standard error (libmpg123's "part2_3_length too
  large", "Trying to resync..." on a damaged MP3) goes nowhere: a file that fails already gets an
  error row that says why, and a file that decoded needs no word. Python's own messages from a
  worker still reach the terminal. ``MICTAG_DECODER_STDERR=1`` keeps the decoders' text (to debug
  one).
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
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait
from typing import NamedTuple

import numpy as np

from mictag.frontends import frontend_from_dict
from mictag.runtime.scan.decode import DecodeMessage, Done, Failed, Window
from mictag.runtime.scan.shm_slots import InheritedArena, SlotArena, shared_memory_available
from mictag.runtime.scan.windows import window_shape

QUEUE_WINDOWS = 64  # messages in flight between the pipes and the scan's loop
# Window slots per worker: enough to decode on while the model runs a batch (a GPU's 64 windows
# take ~30 ms; a worker decodes a window in ~20 ms), few enough that 16 workers hold 84 MB.
SLOTS_PER_WORKER = 8
PR_SET_PDEATHSIG = 1
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
KEEP_DECODER_STDERR = "MICTAG_DECODER_STDERR"


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


def silence_native_stderr() -> None:
    """Point file descriptor 2 (where C libraries write) at the null device, and ``sys.stderr`` (where
    Python writes: warnings, a worker's traceback) at a copy of the old descriptor 2."""
    try:
        sys.stderr.flush()
        kept = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except (OSError, AttributeError, ValueError):  # no descriptor 2 (a service without one): nothing to silence
        return
    sys.stderr = open(kept, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                      errors="backslashreplace", closefd=True)


class _Closed(BaseException):
    """The scan closed the pipe while the worker waited for a slot. (Not an Exception: the decoder's
    catch-all, which turns errors into a file's error row, must let it through.)"""


class Job(NamedTuple):
    """The pool to a worker: decode this file."""

    fid: int
    path: str


class FreeSlots(NamedTuple):
    """The pool to a worker: these shared-memory slots are yours to write again."""

    slots: tuple[int, ...]


class PoolIdle(NamedTuple):
    """The pool to the scan: every worker has exited."""


class PoolFailed(NamedTuple):
    """The pool to the scan: its reader failed (the scan reports it and stops)."""

    reason: str


class _Unexpected(NamedTuple):
    """A worker to the pool: its decode source yielded something that is not a decode message."""

    kind: str


PoolMessage = DecodeMessage | PoolIdle | PoolFailed


def _to_wire(message: DecodeMessage, slot: int | None):
    """A worker's message as it crosses the pipe: a window as a plain tuple of its fields (its data
    replaced by its slot's number with the shm feed), the rest as they are."""
    if type(message) is Window:
        fid, index, start_frame, data, valid, seconds = message
        return (fid, index, start_frame, data if slot is None else slot, valid, seconds)
    if isinstance(message, (Done, Failed)):
        return message
    return _Unexpected(type(message).__name__)


def _window_from_wire(wire: tuple, data) -> Window:
    """The window a wire tuple carries, with ``data`` where its array waits (the pool's seat and slot
    with the shm feed, the array itself with the pickle feed)."""
    fid, index, start_frame, _, valid, seconds = wire
    return Window(fid, index, start_frame, data, valid, seconds)


def _worker(conn, parent_pid: int, cfg_dict: dict, variant: str, hop: int, chunk_seconds: float,
            arena: SlotArena | None = None, source: Callable[..., Iterator[DecodeMessage]] | None = None) -> None:
    die_with_parent(parent_pid)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # the scan handles the group's signals
        signal.signal(sig, signal.SIG_IGN)
    if os.environ.get(KEEP_DECODER_STDERR, "") in ("", "0"):
        silence_native_stderr()
    if source is None:
        from mictag.runtime.scan.decode import decode_file as source  # the worker's own import (spawned)

    cfg = frontend_from_dict(cfg_dict)
    free: deque[int] = deque()  # slots this worker may write
    lent: set[int] = set()  # slots taken for a window not yet sent

    def take() -> np.ndarray:
        """A free slot to cut the next window into, waiting for the scan to give one back."""
        while not free:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                raise _Closed from None
            if type(message) is int:  # one slot given back (the wire form of FreeSlots((slot,)))
                free.append(message)
            elif isinstance(message, FreeSlots):
                free.extend(message.slots)
            else:  # mid-file the scan only gives slots back
                raise _Closed
        slot = free.popleft()
        lent.add(slot)
        return arena.view(slot)

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the scan closed our pipe
        if job is None:
            return
        if type(job) is int:
            free.append(job)
            continue
        if isinstance(job, FreeSlots):
            free.extend(job.slots)
            continue
        try:
            for message in source(job.fid, job.path, cfg, variant, hop, chunk_seconds, alloc=take if arena else None):
                slot = None
                if arena is not None and type(message) is Window:
                    slot = arena.index_of(message.data)  # only the slot's number crosses the pipe
                    lent.discard(slot)
                conn.send(_to_wire(message, slot))
        except (BrokenPipeError, EOFError, OSError, _Closed):
            return
        free.extend(lent)  # cut but not sent (a file with no audio keeps no window)
        lent.clear()


class _Seat:
    """A worker's place in the pool: its process and pipe, the file it holds and, with the shm
    feed, its slot arena and the slots the scan holds (sent by a worker, not yet given back).
    ``lock`` orders what the reader thread and the scan's loop send on the pipe, and the
    hand-over of the arena from a dead worker to its replacement."""

    __slots__ = ("process", "conn", "fid", "arena", "held", "lock")

    def __init__(self, arena: SlotArena | None):
        self.process = self.conn = self.fid = None
        self.arena, self.held, self.lock = arena, set(), threading.Lock()

    def send(self, message) -> None:
        """Send under ``lock`` (held by the caller); a dead worker's pipe is noticed by the reader."""
        if self.conn is not None:
            try:
                self.conn.send(message)
            except (BrokenPipeError, OSError):
                pass


class DecodePool:
    """``workers`` decode processes over ``jobs`` ((file id, path) pairs, taken in order).
    :meth:`get` returns the next message (or None after ``timeout``); a window's data is
    copied out with :meth:`fill`; :meth:`stop_taking` lets the workers finish their files but
    starts no new ones; :meth:`close` ends everything. ``feed`` is "shm" (slots; "pickle" where
    this platform has no shared memory to hand over) or "pickle"; ``source`` replaces
    :func:`~mictag.runtime.scan.decode.decode_file` in the workers (importable by name)."""

    def __init__(self, jobs: Iterable[tuple[int, str]], workers: int, cfg_dict: dict, variant: str, hop: int,
                 chunk_seconds: float, feed: str = "auto", source: Callable[..., Iterator[DecodeMessage]] | None = None,
                 slots: int = SLOTS_PER_WORKER, open_ended: bool = False):
        self._ctx = mp.get_context("spawn")
        self._todo = deque(Job(fid, path) for fid, path in jobs)
        self._args = (os.getpid(), cfg_dict, variant, hop, chunk_seconds)
        self._source = source
        self.feed = "shm" if feed in ("shm", "auto") and shared_memory_available() else "pickle"
        shape = window_shape(frontend_from_dict(cfg_dict), variant)
        self._out: queue.Queue = queue.Queue(maxsize=QUEUE_WINDOWS)
        self._lock = threading.Lock()
        self._taking = True
        self._closed = threading.Event()
        # open-ended (a service's pool): workers wait for more files instead of exiting (see add)
        self.open_ended = open_ended
        self._seats: list[_Seat] = []
        self._retired: list = []  # processes of dead workers, closed at the end
        self._idle: list[_Seat] = []  # open-ended: seats waiting for a file
        try:
            for _ in range(max(1, workers if open_ended else min(workers, len(self._todo) or 1))):
                seat = _Seat(SlotArena.create(slots, shape) if self.feed == "shm" else None)
                self._seats.append(seat)
                self._start(seat)
                self._dispatch(seat)
        except BaseException:
            self._reader = None
            self.close()
            raise
        self._reader = threading.Thread(target=self._read, name="decode-reader", daemon=True)
        self._reader.start()

    # -- the reader thread --------------------------------------------------------------------
    def _start(self, seat: _Seat) -> None:
        """Start a worker in ``seat`` and give it the seat's slots that the scan does not hold."""
        mine, theirs = self._ctx.Pipe(duplex=True)
        arena: InheritedArena | None = seat.arena.for_child() if seat.arena else None
        process = self._ctx.Process(target=_worker, args=(theirs, *self._args, arena, self._source), daemon=True)
        with single_threaded_children():
            process.start()
        theirs.close()
        with seat.lock:
            seat.process, seat.conn = process, mine
            if seat.arena is not None:
                seat.send(FreeSlots(tuple(i for i in range(seat.arena.count) if i not in seat.held)))

    def _dispatch(self, seat: _Seat) -> None:
        """Give ``seat``'s worker its next file, or tell it to exit (open-ended: to wait for one)."""
        with self._lock:
            job = self._todo.popleft() if self._taking and self._todo else None
            if job is None and self.open_ended and self._taking:
                seat.fid = None
                self._idle.append(seat)  # add() hands it the next file
                return
        seat.fid = job.fid if job else None
        with seat.lock:
            seat.send(job)

    def add(self, jobs: Iterable[tuple[int, str]]) -> None:
        """More files for an open-ended pool (file ids unique over the pool's life)."""
        with self._lock:
            self._todo.extend(Job(fid, path) for fid, path in jobs)
            idle, self._idle = self._idle, []
        for seat in idle:
            self._dispatch(seat)

    def _put(self, message: PoolMessage) -> bool:
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
                live = [s for s in self._seats if s.conn is not None]
                if not live:
                    self._put(PoolIdle())
                    return
                for conn in wait([s.conn for s in live], timeout=0.2):
                    seat = next(s for s in live if s.conn is conn)
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):
                        self._ended(seat)
                        continue
                    if type(message) is tuple:  # a window, in its wire form
                        if seat.arena is None:
                            message = _window_from_wire(message, message[3])
                        else:
                            with seat.lock:
                                seat.held.add(message[3])
                            message = _window_from_wire(message, (seat, message[3]))
                    elif isinstance(message, _Unexpected):  # a source that speaks otherwise
                        raise TypeError(f"a decode source sent {message.kind}, not a decode message")
                    elif not isinstance(message, (Done, Failed)):
                        raise TypeError(f"a decode worker sent {type(message).__name__}")
                    if not self._put(message):
                        return
                    if isinstance(message, (Done, Failed)):
                        self._dispatch(seat)
        except Exception as exc:  # never a silent hang: the scan reports it and stops
            self._put(PoolFailed(f"{type(exc).__name__}: {exc}"))

    def _ended(self, seat: _Seat) -> None:
        """A worker's pipe closed: it exited after being told to, or it died holding a file."""
        with seat.lock:
            seat.conn.close()
            seat.conn = None
        seat.process.join(timeout=5)
        if seat.fid is None:
            return
        code = seat.process.exitcode
        why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        self._put(Failed(seat.fid, f"the decoder crashed on this file ({why})"))
        seat.fid = None
        with self._lock:
            more = self._taking and (bool(self._todo) or self.open_ended)
        if more and not self._closed.is_set():
            self._retired.append(seat.process)
            self._start(seat)
            self._dispatch(seat)

    # -- the scan's side ----------------------------------------------------------------------
    def get(self, timeout: float = 0.2) -> PoolMessage | None:
        try:
            return self._out.get(timeout=timeout)
        except queue.Empty:
            return None

    def fill(self, out: np.ndarray, message: Window) -> None:
        """Copy a window into ``out`` (a row of the scan's batch); with the shm feed, give its slot
        back to the worker that now sits in the seat."""
        data = message.data
        if isinstance(data, np.ndarray):  # the pickle feed
            out[...] = data
            return
        seat, slot = data
        out[...] = seat.arena.view(slot)
        with seat.lock:
            seat.held.discard(slot)
            seat.send(slot)  # FreeSlots((slot,)) in its wire form

    def stop_taking(self) -> None:
        with self._lock:
            self._taking = False
            idle, self._idle = self._idle, []
        for seat in idle:  # waiting workers exit now
            with seat.lock:
                seat.send(None)

    def close(self) -> None:
        """End the reader and every worker (terminated if still busy), release their pipes and the
        slot arenas (whose memory goes with the last process that maps it)."""
        self.stop_taking()
        self._closed.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
        processes = [p for p in (*self._retired, *(s.process for s in self._seats)) if p is not None]
        for process in processes:
            if process.is_alive():
                process.kill()  # workers ignore SIGTERM; they hold nothing the kernel does not free
        for process in processes:
            process.join(timeout=5)
            process.close()
        for seat in self._seats:  # (no lock: the reader is gone, and a second Ctrl-C may have left it held)
            if seat.conn is not None:
                seat.conn.close()
                seat.conn = None
            if seat.arena is not None:
                seat.arena.close()
        while True:  # messages left in the queue refer to the seats: let them go
            try:
                self._out.get_nowait()
            except queue.Empty:
                break
