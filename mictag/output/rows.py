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

def same_file(row: dict, size: int, mtime: float) -> bool:
    try:
        return int(row["size_bytes"]) == size and math.isclose(float(row["mtime"]), mtime, rel_tol=0.0, abs_tol=1e-3)
    except (KeyError, TypeError, ValueError):
        return False
