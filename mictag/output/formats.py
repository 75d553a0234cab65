"""The output's formats: CSV and JSON lines grow row by row (:class:`CsvWriter`,
:class:`JsonlWriter`); Parquet, which cannot, is journaled as JSON lines and written once the scan
completes (:func:`write_parquet`); the ``--segments`` timelines are JSON lines too. Reading back
(after cutting a torn last line), rewriting atomically, and telling a format from its name or its
first bytes (:func:`format_of`) are here as well, for the scan and for the tools that read its
output."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

from mictag.errors import MictagError
from mictag.output.journal import Journal, repair_torn_tail, write_text_synced, writing
from mictag.output.rows import FileResult, columns

FORMATS = ("csv", "jsonl", "parquet")


def header(path: Path) -> list[str] | None:
    """The column names of a CSV output (None for an empty or unreadable file)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None

class Writer:
    """Appends rows to the journal as files finish."""

    def __init__(self, path: Path, labels: list[str], fresh: bool):
        self.path, self.labels = path, labels
        self._journal = Journal(path, fresh)

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
        repair_torn_tail(path)
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

class SegmentsWriter:
    """``--segments``: one JSON line per file with each window's start/end seconds and scores."""

    def __init__(self, path: Path, labels: list[str], fresh: bool):
        if not fresh:
            with writing(path):
                repair_torn_tail(path)
        self.labels, self.path = labels, path
        self._journal = Journal(path, fresh)

    def write(self, result: FileResult) -> None:
        if result.segments:
            self.write_line({"path": result.path, "labels": self.labels, "segments": result.segments})

    def write_line(self, line: dict) -> None:
        self._journal.append(json.dumps(line, ensure_ascii=False) + "\n")

    def close(self, quiet: bool = False) -> None:
        self._journal.close(quiet)
