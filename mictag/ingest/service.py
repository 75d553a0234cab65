"""The tagging service's engine side: the model loaded once, one open-ended decode pool, and one
thread that scores the files of every request together.

Requests hand in files (:meth:`TaggingService.submit`) and get a future per file. The model
thread runs the scan's own :class:`~mictag.runtime.scan.pipeline.Scanner` over them, taking the
files that arrive while it runs into the same pass, so that windows of concurrent requests share
engine calls (``windows / engine_calls`` in :meth:`stats`). Files wait in a bounded queue
(``capacity`` files accepted and not yet answered): past it, :class:`Busy`, which the HTTP side
answers with 503 and Retry-After, so memory never grows with the load. Decoding runs in worker
processes: a decoder that crashes costs its file an error result, and the pool starts another.

A checked fast path (:mod:`mictag.runtime.engines.trust`) holds a file's result until a passing
check covers its windows, as in a scan; each pass ends, and settles what it holds, once every file
handed in is answered (files that arrive later start the next pass).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from mictag.api import file_entry
from mictag.errors import MictagError
from mictag.output.rows import FileResult
from mictag.runtime.engines.open import open_backend
from mictag.runtime.scan.discovery import FileEntry
from mictag.runtime.scan.pipeline import Scanner, ScanOptions


class Busy(MictagError):
    """The queue is full: try again shortly."""


class TaggingService:
    """``model`` opened as ``mictag scan`` opens it; ``options`` the scan's scoring options
    (``workers`` decode processes; segments are always kept: the answer has them)."""

    def __init__(self, model: str | os.PathLike, options: ScanOptions, backend: str = "auto",
                 precision: str | None = None, capacity: int = 256, on_message=None):
        from mictag.runtime.scan.decode_pool import DecodePool

        self.model = Path(model)
        self.options = replace(options, segments=True, workers=max(1, options.workers))
        self.scanner = Scanner(open_backend(model, backend, precision=precision, on_message=on_message), self.options)
        sc = self.scanner
        self.pool = DecodePool([], self.options.workers, sc.cfg.to_dict(), sc.variant, sc.hop,
                               self.options.chunk_seconds, feed=self.options.feed, open_ended=True)
        self.capacity = capacity
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._incoming: deque[FileEntry] = deque()
        self._waiting: dict[str, tuple[Future, str]] = {}  # token -> (future, the path asked for)
        self._next_token = 0
        self._next_fid = 0
        self._closing = False
        self.files_done = 0
        self._thread = threading.Thread(target=self._run, name="mictag-service-model", daemon=True)
        self._thread.start()

    @property
    def labels(self) -> list[str]:
        return self.scanner.labels

    @property
    def thresholds(self):
        return self.scanner.thresholds

    @property
    def engine(self) -> str:
        return self.scanner.backend_name

    def stats(self) -> dict:
        calls = self.scanner.engine_calls
        return {"files": self.files_done, "windows": self.scanner.windows_scored, "engine_calls": calls,
                "windows_per_call": self.scanner.windows_scored / calls if calls else 0.0,
                "queued": len(self._waiting)}

    def submit(self, paths: list[str]) -> list[Future]:
        """A future per path (its FileResult); Busy when the queue cannot take them all."""
        with self._lock:
            if self._closing:
                raise Busy("the service is shutting down")
            if len(self._waiting) + len(paths) > self.capacity:
                raise Busy(f"{len(self._waiting)} files are waiting (capacity {self.capacity})")
            futures = []
            for path in paths:
                future: Future = Future()
                futures.append(future)
                token = f"f{self._next_token}"
                self._next_token += 1
                entry = file_entry(path, token)
                if isinstance(entry, FileResult):  # unreadable, a folder, a FIFO: answered at once, never opened
                    future.set_result(entry)
                    continue
                self._waiting[token] = (future, path)
                self._incoming.append(entry)
            self._wake.notify()
        return futures

    def _take(self) -> list[FileEntry]:
        with self._lock:
            taken = list(self._incoming)
            self._incoming.clear()
            self._next_fid += len(taken)
        return taken

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._incoming and not self._closing:
                    self._wake.wait()
                if not self._incoming and self._closing:
                    return
                first = self._next_fid
            entries = self._take()
            try:
                for result in self.scanner.scan(entries, pool=self.pool, more=self._take, first_fid=first):
                    self._answer(result)
            except BaseException as exc:  # a broken engine: every file waiting hears it
                with self._lock:
                    waiting, self._waiting = self._waiting, {}
                    self._incoming.clear()
                for future, _ in waiting.values():
                    if not future.done():
                        future.set_exception(exc)

    def _answer(self, result: FileResult) -> None:
        with self._lock:
            future, path = self._waiting.pop(result.path, (None, ""))
        if future is None:
            return
        result.path = path
        self.files_done += 1
        future.set_result(result)

    def close(self, timeout: float = 60.0) -> None:
        """Take no more files, let the ones accepted finish (up to ``timeout`` s), then stop."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        deadline = time.monotonic() + timeout
        while self._waiting and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        self.pool.close()
        self._thread.join(timeout=5)
