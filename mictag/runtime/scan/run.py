"""``mictag scan``: a library in, one row per file out, resumable after any interruption.

Resume: the rows already written are kept for files whose path, size and mtime are unchanged and
whose model fingerprint (the model file's sha256 and the scoring options) matches; everything
else is (re)done. A torn last line left by a killed scan is cut first. ``retry_failed`` redoes
error rows only; a different model, other options or ``overwrite`` start fresh.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from mictag.digest import file_digest
from mictag.errors import MictagError
from mictag.output.embeddings import EmbeddingsWriter, read_journal, require_pyarrow, rewrite_journal, write_table
from mictag.output.files import parquet_journal_path, read_state, redo_path, state_path
from mictag.output.formats import (FORMATS, WRITERS, SegmentsWriter, Writer, header, read_rows, rewrite,
                                   write_parquet)
from mictag.output.journal import write_text_synced, writing
from mictag.output.lock import OutputLock
from mictag.output.rows import FileResult, columns, last_per_path, same_file
from mictag.runtime.engines.open import open_backend
from mictag.runtime.scan.content import REUSABLE, BackgroundHasher, file_sha256, plan_reuse, reused_row
from mictag.runtime.scan.discovery import Skipped, discover, special_kind
from mictag.runtime.scan.pipeline import Scanner, ScanOptions


@dataclass
class ScanSummary:
    files: int
    skipped: int  # already done by an earlier run
    statuses: dict
    windows: int
    seconds: float
    backend: str
    out: str
    interrupted: bool = False  # stopped on request: some files are left for the next run
    notes: tuple[str, ...] = ()  # what a checked fast path did (checks, rescoring), a line each
    special: tuple[Skipped, ...] = ()  # what the listing passed over without opening it
    reused: int = 0  # files given the row of the same bytes scored earlier (moved, renamed, duplicates)

    @property
    def failed(self) -> int:
        return self.statuses.get("error", 0)

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    @property
    def exit_code(self) -> int:
        """0 when every file was tagged, 1 when any file failed (see the error column)."""
        return 1 if self.failed else 0


def _interruptible(work: Callable, should_stop: Callable[[], bool]):
    """``work()`` in a thread of its own, so that a stop request is answered within a fraction of a
    second even while it waits on the file system (a folder on a mount that stopped answering)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # raised again here, in the scan's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="mictag-listing", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if should_stop() and thread.is_alive():
            raise KeyboardInterrupt  # nothing written yet: the CLI says so and exits with the signal's code
    if "error" in box:
        raise box["error"]
    return box["value"]


def _write_lines(path: Path, lines: list[dict]) -> None:
    """Replace a JSON-lines file (the segments) with ``lines``, atomically."""
    write_text_synced(path, "".join(json.dumps(l, ensure_ascii=False) + "\n" for l in lines))


@dataclass(frozen=True)
class ScanRequest:
    """Everything a scan is asked: what to scan, into what, with which model, engine and options.
    ``backend``/``precision`` as :func:`mictag.runtime.engines.open.open_backend`; ``use_ray`` runs it
    as a Ray Data pipeline (joining the cluster at ``ray_address``, else starting a local Ray with
    ``ray_workers``); ``wait``: wait for another scan writing ``out`` instead of refusing."""

    library: str | os.PathLike
    out: str | os.PathLike
    model: str | os.PathLike
    backend: str = "auto"
    options: ScanOptions = field(default_factory=ScanOptions)
    fmt: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overwrite: bool = False
    retry_failed: bool = False
    segments: str | os.PathLike | None = None
    embeddings: str | os.PathLike | None = None  # the embeddings table (mictag.output.embeddings)
    use_ray: bool = False
    ray_address: str | None = None
    ray_workers: int | None = None
    precision: str | None = None
    wait: bool = False
    hold: frozenset[str] = frozenset()  # listed files not to scan now (still being written: mictag watch)


