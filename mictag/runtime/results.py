"""Per-file results, their writers (CSV, JSONL, Parquet) and resuming from what a scan wrote.

One row per file: path (relative to the library), size_bytes, mtime, duration_s, windows, status,
error, one probability column per label, tags. Rows are written as files finish, each with one
unbuffered write (so a failure leaves at most one torn line, which the next run cuts) and synced
to disk at most once a second and at the end, so the output itself is the resume journal;
``<out>.mictag.json`` beside it records the model fingerprint and options the rows were made
with. Parquet, which cannot grow row by row, is journaled as ``<out>.jsonl-journal`` and written
when the scan completes. A write that fails (no space, quota, I/O error, read-only or vanished
folder) raises :class:`OutputError`, one sentence saying what failed, where and what to do.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mictag.errors import MictagError

STATUSES = ("ok", "partial", "empty", "error")
FORMATS = ("csv", "jsonl", "parquet")
SYNC_SECONDS = 1.0  # the journal reaches the disk at least this often (and at the end)


class OutputError(MictagError):
    """The scan's output could not be written."""


_WRITE_FAILURES = {
    errno.ENOSPC: ("there is no space left on its device", "free some space"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or raise the quota"),
    errno.EIO: ("the device reported an I/O error", "check the disk"),
    errno.EROFS: ("its file system is read-only", "write --out somewhere writable"),
    errno.ENOENT: ("it or its folder was deleted or moved while the scan ran", "recreate the folder"),
    errno.ESTALE: ("its network file handle went stale", "check the mount"),
    errno.EACCES: ("permission is denied", "make it writable or write --out elsewhere"),
    errno.EPERM: ("permission is denied", "make it writable or write --out elsewhere"),
}


@contextlib.contextmanager
def writing(path: str | os.PathLike):
    """Turn an OSError while writing ``path`` into one OutputError sentence."""
    try:
        yield
    except OSError as exc:
        what, todo = _WRITE_FAILURES.get(exc.errno, (exc.strerror or str(exc), "fix that"))
        raise OutputError(f"cannot write {path}: {what} (errno {exc.errno}); {todo}, then rerun the same "
                          f"command: it keeps the rows already written and does the rest") from None


def write_text_synced(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        try:
            with tmp.open("w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@dataclass
class FileResult:
    path: str
    size_bytes: int = 0
    mtime: float = 0.0
    duration_s: float | None = None
    windows: int = 0
    status: str = "ok"
    error: str = ""
    scores: np.ndarray | None = None
    tags: list[str] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)
    content_sha256: str = ""  # the scored bytes' digest (see mictag.runtime.content), where known
    reused_from: str = ""  # the file whose row of the same bytes this is, when not scored again

    def record(self, labels: list[str]) -> dict:
        """A flat, JSON-able row."""
        row = {"path": self.path, "size_bytes": self.size_bytes, "mtime": self.mtime,
               "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
               "windows": self.windows, "status": self.status, "error": self.error}
        for i, label in enumerate(labels):
            row[label] = None if self.scores is None else round(float(self.scores[i]), 6)
        row["tags"] = ";".join(self.tags)
        row["content_sha256"] = self.content_sha256
        row["reused_from"] = self.reused_from
        return row


HEAD = ("path", "size_bytes", "mtime", "duration_s", "windows", "status", "error")  # then one column per label
TAIL = ("tags", "content_sha256", "reused_from")  # outputs of mictag before content keys end at "tags"


def columns(labels: list[str]) -> list[str]:
    return [*HEAD, *labels, *TAIL]


def labels_of(header: list[str]) -> list[str] | None:
    """The label columns of an output's header, or None when it is not a scan output's (this
    mictag's, or one written before rows had content keys, which ends at ``tags``)."""
    if tuple(header[:len(HEAD)]) != HEAD:
        return None
    for tail in (TAIL, TAIL[:1]):
        if len(header) > len(HEAD) + len(tail) and tuple(header[-len(tail):]) == tail:
            return header[len(HEAD):-len(tail)]
    return None


def header(path: Path) -> list[str] | None:
    """The column names of a CSV output (None for an empty or unreadable file)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _repair_torn_tail(path: Path) -> None:
    """Cut a last line left half-written by a killed scan."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        f.seek(max(0, end - 1))
        if f.read(1) == b"\n":
            return
        # Walk back to the last newline (rows are short: read the tail in blocks).
        pos = end
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            block = f.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                f.truncate(pos - step + nl + 1)
                return
            pos -= step
        f.truncate(0)


class _Journal:
    """An append-only text file written with one unbuffered write per line, synced at most once
    per ``SYNC_SECONDS`` and when closed."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if fresh else 0)
            self._fd: int | None = os.open(path, flags, 0o644)
        self._synced = time.monotonic()

    @property
    def empty(self) -> bool:
        return os.fstat(self._fd).st_size == 0

    def append(self, text: str) -> None:
        with writing(self.path):
            _write_all(self._fd, text.encode("utf-8"))
            if time.monotonic() - self._synced >= SYNC_SECONDS:
                self._check_still_there()
                os.fsync(self._fd)
                self._synced = time.monotonic()

    def _check_still_there(self) -> None:
        """Rows written to a file that was deleted or moved away would be lost without an error."""
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            raise OSError(errno.ENOENT, "the output was deleted or its folder removed") from None
        mine = os.fstat(self._fd)
        if (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino):
            raise OSError(errno.ENOENT, "the output was replaced by another file")

    def close(self, quiet: bool = False) -> None:
        """Sync and close; ``quiet`` (another error is already on its way) swallows a failure."""
        if self._fd is None:
            return
        try:
            with writing(self.path):
                try:
                    self._check_still_there()
                    os.fsync(self._fd)
                finally:
                    os.close(self._fd)
                    self._fd = None
        except OutputError:
            if not quiet:
                raise


class Writer:
    """Appends rows to the journal as files finish."""

    def __init__(self, path: Path, labels: list[str], fresh: bool):
        self.path, self.labels = path, labels
        self._journal = _Journal(path, fresh)

    def write(self, result: FileResult) -> None:
        self.write_row(result.record(self.labels))

    def write_row(self, row: dict) -> None:
        """A row as :meth:`FileResult.record` makes it (or read back from an output)."""
        self._journal.append(self.encode({c: row.get(c) for c in columns(self.labels)}))

    def encode(self, row: dict) -> str:
        raise NotImplementedError

    def close(self, quiet: bool = False) -> None:
        self._journal.close(quiet)


class CsvWriter(Writer):
    def __init__(self, path: Path, labels: list[str], fresh: bool):
        super().__init__(path, labels, fresh or not path.exists() or path.stat().st_size == 0)
        if self._journal.empty:
            self._journal.append(self._line(columns(labels)))

    @staticmethod
    def _line(values) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue()

    def encode(self, row: dict) -> str:
        return self._line(["" if v is None else v for v in row.values()])


class JsonlWriter(Writer):
    def encode(self, row: dict) -> str:
        return json.dumps(row, ensure_ascii=False) + "\n"


def read_rows(path: Path, fmt: str) -> list[dict]:
    """Rows already written (after repairing a torn last line)."""
    if not path.is_file():
        return []
    with writing(path):
        _repair_torn_tail(path)
    text = path.read_text("utf-8")
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    rows = []
    for line in text.split("\n"):  # not splitlines(): U+2028 and friends may sit raw inside a JSON string
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line mangled by an outside hand: its file is simply redone
    return rows


def rewrite(path: Path, fmt: str, labels: list[str], rows: list[dict]) -> None:
    """Atomically replace the output with ``rows`` (used to drop rows that will be redone)."""
    buf = io.StringIO()
    if fmt == "csv":
        w = csv.DictWriter(buf, fieldnames=columns(labels), lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    else:
        for row in rows:
            buf.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_text_synced(path, buf.getvalue())


def write_parquet(journal: Path, out: Path, labels: list[str]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MictagError("--format parquet needs pyarrow: pip install pyarrow") from None
    rows = read_rows(journal, "jsonl")
    table = pa.Table.from_pylist(rows, schema=None) if rows else pa.table({c: [] for c in columns(labels)})
    tmp = out.with_name(out.name + ".tmp")
    with writing(out):
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, out)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


def same_file(row: dict, size: int, mtime: float) -> bool:
    try:
        return int(row["size_bytes"]) == size and math.isclose(float(row["mtime"]), mtime, rel_tol=0.0, abs_tol=1e-3)
    except (KeyError, TypeError, ValueError):
        return False


class SegmentsWriter:
    """``--segments``: one JSON line per file with each window's start/end seconds and scores."""

    def __init__(self, path: Path, labels: list[str], fresh: bool):
        if not fresh:
            with writing(path):
                _repair_torn_tail(path)
        self.labels, self.path = labels, path
        self._journal = _Journal(path, fresh)

    def write(self, result: FileResult) -> None:
        if result.segments:
            self.write_line({"path": result.path, "labels": self.labels, "segments": result.segments})

    def write_line(self, line: dict) -> None:
        self._journal.append(json.dumps(line, ensure_ascii=False) + "\n")

    def close(self, quiet: bool = False) -> None:
        self._journal.close(quiet)
