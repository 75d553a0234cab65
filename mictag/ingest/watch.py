"""``mictag watch DIR --out tags.csv``: tag files as they arrive in a folder.

- It first catches up: a scan of DIR into the output, as ``mictag scan`` with the same ``--out``
  does (what arrived while it was down is tagged, what was tagged is kept).
- Then it watches: inotify (or the platform's own notifications) through watchdog, or, with
  ``--poll``, a listing every ``--interval`` seconds (network shares send no notifications).
- A file is tagged once it has stopped changing: its size and mtime the same for ``--settle``
  seconds. Files still changing are held back from the scans in between (their rows come later).
- Rows go to the output through the scan itself (:func:`~mictag.runtime.scan.run.run_scan`: the
  same journal, resume and content rules); the model is loaded once. The watch holds the output's
  lock for as long as it runs, so a ``scan`` and a ``watch`` on one output never interleave.
- Ctrl-C (or SIGTERM, SIGHUP) as the scan's: the files in progress finish, then it exits with
  the signal's code; a restart catches up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mictag.output.files import index_dir, lock_path, parquet_journal_path, redo_path, state_path
from mictag.runtime.scan.discovery import AUDIO_EXTENSIONS, discover
from mictag.runtime.scan.run import ScanRequest, ScanSummary, run_scan


class _Changes:
    """Paths something happened to, from watchdog's observer thread or from polling."""

    def __init__(self):
        self._lock = threading.Lock()
        self._paths: set[str] = set()

    def add(self, path: str) -> None:
        with self._lock:
            self._paths.add(path)

    def take(self) -> set[str]:
        with self._lock:
            taken, self._paths = self._paths, set()
        return taken


def _observer(folder: Path, changes: _Changes, poll: bool, interval: float):
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            # What writes or moves a file; not the opened / closed-without-writing events that the
            # scan's own reads cause.
            if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
                return
            for path in (getattr(event, "src_path", ""), getattr(event, "dest_path", "")):
                if path:
                    changes.add(os.fsdecode(path))

    observer = PollingObserver(timeout=interval) if poll else Observer()
    observer.schedule(Handler(), str(folder), recursive=True)
    observer.start()
    return observer


class Watcher:
    """Watches ``request.library`` and scans what settled into ``request.out`` (see the module
    docstring). ``engine``: the model, open; ``settle``: seconds a file must stay unchanged."""

    def __init__(self, request: ScanRequest, engine, settle: float = 2.0, poll: bool = False,
                 interval: float = 2.0, on_message: Callable[[str], None] | None = None,
                 on_scan: Callable[[ScanSummary], None] | None = None):
        self.request, self.engine = request, engine
        self.folder = Path(request.library)
        self.settle, self.poll, self.interval = settle, poll, interval
        self.say = on_message or (lambda m: None)
        self.on_scan = on_scan or (lambda s: None)
        out = Path(request.out)
        emb = Path(request.embeddings) if request.embeddings else None
        own = [out, state_path(out), parquet_journal_path(out), redo_path(out), lock_path(out)]
        if emb is not None:
            own += [emb, parquet_journal_path(emb), index_dir(emb)]
        self.own = {os.path.abspath(p) for p in own}
        self.pending: dict[str, tuple[tuple[int, float], float]] = {}  # rel -> (size, mtime), since when
        self.scans = 0

    def _rel(self, path: str) -> str | None:
        full = os.path.abspath(path)
        if full in self.own or any(full.startswith(p + os.sep) for p in self.own):
            return None
        if os.path.splitext(full)[1].lower() not in AUDIO_EXTENSIONS:
            return None
        try:
            rel = Path(os.path.relpath(full, self.folder)).as_posix()
        except ValueError:
            return None
        return None if rel.startswith("../") else rel

    def _note(self, rel: str, now: float) -> None:
        try:
            st = os.stat(self.folder / rel)
        except OSError:
            self.pending.pop(rel, None)  # gone again: nothing to tag
            return
        stamp = (st.st_size, st.st_mtime)
        held = self.pending.get(rel)
        if held is None or held[0] != stamp:
            self.pending[rel] = (stamp, now)

    def _settled(self, now: float) -> list[str]:
        for rel in list(self.pending):
            self._note(rel, now)
        return [rel for rel, (_, since) in self.pending.items() if now - since >= self.settle]

    def _scan(self, should_stop) -> None:
        hold = frozenset(self.pending)
        summary = run_scan(replace(self.request, hold=hold), on_message=self.say, should_stop=should_stop,
                           engine=self.engine, locked=True)
        self.scans += 1
        self.on_scan(summary)

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Catch up, then watch until ``should_stop()``."""
        now = time.time()
        for e in discover(self.folder, self.request.include, self.request.exclude):
            if now - e.mtime < self.settle:  # written a moment ago: perhaps still being written
                self.pending[e.rel] = ((e.size, e.mtime), time.monotonic())
        changes = _Changes()
        observer = _observer(self.folder, changes, self.poll, self.interval)
        try:
            self._scan(should_stop)
            for rel in list(self.pending):
                self._note(rel, time.monotonic())
            while not should_stop():
                time.sleep(min(0.25, self.settle / 4))
                now = time.monotonic()
                for path in changes.take():
                    rel = self._rel(path)
                    if rel is not None:
                        self._note(rel, now)
                ready = self._settled(now)
                if ready:
                    for rel in ready:
                        del self.pending[rel]
                    self.say(f"{len(ready)} file{'s' if len(ready) != 1 else ''} settled: tagging")
                    self._scan(should_stop)
        finally:
            observer.stop()
            observer.join(timeout=5)
