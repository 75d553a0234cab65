"""One row per file: path (relative to the library), size_bytes, mtime, duration_s, windows,
status, error, one probability column per label, tags, then the content key (content_sha256,
reused_from). Outputs of an older mictag end at ``tags``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

STATUSES = ("ok", "partial", "empty", "error")


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
    content_sha256: str = ""  # the scored bytes' digest (see mictag.runtime.scan.content), where known
    reused_from: str = ""  # the file whose row of the same bytes this is, when not scored again
    embedding: np.ndarray | None = None  # the file's vector (mictag.output.embeddings), where asked

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

Stat = tuple[int, float]  # a file's size in bytes and mtime


def row_stat(row: dict) -> Stat | None:
    """The size and mtime a row records, or None where they are missing or not numbers."""
    try:
        return int(row["size_bytes"]), float(row["mtime"])
    except (KeyError, TypeError, ValueError):
        return None


def same_stat(a: Stat, b: Stat) -> bool:
    """The same size, and mtimes within a millisecond (rel_tol=0 because math.isclose's default 1e-9
    of an mtime near 1.8e9 s would let through almost two seconds)."""
    return a[0] == b[0] and math.isclose(a[1], b[1], rel_tol=0.0, abs_tol=1e-3)


def same_file(row: dict, size: int, mtime: float) -> bool:
    """Whether a row was made from the file as it is now (its size and mtime)."""
    held = row_stat(row)
    return held is not None and same_stat(held, (size, mtime))


def last_per_path(rows: list[dict]) -> list[dict]:
    """One row (or line) per path, the last one written: a file scored again comes after what its
    new row replaces."""
    last = {r.get("path"): r for r in rows}
    return [r for r in rows if last.get(r.get("path")) is r]