def run_scan(request: ScanRequest, on_progress: Callable[[dict], None] | None = None,
             on_message: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
             counts: dict | None = None, engine=None, locked: bool = False) -> ScanSummary:
    """Scan ``request.library`` into ``request.out``, locally or on Ray: both write the same rows
    through the same resume journal.

    One scan writes an output at a time (:mod:`mictag.output.lock`): another one on the same
    ``out`` raises OutputBusy, or with ``wait`` waits for it. Once ``should_stop()`` is true the scan
    starts no new file and returns what finished (``interrupted``). ``counts`` (a dict), if given,
    holds ``done`` and ``total`` as the scan goes, for a caller that is stopped at once. ``engine``:
    a backend already open on ``request.model`` (a caller that scans again and again: mictag watch);
    ``locked``: the caller holds the output's lock already."""
    say = on_message or (lambda m: None)
    library, out = Path(request.library), Path(request.out)
    if not library.exists():
        raise MictagError(f"library {library} does not exist")
    kind = None if library.is_dir() else special_kind(library.stat().st_mode)
    if kind:
        raise MictagError(f"library {library} is {kind}, not a folder or an audio file")
    fmt = request.fmt or (out.suffix.lstrip(".").lower() if out.suffix.lstrip(".").lower() in FORMATS else "csv")
    if fmt not in FORMATS:
        raise MictagError(f"unknown output format {fmt!r}; choose {', '.join(FORMATS)}")
    options = replace(request.options, segments=request.segments is not None,  # the caller's stay as they were
                      embeddings=request.embeddings is not None)
    if request.embeddings is not None:
        require_pyarrow()
        if Path(request.embeddings).resolve() == out.resolve():
            raise MictagError(f"--embeddings {request.embeddings} is the tags output itself: give it a name of its own")
    counts = counts if counts is not None else {}
    with ExitStack() as held:
        if not locked:
            with writing(out):
                out.parent.mkdir(parents=True, exist_ok=True)
                held.enter_context(OutputLock(out, request.wait, say))
        return _scan_locked(request, library, out, options, fmt, on_progress, say, should_stop or (lambda: False),
                            counts, engine)


