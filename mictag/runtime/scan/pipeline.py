"""The scan pipeline: decode workers -> bounded queue -> batches across files -> backend ->
per-file aggregation.

Decoding runs in worker processes (:mod:`mictag.runtime.scan.decode_pool`: a crashing native decoder
takes down only its worker; the file it held becomes an error row and a fresh worker takes its
place). Workers stream each file in chunks, compute its log-mel frames once and cut windows from
them (or raw sample windows for a waveform-input model). The windows reach the scan through
shared-memory slots, a fixed number per worker (only the slot's number crosses the pipe, not a
pickled array), so memory stays bounded however long a file is. The main process copies each
window into the batch it is filling, from windows of ANY files (one array, reused batch after
batch), runs the model once per batch and aggregates each file's windows when its last one is
scored. ``scan(..., should_stop=)`` stops taking files when asked and returns what has finished.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mictag.audio import CHUNK_SECONDS
from mictag.errors import ConfigError
from mictag.frontends import frontend_from_dict, hop_frames
from mictag.runtime.scan.decode import SILENCE, DecodeMessage, Done, Failed, Window, decode_file
from mictag.runtime.scan.discovery import FileEntry
from mictag.runtime.engines.base import Backend
from mictag.output.embeddings import file_vector
from mictag.output.rows import FileResult
from mictag.runtime.engines.trust import CheckOutcome, RowGate
from mictag.runtime.scan.windows import window_shape

FEEDS = ("auto", "shm", "pickle")


@dataclass
class ScanOptions:
    hop_seconds: float | None = None  # None: the window length (no overlap)
    batch_size: int | None = None  # None: the backend's preference
    aggregate: str = "max"
    threshold: float | None = None  # overrides the model's per-class thresholds
    workers: int = 1  # decode processes; 0 decodes in the calling process
    segments: bool = False
    embeddings: bool = False  # each file's embedding too (FileResult.embedding)
    chunk_seconds: float = CHUNK_SECONDS
    # How windows travel from decode workers: "shm" (shared-memory slots), "pickle" (pickled
    # through the pipe: where no descriptor can be handed to a worker), "auto" (shm where possible).
    feed: str = "auto"

    def __post_init__(self) -> None:
        """Options a user gives are checked here, where they are made (CLI and API alike)."""
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"must be between 0 and 1, not {self.threshold}", "threshold")
        if self.aggregate not in ("max", "mean"):
            raise ConfigError(f"must be max or mean, not {self.aggregate!r}", "aggregate")
        if self.feed not in FEEDS:
            raise ConfigError(f"must be one of {', '.join(FEEDS)}, not {self.feed!r}", "feed")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"must be at least 1, not {self.batch_size}", "batch_size")
        if self.workers < 0:
            raise ConfigError(f"cannot be negative ({self.workers})", "workers")
        if self.hop_seconds is not None and not self.hop_seconds > 0:
            raise ConfigError(f"must be positive, not {self.hop_seconds} s", "hop_seconds")


@dataclass
class FileState:
    entry: FileEntry
    probs: dict
    segments: list
    done: Done | None = None
    embeddings: dict | None = None  # window index -> its embedding, with ScanOptions.embeddings


class Pending(NamedTuple):
    """A window in the batch: its file, its index in the file, its valid samples (or frames) and
    its start and end in seconds."""

    fid: int
    index: int
    valid: int
    seconds: tuple[float, float]


class _Batch:
    """The windows waiting for the model, copied in as they arrive, from any files, into one array
    that is reused batch after batch: a fresh array per batch (what ``np.stack`` gave) costs page
    faults on every byte, 1.5 GB/s of them at a GPU's rate. The backend reads the array only
    during its ``run``; the next window overwrites it after."""

    def __init__(self, size: int, shape: tuple[int, ...]):
        self.size, self.shape = size, shape
        self.x: np.ndarray | None = None  # allocated at the first window
        self.items: list[Pending] = []  # the windows in x, in order

    def __len__(self) -> int:
        return len(self.items)

    def add(self, msg: Window, fill: Callable[[np.ndarray, Window], None]) -> bool:
        """Copy a window in with ``fill(row, msg)``; True once the batch is full."""
        if self.x is None:
            self.x = np.empty((self.size, *self.shape), np.float32)
        fill(self.x[len(self.items)], msg)
        self.items.append(Pending(msg.fid, msg.index, msg.valid, msg.seconds))
        return len(self.items) >= self.size

    def drop(self, fid: int) -> None:
        """Forget the windows of a file that failed (the others move up)."""
        keep = [i for i, item in enumerate(self.items) if item.fid != fid]
        if len(keep) < len(self.items):
            self.x[: len(keep)] = self.x[keep]
            self.items = [self.items[i] for i in keep]

    def take(self) -> tuple[np.ndarray, np.ndarray, list[Pending]]:
        """The windows (a view of the reused array), their valid counts and items; empties the batch."""
        items, self.items = self.items, []
        return self.x[: len(items)], np.asarray([item.valid for item in items], np.int64), items


def _copy_window(row: np.ndarray, msg: Window) -> None:
    row[...] = msg.data


class Scoring:
    """What turns window probabilities into a file's row, from a model's metadata and the scan
    options: labels, window geometry and hop, thresholds, aggregation. Shared by the local
    pipeline and the Ray one."""

    def __init__(self, meta: dict, options: ScanOptions):
        self.options = options
        self.labels: list[str] = list(meta["labels"])
        try:
            self.cfg = frontend_from_dict(meta["features"])
        except ValueError as exc:  # a model from a newer mictag
            raise ConfigError(f"the model's front end cannot be computed here: {exc}") from None
        self.variant = meta.get("variant", "waveform")
        o = options
        try:
            self.hop = hop_frames(o.hop_seconds, self.cfg) if o.hop_seconds else self.cfg.target_frames
        except ValueError as exc:  # a hop the model's frames cannot make
            raise ConfigError(str(exc)) from None
        self.thresholds = (np.full(len(self.labels), o.threshold) if o.threshold is not None
                           else np.asarray(meta["thresholds"], np.float64))

    def result(self, st: "FileState") -> FileResult:
        e = st.entry
        d = st.done
        duration, n, status, note = d.duration, d.windows, d.status, d.note
        size, mtime = (d.size_bytes, d.mtime) if d.size_bytes is not None else (e.size, e.mtime)  # as read, where known
        res = FileResult(e.rel, size, mtime, duration, n, status, note)
        if n:
            probs = np.stack([st.probs[i] for i in range(n)])
            res.scores = probs.max(axis=0) if self.options.aggregate == "max" else probs.mean(axis=0)
            res.tags = [] if note == SILENCE else [label for label, s, t in zip(self.labels, res.scores, self.thresholds)
                                                   if s >= t]
            if st.embeddings:
                res.embedding = file_vector([st.embeddings[i] for i in sorted(st.embeddings)])
            if self.options.segments:
                res.segments = [{"start": round(t0, 3), "end": round(t1, 3),
                                 "scores": [round(float(v), 6) for v in st.probs[i]]}
                                for i, (t0, t1) in sorted(st.segments)]
        return res


class Scanner:
    """Scores files with a loaded backend. ``scan(entries)`` yields one FileResult per entry, in the
    order files finish. ``source`` turns a file into messages, as :func:`decode_file` (the
    default) does; another one (a benchmark's, replaying ready windows) must be importable by
    name in a spawned worker."""

    def __init__(self, backend: Backend, options: ScanOptions | None = None,
                 source: Callable[..., Iterator[DecodeMessage]] | None = None):
        self.backend = backend
        self.options = options or ScanOptions()
        self.source = source or decode_file
        self.scoring = Scoring(backend.meta, self.options)
        sc = self.scoring
        self.labels, self.cfg, self.variant, self.hop, self.thresholds = sc.labels, sc.cfg, sc.variant, sc.hop, sc.thresholds
        self.batch_size = self.options.batch_size or backend.preferred_batch
        self.windows_scored = 0
        self.engine_calls = 0  # batches submitted (windows_scored / engine_calls: windows per call)
        self.redone = 0  # files scored again on the reference after a fast path's check failed
        # Told the paths of rows already yielded that a failed check makes this scan score again
        # (their new rows follow): the output keeps a redo list until they are replaced.
        self.on_replace: Callable[[list[str]], None] | None = None
        self._fast_rows: list[FileEntry] = []  # yielded rows with windows from a fast path
        self._replay: list[FileEntry] = []  # those, after a failed check
        if hasattr(backend, "use_thresholds"):  # a checked fast path: the tags it must not change
            backend.use_thresholds(self.thresholds)
        if self.options.embeddings and not backend.embeds:
            backend.want_embeddings()

    @property
    def backend_name(self) -> str:
        """What scored the windows (read at the end: a fast path's checks may have changed it)."""
        return self.backend.description

    @property
    def notes(self) -> list[str]:
        """What a checked fast path did, in a line or two, for the summary."""
        summary = getattr(self.backend, "summary", None)
        line = summary() if summary else ""
        if self.redone:
            line += (f"; {self.redone} file{'s' if self.redone > 1 else ''} it had scored "
                     f"{'were' if self.redone > 1 else 'was'} scored again on fp32")
        return [line] if line else []

    def _result(self, st: FileState) -> FileResult:
        return self.scoring.result(st)

    def scan(self, entries: Iterable[FileEntry], on_progress: Callable[[dict], None] | None = None,
             should_stop: Callable[[], bool] | None = None, pool=None, more: Callable[[], list[FileEntry]] | None = None,
             first_fid: int = 0) -> Iterator[FileResult]:
        """One FileResult per entry, as files finish. Once ``should_stop()`` is true, no new file is
        started; the windows already decoded are scored and the files they complete are yielded.

        A service keeps one open-ended :class:`~mictag.runtime.scan.decode_pool.DecodePool` over its
        life (``pool``: left open at the end; file ids from ``first_fid`` on, unique over the
        pool's life) and hands files in as they come (``more()``: the files that arrived since it
        was last asked; the scan ends once every file given is done and none arrived)."""
        self._fast_rows, self._replay = [], []
        run = _Pass(self, list(entries), on_progress, should_stop or (lambda: False), more, first_fid)
        yield from (run.with_workers(pool) if self.options.workers > 0 or pool is not None else run.inline())
        if run.gate is not None:
            yield from self._settle(run.gate, run.stopping)
        run.report(force=True)

    # -- a checked fast path ----------------------------------------------------------------
    def _release(self, states: list) -> Iterator[FileResult]:
        for st in states:  # held: they had windows on the fast path
            self._fast_rows.append(st.entry)
            yield self._result(st)

    def _after(self, outcome: CheckOutcome | None) -> None:
        """After a failed check, the rows the fast path already gave are scored again too."""
        if outcome is None or not outcome.left or outcome.passed is not False or not self._fast_rows:
            return
        if self.on_replace is not None:
            self.on_replace([e.rel for e in self._fast_rows])
        self._replay += self._fast_rows
        self._fast_rows = []

    def _near_threshold(self, st: FileState, fast: bool) -> bool:
        """With --aggregate mean, a file whose mean score lies within the fast path's margin of a
        threshold: its windows' deviations could add up to a different tag, so the reference
        scores it again. (With max, a window near a threshold was already scored on fp32.)"""
        if not fast or self.options.aggregate != "mean" or not st.probs or st.done is None:
            return False
        mean = np.stack(list(st.probs.values())).mean(axis=0)
        return bool(np.any(np.abs(mean - self.thresholds) <= self.backend.margin))

    def _settle(self, gate: RowGate, stopping: Callable[[], bool]) -> Iterator[FileResult]:
        """The end of a scan on a checked fast path: one last check for the rows still held, then
        the files a failed check left are scored again on the reference."""
        released = []
        if gate.must_wait():
            outcome = self.backend.final_check()
            # None: every window the held files had on the fast path was scored on fp32 already
            released = gate.outcome(outcome or CheckOutcome(fast=True, passed=True))
            self._after(outcome)
        self.backend.finish()  # before any yield: a caller may stop reading at the last row
        yield from self._release(released)
        redo = [st.entry for st in gate.redo.values()] + self._replay
        if not redo or stopping():
            return  # stopped: their rows are not written, so the next run does them
        again = Scanner(self.backend.reference, self.options, self.source)
        for result in again.scan(redo, should_stop=stopping):
            self.redone += 1
            yield result
        self.windows_scored += again.windows_scored


class _Pass:
    """One pass of :meth:`Scanner.scan` over a list of files: the files in progress, the batch
    being filled, the batches in flight and the counts a progress report gives."""

    def __init__(self, scanner: Scanner, entries: list[FileEntry], on_progress: Callable[[dict], None] | None,
                 stopping: Callable[[], bool], more: Callable[[], list[FileEntry]] | None = None, first_fid: int = 0):
        self.scanner, self.entries, self.on_progress, self.stopping = scanner, entries, on_progress, stopping
        self.more = more
        self.states: dict[int, FileState] = {}
        self.next_fid = first_fid
        self._jobs(entries)
        self.batch = _Batch(scanner.batch_size, window_shape(scanner.cfg, scanner.variant))
        self.fill = _copy_window  # how a window gets into the batch; the decode pool's own with workers
        # Batches submitted and not yet fetched: a GPU backend stages batch n+1 while n computes
        # (depth 2); a CPU backend computes in submit (depth 1), so each is fetched at once.
        self.depth = max(1, scanner.backend.in_flight)
        self.in_flight: deque[tuple[list[Pending], object]] = deque()
        # A checked fast path: rows wait for a passing check (see mictag.runtime.engines.trust).
        self.gate = RowGate() if hasattr(scanner.backend, "final_check") else None
        self.finished = self.errors = 0
        self.t0, self.last_report = time.perf_counter(), 0.0

    def _jobs(self, entries: list[FileEntry]) -> list[tuple[int, str]]:
        """States for ``entries`` under new file ids; the (file id, path) jobs to decode them."""
        embeds = self.scanner.options.embeddings
        jobs = []
        for e in entries:
            self.states[self.next_fid] = FileState(e, {}, [], embeddings={} if embeds else None)
            jobs.append((self.next_fid, e.path))
            self.next_fid += 1
        return jobs

    def inline(self) -> Iterator[FileResult]:
        """Decode in this process, file after file."""
        sc = self.scanner
        for fid, e in zip(list(self.states), self.entries):
            if self.stopping():
                break
            for msg in sc.source(fid, e.path, sc.cfg, sc.variant, sc.hop, sc.options.chunk_seconds):
                yield from self.handle(msg)
                self.report()
        yield from self.flush(drain=True)

    def with_workers(self, pool=None) -> Iterator[FileResult]:
        """Decode in the worker processes of a :class:`DecodePool` (``pool``: a service's, kept open)."""
        from mictag.runtime.scan.decode_pool import DecodePool, PoolFailed, PoolIdle

        sc = self.scanner
        jobs = [(fid, st.entry.path) for fid, st in self.states.items()]
        own = pool is None
        if own:
            pool = DecodePool(jobs, sc.options.workers, sc.cfg.to_dict(), sc.variant, sc.hop, sc.options.chunk_seconds,
                              feed=sc.options.feed, source=None if sc.source is decode_file else sc.source)
        else:
            pool.add(jobs)
        self.fill = pool.fill  # copies the window out of its slot and gives the slot back
        try:
            while True:
                if self.more is not None:
                    arrived = self.more()
                    if arrived:
                        self.entries += arrived
                        pool.add(self._jobs(arrived))
                if not self.states:
                    break
                if self.stopping():
                    pool.stop_taking()
                    break
                msg = pool.get(timeout=0.2)
                if msg is None:
                    yield from self.flush(drain=True)  # nothing arriving: do not let a partial batch wait
                    self.report()
                    continue
                if isinstance(msg, PoolIdle):  # every worker has exited: score what is pending; the rest is lost
                    yield from self.flush(drain=True)
                    for fid in list(self.states):
                        yield from self.handle(Failed(fid, "no decoder processed this file"))
                    break
                if isinstance(msg, PoolFailed):
                    raise RuntimeError(f"the decode pool failed: {msg.reason}")
                yield from self.handle(msg)
                self.report()
            yield from self.flush(drain=True)
        finally:
            if own:
                pool.close()

    def handle(self, msg: DecodeMessage) -> Iterator[FileResult]:
        if isinstance(msg, Window):
            if self.batch.add(msg, self.fill):
                yield from self.flush()
        elif isinstance(msg, Done):
            self.states[msg.fid].done = msg
            yield from self.complete(msg.fid)
        elif isinstance(msg, Failed):
            st = self.states.pop(msg.fid, None)
            if st is not None:
                self.batch.drop(msg.fid)
                self.finished += 1
                self.errors += 1
                e = st.entry
                yield FileResult(e.rel, e.size, e.mtime, None, 0, "error", msg.reason)

    def flush(self, drain: bool = False) -> Iterator[FileResult]:
        """Submit the pending batch, then fetch until fewer than ``depth`` are in flight (all of them
        with ``drain``: when nothing else is arriving, and at the end)."""
        sc = self.scanner
        if len(self.batch):
            x, valid, items = self.batch.take()
            self.in_flight.append((items, sc.backend.submit(x, valid)))  # x may be reused now
            sc.engine_calls += 1
        while self.in_flight and (drain or len(self.in_flight) >= self.depth):
            items, submitted = self.in_flight.popleft()
            probs = submitted.result()
            embeddings = submitted.embeddings() if sc.options.embeddings else None
            for r, (item, row) in enumerate(zip(items, probs)):
                st = self.states.get(item.fid)
                if st is not None:  # a file that failed meanwhile keeps no scores
                    st.probs[item.index] = row
                    st.segments.append((item.index, item.seconds))
                    if embeddings is not None:
                        st.embeddings[item.index] = embeddings[r]
            sc.windows_scored += len(items)
            fids = {item.fid for item in items}
            if self.gate is not None:
                outcome = getattr(submitted, "outcome", None)
                yield from sc._release(self.gate.batch(fids, outcome))
                sc._after(outcome)
            for fid in fids:
                yield from self.complete(fid)

    def complete(self, fid: int) -> Iterator[FileResult]:
        st = self.states.get(fid)
        if st is None or st.done is None or len(st.probs) < st.done.windows:
            return
        del self.states[fid]
        self.finished += 1
        sc = self.scanner
        if self.gate is not None:
            if not self.gate.finished(fid, st, sc._near_threshold(st, fid in self.gate.fast_files)):
                return  # held until a check covers it, or scored again on the reference
            if fid in self.gate.fast_files:
                sc._fast_rows.append(st.entry)
        yield sc._result(st)

    def report(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.on_progress and (force or now - self.last_report > 0.25):
            self.last_report = now
            self.on_progress({"files_done": self.finished, "files_total": len(self.entries),
                              "windows": self.scanner.windows_scored, "errors": self.errors,
                              "elapsed": now - self.t0})
