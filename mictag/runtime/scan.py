"""``mictag scan``: a library in, one row per file out, resumable after any interruption.

Resume: the rows already written are kept for files whose path, size and mtime are unchanged and
whose model fingerprint (the model file's sha256 and the scoring options) matches; everything
else is (re)done. A torn last line left by a killed scan is cut first. ``retry_failed`` redoes
error rows only; a different model, other options or ``overwrite`` start fresh.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mictag.digest import file_digest
from mictag.errors import MictagError
from mictag.runtime.backends import open_backend
from mictag.runtime.discovery import discover
from mictag.runtime.pipeline import Scanner, ScanOptions
from mictag.runtime.results import (FORMATS, CsvWriter, JsonlWriter, SegmentsWriter, read_rows, rewrite, same_file,
                                    write_parquet)


@dataclass
class ScanSummary:
    files: int
    skipped: int  # already done by an earlier run
    statuses: dict
    windows: int
    seconds: float
    backend: str
    out: str

    @property
    def failed(self) -> int:
        return self.statuses.get("error", 0)

    @property
    def exit_code(self) -> int:
        """0 when every file was tagged, 1 when any file failed (see the error column)."""
        return 1 if self.failed else 0


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".mictag.json")


def run_scan(library: str | os.PathLike, out: str | os.PathLike, model: str | os.PathLike, backend: str = "auto",
             options: ScanOptions | None = None, fmt: str | None = None, include: tuple[str, ...] = (),
             exclude: tuple[str, ...] = (), overwrite: bool = False, retry_failed: bool = False,
             segments: str | os.PathLike | None = None,
             on_progress: Callable[[dict], None] | None = None,
             on_message: Callable[[str], None] | None = None,
             use_ray: bool = False, ray_address: str | None = None, ray_workers: int | None = None,
             precision: str | None = None) -> ScanSummary:
    """Scan ``library`` into ``out``; locally, or as a Ray Data pipeline with ``use_ray`` (joining
    the cluster at ``ray_address``, else starting a local Ray). Both write the same rows through
    the same resume journal. ``backend``/``precision`` as :func:`mictag.runtime.backends.open_backend`."""
    say = on_message or (lambda m: None)
    library, out = Path(library), Path(out)
    if not library.exists():
        raise MictagError(f"library {library} does not exist")
    fmt = fmt or (out.suffix.lstrip(".").lower() if out.suffix.lstrip(".").lower() in FORMATS else "csv")
    if fmt not in FORMATS:
        raise MictagError(f"unknown output format {fmt!r}; choose {', '.join(FORMATS)}")
    options = options or ScanOptions()
    options.segments = segments is not None
    if use_ray:
        from mictag.runtime.distributed import RayExecutor

        executor = RayExecutor(model, backend, options, ray_address, ray_workers, say, precision)
        scoring = executor.scoring
    else:
        engine = open_backend(model, backend, precision=precision, on_message=say)
        executor = Scanner(engine, options)
        scoring = executor.scoring
    labels = scoring.labels
    fingerprint = {"model_sha256": file_digest(model), "hop_frames": scoring.hop, "aggregate": options.aggregate,
                   "threshold": options.threshold, "labels": labels}
    journal = out.with_name(out.name + ".jsonl-journal") if fmt == "parquet" else out
    row_fmt = "jsonl" if fmt == "parquet" else fmt
    state_file = _state_path(out)
    fresh = overwrite or not journal.exists()
    if not fresh:
        try:
            previous = json.loads(state_file.read_text("utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous != fingerprint:
            say(f"{out} was written with another model or other options: starting it afresh")
            fresh = True
    entries = discover(library, include, exclude)
    kept: list[dict] = []
    if not fresh:
        by_path = {e.rel: e for e in entries}
        rows = read_rows(journal, row_fmt)
        done = set()
        for row in rows:
            e = by_path.get(row.get("path"))
            if (e is None or row["path"] in done or not same_file(row, e.size, e.mtime)
                    or (retry_failed and row.get("status") == "error")):
                continue
            kept.append(row)
            done.add(row["path"])
        if len(kept) != len(rows):
            rewrite(journal, row_fmt, labels, kept)
        entries = [e for e in entries if e.rel not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(fingerprint))
    writer = (CsvWriter if row_fmt == "csv" else JsonlWriter)(journal, labels, fresh)
    seg_writer = None
    if segments is not None:
        seg_path = Path(segments)
        if not fresh and seg_path.exists():  # keep only the timelines of rows that were kept
            kept_paths = {r["path"] for r in kept}
            lines = [l for l in read_rows(seg_path, "jsonl") if l.get("path") in kept_paths]
            with seg_path.open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(l, ensure_ascii=False) + "\n" for l in lines)
        seg_writer = SegmentsWriter(seg_path, labels, fresh or not seg_path.exists())
    statuses = Counter(r.get("status", "ok") for r in kept)
    t0 = time.perf_counter()
    try:
        for result in executor.scan(entries, on_progress):
            writer.write(result)  # the row first: a timeline without its row would be redone anyway
            if seg_writer:
                seg_writer.write(result)
            statuses[result.status] += 1
    finally:
        writer.close()
        if seg_writer:
            seg_writer.close()
    if fmt == "parquet":
        write_parquet(journal, out, labels)
    return ScanSummary(files=len(entries) + len(kept), skipped=len(kept), statuses=dict(statuses),
                       windows=executor.windows_scored, seconds=time.perf_counter() - t0, backend=executor.backend_name,
                       out=str(out))


def summary_line(s: ScanSummary) -> str:
    parts = ", ".join(f"{n} {k}" for k, n in sorted(s.statuses.items()))
    rate = (s.files - s.skipped) / s.seconds if s.seconds > 0 else 0.0
    wps = s.windows / s.seconds if s.seconds > 0 else 0.0
    return (f"{s.files} files ({parts}; {s.skipped} already done) in {s.seconds:.1f} s: {rate:.2f} files/s, "
            f"{wps:.2f} windows/s on {s.backend}; rows in {s.out}")

