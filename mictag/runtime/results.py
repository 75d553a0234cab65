"""Per-file results, their writers (CSV, JSONL, Parquet) and resuming from what a scan wrote.

One row per file: path (relative to the library), size_bytes, mtime, duration_s, windows, status,
error, one probability column per label, tags. Rows are written and flushed as files finish,
so the output itself is the resume journal; ``<out>.mictag.json`` beside it records the model
fingerprint and options the rows were made with. Parquet, which cannot grow row by row, is
journaled as ``<out>.jsonl-journal`` and written when the scan completes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mictag.errors import MictagError

STATUSES = ("ok", "partial", "empty", "error")
FORMATS = ("csv", "jsonl", "parquet")


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

    def record(self, labels: list[str]) -> dict:
        """A flat, JSON-able row."""
        row = {"path": self.path, "size_bytes": self.size_bytes, "mtime": self.mtime,
               "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
               "windows": self.windows, "status": self.status, "error": self.error}
        for i, label in enumerate(labels):
            row[label] = None if self.scores is None else round(float(self.scores[i]), 6)
        row["tags"] = ";".join(self.tags)
        return row


def columns(labels: list[str]) -> list[str]:
    return ["path", "size_bytes", "mtime", "duration_s", "windows", "status", "error", *labels, "tags"]


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


class Writer:
    """Appends rows, one flush per row."""

    def __init__(self, path: Path, labels: list[str], fresh: bool):
        self.path, self.labels = path, labels
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("w" if fresh else "a", encoding="utf-8", newline="")

    def write(self, result: FileResult) -> None:
        self._f.write(self.encode(result.record(self.labels)))
        self._f.flush()

    def encode(self, row: dict) -> str:
        raise NotImplementedError

    def close(self) -> None:
        self._f.close()


class CsvWriter(Writer):
    def __init__(self, path: Path, labels: list[str], fresh: bool):
        super().__init__(path, labels, fresh or not path.exists() or path.stat().st_size == 0)
        if self._f.tell() == 0:
            self._f.write(self._line(columns(labels)))
            self._f.flush()

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
    _repair_torn_tail(path)
    text = path.read_text("utf-8")
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    rows = []
    for line in text.splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line mangled by an outside hand: its file is simply redone
    return rows


def rewrite(path: Path, fmt: str, labels: list[str], rows: list[dict]) -> None:
    """Atomically replace the output with ``rows`` (used to drop rows that will be redone)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            w = csv.DictWriter(f, fieldnames=columns(labels), lineterminator="\n", extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        else:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_parquet(journal: Path, out: Path, labels: list[str]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MictagError("--format parquet needs pyarrow: pip install pyarrow") from None
    rows = read_rows(journal, "jsonl")
    table = pa.Table.from_pylist(rows, schema=None) if rows else pa.table({c: [] for c in columns(labels)})
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)


def same_file(row: dict, size: int, mtime: float) -> bool:
    try:
        return int(row["size_bytes"]) == size and math.isclose(float(row["mtime"]), mtime, abs_tol=1e-3)
    except (KeyError, TypeError, ValueError):
        return False


class SegmentsWriter:
    """``--segments``: one JSON line per file with each window's start/end seconds and scores."""

    def __init__(self, path: Path, labels: list[str], fresh: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not fresh:
            _repair_torn_tail(path)
        self.labels = labels
        self._f = path.open("w" if fresh else "a", encoding="utf-8")

    def write(self, result: FileResult) -> None:
        if result.segments:
            self._f.write(json.dumps({"path": result.path, "labels": self.labels, "segments": result.segments},
                                     ensure_ascii=False) + "\n")
            self._f.flush()

    def close(self) -> None:
        self._f.close()