def _scan_locked(request: ScanRequest, library: Path, out: Path, options: ScanOptions, fmt: str, on_progress, say,
                 should_stop, counts, engine=None) -> ScanSummary:
    """The scan, once its output is locked (``library``, ``out``, ``options`` and ``fmt``: the
    request's, resolved)."""
    model, backend, precision, segments = request.model, request.backend, request.precision, request.segments
    if request.use_ray:
        from mictag.runtime.scan.distributed import RayExecutor

        executor = RayExecutor(model, backend, options, request.ray_address, request.ray_workers, say, precision,
                               library)
        scoring = executor.scoring
    else:
        if engine is None:
            engine = open_backend(model, backend, precision=precision, on_message=say, library=library)
        executor = Scanner(engine, options)
        scoring = executor.scoring
    labels = scoring.labels
    fingerprint = {"model_sha256": file_digest(model), "hop_frames": scoring.hop, "aggregate": options.aggregate,
                   "threshold": options.threshold, "labels": labels}
    journal = parquet_journal_path(out) if fmt == "parquet" else out
    row_fmt = "jsonl" if fmt == "parquet" else fmt
    state_file = state_path(out)
    fresh = request.overwrite or not journal.exists()
    if not fresh:
        previous = read_state(out)
        if previous is None or {k: previous.get(k) for k in fingerprint} != fingerprint:
            say(f"{out} was written with another model or other options: starting it afresh")
            fresh = True
    special: list[Skipped] = []
    entries = _interruptible(lambda: discover(library, request.include, request.exclude, skipped=special), should_stop)
    kept: list[dict] = []
    dropped: list[dict] = []  # rows of files gone or changed: their bytes may be under another name now
    vector_lines: list[dict] = []  # the embeddings journal's lines of this model, one per path (on resume)
    redo_file = redo_path(out)
    if not fresh:
        by_path = {e.rel: e for e in entries}
        rows = read_rows(journal, row_fmt)
        try:  # rows a failed fast path wrote, not yet replaced when the last scan ended
            redo = set(json.loads(redo_file.read_text("utf-8")))
        except (OSError, ValueError, TypeError):
            redo = set()
        done = set()
        for row in last_per_path(rows):
            e = by_path.get(row.get("path"))
            if (e is None or row["path"] in redo or not same_file(row, e.size, e.mtime)
                    or (request.retry_failed and row.get("status") == "error")):
                if row["path"] not in redo:
                    dropped.append(row)
                continue
            kept.append(row)
            done.add(row["path"])
        if request.embeddings is not None:  # a file scored without its vector is scored again
            vector_lines = [l for l in last_per_path(read_journal(request.embeddings))
                            if l.get("model_sha256") == fingerprint["model_sha256"]]
            with_vector = {l["path"] for l in vector_lines}
            lacking = [r for r in kept if r["path"] not in with_vector and _has_windows(r)]
            if lacking:
                dropped += lacking
                kept = [r for r in kept if r["path"] in with_vector or not _has_windows(r)]
                done -= {r["path"] for r in lacking}
        if len(kept) != len(rows) or (row_fmt == "csv" and header(journal) != columns(labels)):
            rewrite(journal, row_fmt, labels, kept)  # (an older mictag's table gains the new columns)
        entries = [e for e in entries if e.rel not in done]
    if request.hold:
        entries = [e for e in entries if e.rel not in request.hold]
    with writing(redo_file):
        redo_file.unlink(missing_ok=True)  # its rows are gone from the output now
    # Beside the fingerprint, for readers of the output (report, write-tags): which model, and the
    # thresholds its tags were cut at. Not compared on resume: the sha256 already decides.
    about = {"model_name": Path(model).name, "thresholds": [float(t) for t in scoring.thresholds]}
    write_text_synced(state_file, json.dumps({**fingerprint, **about}))
    writer = WRITERS[row_fmt](journal, labels, fresh)
    seg_writer = None
    timelines: dict[str, dict] = {}  # path -> its segments line, for files whose rows may be reused
    if segments is not None:
        seg_path = Path(segments)
        if not fresh and seg_path.exists():  # keep only the timelines of rows that were kept
            timelines = {l.get("path"): l for l in read_rows(seg_path, "jsonl")}
            kept_paths = {r["path"] for r in kept}
            _write_lines(seg_path, [l for p, l in timelines.items() if p in kept_paths])
        seg_writer = SegmentsWriter(seg_path, labels, fresh or not seg_path.exists())
    emb_writer = None
    vectors: dict[str, object] = {}  # path -> its vector, for files whose rows may be reused
    if request.embeddings is not None:
        emb_path = Path(request.embeddings)
        if not fresh:  # keep only the vectors of rows that were kept (and of this model)
            vectors = {l["path"]: l["embedding"] for l in vector_lines}
            kept_paths = {r["path"] for r in kept}
            rewrite_journal(emb_path, [l for l in vector_lines if l["path"] in kept_paths])
        emb_writer = EmbeddingsWriter(emb_path, fresh)
    # Files whose bytes were scored already (moved, renamed, duplicates) get that row again.
    known = kept + dropped
    if seg_writer is not None:  # a reused row needs its timeline too
        known = [r for r in known if r.get("path") in timelines]
    if emb_writer is not None:  # and its vector
        known = [r for r in known if r.get("path") in vectors or not _has_windows(r)]
    plan = _interruptible(lambda: plan_reuse(entries, known), should_stop)  # reads files: may hang on a dead mount
    counts.update(done=len(kept), total=len(kept) + len(entries))
    sink = _RowSink(writer, seg_writer, labels, redo_file, Counter(r.get("status", "ok") for r in kept), counts,
                    emb_writer, fingerprint["model_sha256"])
    executor.on_replace = sink.replace
    t0 = time.perf_counter()
    failing = True
    hasher = BackgroundHasher(plan.scan)
    listed = {e.rel: e for e in plan.scan}  # each file as it was listed (and hashed)
    reused = 0
    try:
        for entry, row in plan.reused:
            sink.write(reused_row(row, entry, row["path"]), timelines.get(row["path"]), vectors.get(row["path"]))
            reused += 1
        rescan: list = []
        for result in executor.scan(plan.scan, on_progress, should_stop):
            entry = listed.get(result.path)
            path = entry.path if entry else ""
            digest = plan.digests.get(path) or hasher.digest(path)
            if not digest and entry and result.path in sink.replaced:  # a redone file: its digest was handed out
                digest = file_sha256(entry.path, entry.size, entry.mtime)
            if result.status in REUSABLE and digest:
                result.content_sha256 = digest
            record = result.record(labels)
            sink.write(record, sink.timeline(result), result.embedding)
            for copy in plan.copies.get(path, ()):
                if result.content_sha256:  # under the copy's name
                    sink.write(reused_row(record, copy, result.path), sink.timeline(result), result.embedding)
                    reused += 1
                else:
                    rescan.append(copy)  # its twin failed: score it on its own
        if rescan and not should_stop():
            for result in executor.scan(rescan, on_progress, should_stop):
                sink.write(result.record(labels), sink.timeline(result), result.embedding)
        failing = False
    finally:
        hasher.close()
        sink.close(quiet=failing)
    statuses = sink.statuses
    interrupted = should_stop() and sum(statuses.values()) - sink.rewritten < len(kept) + len(entries)
    if sink.replaced and not interrupted:  # the replaced rows go: one row per file again, then the redo list
        final = last_per_path(read_rows(journal, row_fmt))
        rewrite(journal, row_fmt, labels, final)
        statuses = Counter(r.get("status") or "ok" for r in final)
        if seg_writer is not None:
            _write_lines(seg_writer.path, last_per_path(read_rows(seg_writer.path, "jsonl")))
        with writing(redo_file):
            redo_file.unlink(missing_ok=True)
    if fmt == "parquet" and not interrupted:
        write_parquet(journal, out, labels)
    if emb_writer is not None:  # finished or not: the table holds the files done so far
        lines = last_per_path(read_journal(emb_writer.out))
        if sink.replaced and not interrupted:
            rewrite_journal(emb_writer.out, lines)
        write_table(emb_writer.out, lines, about={"model": Path(model).resolve(), "library": library.resolve(),
                                                  "tags": out.resolve()})
    return ScanSummary(files=len(entries) + len(kept), skipped=len(kept), statuses=dict(statuses), reused=reused,
                       windows=executor.windows_scored, seconds=time.perf_counter() - t0, backend=executor.backend_name,
                       out=str(out), interrupted=interrupted, notes=tuple(getattr(executor, "notes", ())),
                       special=tuple(special))


