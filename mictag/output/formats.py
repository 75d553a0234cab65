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
    """Write a Parquet output from its journal (the rows the scan appended as JSON lines)."""
    rows = read_rows(journal, "jsonl")
    write_parquet_rows(out, rows, labels=labels)


def write_parquet_rows(out: Path, rows: list[dict], schema=None, labels: list[str] | None = None) -> None:
    """Replace ``out`` with ``rows`` as Parquet, atomically and durably (``schema``: the table's
    own when it is rewritten; with no rows, the columns of ``labels``)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise MictagError("--format parquet needs pyarrow: pip install pyarrow") from None
    if rows or schema is not None:
        table = pa.Table.from_pylist(rows, schema=schema)
    else:
        table = pa.table({c: [] for c in columns(labels or [])})
    write_parquet_table(out, table)


def write_parquet_table(out: Path, table, **options) -> None:
    """Replace ``out`` with the pyarrow ``table``, atomically and durably (temporary file, fsync,
    rename); ``options`` go to ``pyarrow.parquet.write_table``."""
    import pyarrow.parquet as pq

    tmp = out.with_name(out.name + ".tmp")
    with writing(out):
        try:
            pq.write_table(table, tmp, **options)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, out)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


def read_parquet(path: Path) -> tuple[list[dict], object]:
    """A Parquet output's rows and its schema."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MictagError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise MictagError(f"cannot read {path} as Parquet ({exc}): give the output file of `mictag scan`") from None
    return table.to_pylist(), table.schema


def format_of(path: Path) -> str:
    """csv, jsonl or parquet: from the suffix, else from the first bytes (``mictag scan --format X
    --out tags.txt`` writes X whatever the suffix). An OSError if it cannot be read."""
    suffix = path.suffix.lstrip(".").lower()
    if suffix in FORMATS:
        return suffix
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PAR1"):
        return "parquet"
    return "jsonl" if head.lstrip().startswith(b"{") else "csv"


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


WRITERS: dict[str, type[Writer]] = {"csv": CsvWriter, "jsonl": JsonlWriter}  # the formats that grow row by row
