"""``mictag report``: one self-contained HTML page that shows a scan's library at a glance.

:func:`make_report` reads TAGS (and optionally the segments file), aggregates in
:mod:`mictag.report.data` and renders in :mod:`mictag.report.html`; no torch, no pandas, no
plotting library, nothing fetched when the page is opened. Importing this package (as the CLI
does for ``mictag --help``) imports neither numpy nor those modules: they load on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TIMELINES = 2000  # by default, at most this many files' timelines are embedded
SIMILAR = 1000  # by default, the nearest files of at most this many files are embedded
SIMILAR_K = 10  # nearest files per file

__all__ = ["SIMILAR", "SIMILAR_K", "TIMELINES", "ReportError", "ReportSummary", "build", "make_report", "render", "write"]


@dataclass
class ReportSummary:
    """What :func:`make_report` wrote."""

    out: str
    bytes: int
    files: int
    timelines: int
    problems: int
    seconds: float


def make_report(tags: str | os.PathLike, out: str | os.PathLike, segments: str | os.PathLike | None = None,
                fmt: str = "auto", timelines: int = TIMELINES, seed: int = 0,
                embeddings: str | os.PathLike | None = None, similar: int = SIMILAR) -> ReportSummary:
    """Write the report of scan output ``tags`` (csv/jsonl/parquet) to ``out``; raises ReportError.
    ``embeddings``: the scan's embeddings table, for the "similar files" panel."""
    import time

    from mictag.report.data import build
    from mictag.report.html import write

    t0 = time.perf_counter()
    data = build(tags, segments, fmt, timelines, seed, embeddings, similar)
    size = write(data, out)
    return ReportSummary(out=str(out), bytes=size, files=data["summary"]["files"],
                         timelines=len(data["timelines"]["files"]), problems=len(data["problems"]["name"]),
                         seconds=time.perf_counter() - t0)


def __getattr__(name: str):
    # Lazy, as in mictag/__init__.py: the CLI imports this package to build its command list.
    if name in ("ReportError", "build"):
        from mictag.report import data

        return getattr(data, name)
    if name in ("render", "write"):
        from mictag.report import html

        return getattr(html, name)
    raise AttributeError(f"module 'mictag.report' has no attribute {name!r}")