class _RowSink:
    """Where a scan's rows and timelines go, counted: the output's writer (and the segments'), the
    statuses so far, and the rows a fast path's failed check will have written twice."""

    def __init__(self, writer: Writer, seg_writer: SegmentsWriter | None, labels: list[str], redo_file: Path,
                 statuses: Counter, counts: dict, emb_writer: EmbeddingsWriter | None = None, model_sha256: str = ""):
        self.writer, self.seg_writer, self.labels, self.redo_file = writer, seg_writer, labels, redo_file
        self.emb_writer, self.model_sha256 = emb_writer, model_sha256
        self.statuses, self.counts = statuses, counts
        self.replaced: set[str] = set()  # paths whose rows a failed check made the scan write again
        self.rewritten = 0  # rows written again for them

    def replace(self, paths: list[str]) -> None:
        """A fast path failed a check: rows it already wrote will be written again (redo list first)."""
        self.replaced.update(paths)
        write_text_synced(self.redo_file, json.dumps(sorted(self.replaced)))

    def timeline(self, result: FileResult) -> dict | None:
        return {"path": result.path, "labels": self.labels, "segments": result.segments} if result.segments else None

    def write(self, row: dict, line: dict | None, vector=None) -> None:
        """A row, its timeline and its vector (each where there is one)."""
        self.writer.write_row(row)  # the row first: a timeline or vector without its row would be redone anyway
        if self.seg_writer and line is not None:
            self.seg_writer.write_line({**line, "path": row["path"]})
        if self.emb_writer and vector is not None:
            self.emb_writer.write(row, vector, self.model_sha256)
        self.statuses[row.get("status") or "ok"] += 1
        if row["path"] in self.replaced:
            self.rewritten += 1  # a second row for the file: it replaces the first
        else:
            self.counts["done"] += 1

    def close(self, quiet: bool) -> None:
        self.writer.close(quiet=quiet)
        if self.seg_writer:
            self.seg_writer.close(quiet=quiet)
        if self.emb_writer:
            self.emb_writer.close(quiet=quiet)


def _has_windows(row: dict) -> bool:
    """Whether a row's file had windows scored (and so has a vector)."""
    try:
        return int(row.get("windows") or 0) > 0
    except (TypeError, ValueError):
        return False


def special_line(special: tuple[Skipped, ...], shown: int = 5) -> str:
    """One line on what the listing passed over (named pipes, sockets, devices, unreadable folders)."""
    if not special:
        return ""
    named = "; ".join(f"{s.rel}: {s.why}" for s in special[:shown])
    more = f"; and {len(special) - shown} more" if len(special) > shown else ""
    what = "items that are not audio files and were" if len(special) > 1 else "item that is not an audio file and was"
    return f"passed over {len(special)} {what} not opened: {named}{more}"


def interrupted_line(done: int, total: int) -> str:
    return f"interrupted: {done} of {total} files done; rerun the same command to resume"


def summary_line(s: ScanSummary) -> str:
    if s.interrupted:
        return interrupted_line(s.done, s.files)
    parts = ", ".join(f"{n} {k}" for k, n in sorted(s.statuses.items()))
    if s.reused:
        parts += f"; {s.reused} reused: the same bytes scored before under another name"
    rate = (s.files - s.skipped) / s.seconds if s.seconds > 0 else 0.0
    wps = s.windows / s.seconds if s.seconds > 0 else 0.0
    return (f"{s.files} files ({parts}; {s.skipped} already done) in {s.seconds:.1f} s: {rate:.2f} files/s, "
            f"{wps:.2f} windows/s on {s.backend}; rows in {s.out}")

