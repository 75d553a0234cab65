"""What a report shows, aggregated in Python from a scan's rows (and, optionally, its segments).

The HTML embeds only aggregates and a bounded sample, so a 100,000-file library gives a report
of a few MB that opens at once: per-label counts, the co-occurrence matrix, score histograms over
``BINS`` fixed bins, every problem row (paths compressed into folder + name), and the timelines of
at most ``TIMELINES`` files drawn uniformly at random, each at most ``MAX_COLUMNS`` time columns
and ``TIMELINE_CELLS`` label-by-column cells in all, scores quantised to one byte.

TAGS is only read, never repaired: a torn last line (a scan still running, or killed) is skipped
and counted. Anything that is not a scan's output raises :class:`ReportError`, one sentence
naming the file and what is wrong with it.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from mictag.errors import MictagError
from mictag.report import SIMILAR, SIMILAR_K, TIMELINES
from mictag.output.files import read_state
from mictag.output.formats import FORMATS, format_of
from mictag.output.rows import HEAD, STATUSES, labels_of

FIXED = HEAD  # the head of mictag.output.rows.columns
BINS = 50  # score histogram bins over [0, 1]
MAX_COLUMNS = 400  # a timeline wider than this is max-pooled: a report is ~1,000 px wide anyway
TIMELINE_CELLS = 1_000_000  # labels x columns over all timelines: ~1.3 MB once base64-encoded
QUANT = 255  # scores are embedded as round(score * QUANT), one byte each


class ReportError(MictagError):
    """TAGS (or the segments file) is missing, unreadable or not what a scan writes."""


@dataclass
class Table:
    """A scan's rows, column-wise. Scores of unscored rows (empty, error) are NaN."""

    labels: list[str]
    path: list[str]
    size: np.ndarray  # int64; -1 where the file could not be read
    duration: np.ndarray  # float64 seconds; NaN where unknown
    windows: np.ndarray  # int64
    status: list[str]
    error: list[str]
    scores: np.ndarray  # (rows, labels) float64
    tagged: np.ndarray  # (rows, labels) bool, from the tags column: what the scan decided
    malformed: int = 0  # lines skipped: torn, or of the wrong shape
    unknown_tags: int = 0  # tags naming no label column (counted, not shown)


def _fail(path: Path, problem: str) -> ReportError:
    return ReportError(f"{path}: {problem}")


def sniff_format(path: Path) -> str:
    """csv, jsonl or parquet (:func:`mictag.output.formats.format_of`), or a ReportError."""
    with _reading(path):
        return format_of(path)


class _reading:
    """Turns an OSError while reading ``path`` into one ReportError sentence."""

    def __init__(self, path: Path, what: str = "TAGS"):
        self.path, self.what = path, what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, IsADirectoryError):
            raise _fail(self.path, f"is a folder; give the {self.what} file a scan wrote") from None
        if isinstance(exc, FileNotFoundError):
            raise _fail(self.path, "does not exist") from None
        if isinstance(exc, OSError):
            raise _fail(self.path, f"cannot be read ({exc.strerror or exc})") from None
        if isinstance(exc, UnicodeDecodeError):
            raise _fail(self.path, f"is not UTF-8 text, so not a {self.what} file a mictag scan wrote") from None
        return False


def _check_header(path: Path, header: list[str]) -> list[str]:
    """The label columns: everything between ``error`` and ``tags`` (see mictag.output.rows.columns)."""
    labels = labels_of(header)
    if labels is None:
        shown = ",".join(header)[:80] or "(nothing)"
        raise _fail(path, f"is not a mictag scan output: its columns should start {','.join(FIXED)}, then one per "
                          f"label, then tags; they are {shown}")
    if len(set(labels)) != len(labels):
        raise _fail(path, "is not a mictag scan output: a label column appears twice")
    return labels


CHUNK = 50_000  # rows converted at a time: a million-row TAGS never sits in memory as strings


def _parquet_chunks(path: Path, skipped: list[int]) -> Iterator:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise _fail(path, "reading Parquet needs pyarrow: pip install pyarrow") from None
    with _reading(path):
        with path.open("rb"):  # missing, a folder or unreadable: said as such, not as bad Parquet
            pass
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        raise _fail(path, f"is not a readable Parquet file ({str(exc)[:120]})") from None
    header = list(table.column_names)
    yield header
    chunk = {}
    for name in header:
        column = table.column(name)
        if name in _STRINGS:
            chunk[name] = column.to_pylist()
        else:
            try:  # nulls become NaN; no Python float per value
                chunk[name] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                chunk[name] = column.to_pylist()  # _floats names the bad value
    yield chunk


def _csv_chunks(path: Path, skipped: list[int]) -> Iterator:
    with _reading(path):
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                raise _fail(path, "is empty, not a mictag scan output (a scan writes at least its header)")
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"  # every row a scan writes ends in a newline
        with path.open("r", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            try:
                header = next(reader, [])
                yield header
                width = len(header)
                rows: list[list[str]] = []
                for row in reader:
                    rows.append(row)
                    if len(rows) > CHUNK:  # the newest row stays back: it may be the torn last one
                        yield _csv_chunk(header, rows[:-1], width, skipped)
                        rows = rows[-1:]
            except csv.Error as exc:
                raise _fail(path, f"is not a mictag scan output: not CSV ({exc})") from None
            if torn and rows:
                rows.pop()  # a half-written row may still have the right number of fields
                skipped[0] += 1
            yield _csv_chunk(header, rows, width, skipped)


def _csv_chunk(header: list[str], rows: list[list[str]], width: int, skipped: list[int]) -> dict[str, list]:
    good = [r for r in rows if len(r) == width]
    skipped[0] += len(rows) - len(good)
    if not good:
        return {name: [] for name in header}
    return dict(zip(header, map(list, zip(*good))))


def _jsonl_chunks(path: Path, skipped: list[int]) -> Iterator:
    header: list[str] | None = None
    rows: list[dict] = []
    with _reading(path):
        with path.open("r", encoding="utf-8", newline="\n") as f:
            # Lines end at "\n" only: U+2028 or U+0085 inside a JSON string is no line break (as
            # str.splitlines() would make it).
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict):
                    skipped[0] += 1
                    continue
                if header is None:
                    header = list(row)
                    yield header
                    keys = set(header)
                if row.keys() != keys:
                    skipped[0] += 1
                    continue
                rows.append(row)
                if len(rows) >= CHUNK:
                    yield {name: [r[name] for r in rows] for name in header}
                    rows = []
    if header is None:
        if skipped[0]:
            raise _fail(path, "is not a mictag scan output: no line of it is a JSON row")
        raise _fail(path, "is empty, not a mictag scan output")
    yield {name: [r[name] for r in rows] for name in header}


_STRINGS = ("path", "status", "error", "tags")


def _floats(path: Path, name: str, values) -> np.ndarray:
    """Column -> float64, empty or null as NaN; a value that is no number is the file's fault."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return values.astype(np.float64, copy=False)
    try:
        return np.array([math.nan if v is None or v == "" else float(v) for v in values], np.float64)
    except (TypeError, ValueError):
        bad = next(v for v in values if not _is_number(v))
        raise _fail(path, f"is not a mictag scan output: column {name} holds {str(bad)[:40]!r}, not a number") from None


def _is_number(v) -> bool:
    if v is None or v == "":
        return True
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def read_table(path: str | os.PathLike, fmt: str = "auto") -> Table:
    """Read a scan's output (csv, jsonl or parquet) without changing it."""
    path = Path(path)
    if fmt == "auto":
        fmt = sniff_format(path)
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    skipped = [0]
    chunks = {"csv": _csv_chunks, "jsonl": _jsonl_chunks, "parquet": _parquet_chunks}[fmt](path, skipped)
    labels = _check_header(path, next(chunks))
    index = {label: j for j, label in enumerate(labels)}
    strings: dict[str, list] = {name: [] for name in _STRINGS}
    numbers: dict[str, list[np.ndarray]] = {name: [] for name in ("size_bytes", "duration_s", "windows")}
    scores, tagged = [], []
    unknown = 0
    for chunk in chunks:
        for name in _STRINGS:
            strings[name].extend(chunk[name])
        for name in numbers:
            numbers[name].append(_floats(path, name, chunk[name]))
        n = len(chunk["path"])
        block = np.empty((n, len(labels)), np.float64)
        for j, label in enumerate(labels):
            block[:, j] = _floats(path, label, chunk[label])
        scores.append(block)
        on = np.zeros((n, len(labels)), bool)
        for i, tags in enumerate(chunk["tags"]):
            for tag in (tags or "").split(";"):
                if tag:
                    j = index.get(tag)
                    if j is None:
                        unknown += 1
                    else:
                        on[i, j] = True
        tagged.append(on)
    n = len(strings["path"])
    if n == 0 and skipped[0]:
        raise _fail(path, f"is not a mictag scan output: none of its {skipped[0]} rows has the header's "
                          f"columns")
    joined = {name: np.concatenate(parts) for name, parts in numbers.items()}
    return Table(labels=labels, path=[str(p) for p in strings["path"]],
                 size=np.nan_to_num(joined["size_bytes"], nan=-1).astype(np.int64),
                 duration=joined["duration_s"], windows=np.nan_to_num(joined["windows"], nan=0).astype(np.int64),
                 status=[str(s) for s in strings["status"]],
                 error=["" if e is None else str(e) for e in strings["error"]],
                 scores=np.concatenate(scores), tagged=np.concatenate(tagged), malformed=skipped[0],
                 unknown_tags=unknown)


def read_sidecar(tags: str | os.PathLike) -> dict | None:
    """The state beside TAGS: the model fingerprint and options the rows were made with, if there."""
    return read_state(tags)


@dataclass
class Timeline:
    """One file's window scores as the report embeds them."""

    path: str
    labels: list[str]
    starts: np.ndarray  # (windows,) seconds
    ends: np.ndarray
    scores: np.ndarray  # (windows, labels)


@dataclass
class TimelineSample:
    timelines: list[Timeline] = field(default_factory=list)
    total: int = 0  # files (lines) in the segments file
    skipped: int = 0  # sampled lines that were not a valid timeline (torn or mangled)


def _timeline(obj) -> Timeline | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
        return None
    labels, segments = obj.get("labels"), obj.get("segments")
    if not isinstance(labels, list) or not isinstance(segments, list) or not segments:
        return None
    try:
        starts = np.array([float(s["start"]) for s in segments])
        ends = np.array([float(s["end"]) for s in segments])
        scores = np.array([s["scores"] for s in segments], np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    if scores.shape != (len(segments), len(labels)) or not np.isfinite(starts).all():
        return None
    order = np.argsort(starts, kind="stable")
    return Timeline(obj["path"], [str(x) for x in labels], starts[order], ends[order], scores[order])


def sample_timelines(path: str | os.PathLike, k: int = TIMELINES, seed: int = 0) -> TimelineSample:
    """A uniform random sample of ``k`` of the segments file's lines (reservoir sampling, seeded, so
    the same file gives the same report). Only the sampled lines are parsed: the file may be GBs."""
    path = Path(path)
    rng = random.Random(seed)
    chosen: list[bytes] = []
    total = 0
    first_checked = False
    with _reading(path, "segments"):
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                if not first_checked:  # a wrong file is told at once, not as "0 timelines"
                    first_checked = True
                    try:
                        ok = _timeline(json.loads(line)) is not None
                    except ValueError:
                        ok = False
                    if not ok:
                        raise _fail(path, "is not a mictag segments file: its first line is not "
                                          '{"path", "labels", "segments": [{start, end, scores}]}')
                if len(chosen) < k:
                    chosen.append(line)
                else:
                    j = rng.randrange(total + 1)
                    if j < k:
                        chosen[j] = line
                total += 1
    sample = TimelineSample(total=total)
    for line in chosen:
        try:
            t = _timeline(json.loads(line))
        except ValueError:  # a torn last line, or an outside hand's edit
            t = None
        if t is None:
            sample.skipped += 1
        else:
            sample.timelines.append(t)
    sample.timelines.sort(key=lambda t: t.path)
    return sample


def _column_cap(widths: list[int], label_counts: list[int]) -> int:
    """The largest per-file column count whose cells over all timelines fit TIMELINE_CELLS."""
    lo, hi = 1, MAX_COLUMNS
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cells = sum(min(w, mid) * n for w, n in zip(widths, label_counts))
        lo, hi = (mid, hi) if cells <= TIMELINE_CELLS else (lo, mid - 1)
    return lo


def _encode_timeline(t: Timeline, cap: int) -> dict:
    n = len(t.starts)
    group = math.ceil(n / cap)  # consecutive windows max-pooled into one column
    cols = math.ceil(n / group)
    pad = cols * group - n
    scores = np.nan_to_num(np.clip(t.scores, 0.0, 1.0))
    if pad:
        scores = np.concatenate([scores, np.zeros((pad, scores.shape[1]))])
    pooled = scores.reshape(cols, group, -1).max(axis=1)  # (cols, labels)
    q = np.rint(pooled.T * QUANT).astype(np.uint8)  # label-major: one label's row is contiguous
    starts = t.starts[::group]
    entry = {"path": t.path, "end": round(float(max(t.ends.max(), starts[-1])), 3), "cols": cols, "pool": group,
             "q": base64.b64encode(q.tobytes()).decode("ascii")}
    steps = np.diff(starts)
    if cols > 1 and np.allclose(steps, steps[0], atol=2e-3):  # regular windows: two numbers, not a list
        entry["t0"], entry["dt"] = round(float(starts[0]), 3), round(float(steps[0]), 4)
    else:
        entry["starts"] = [round(float(s), 3) for s in starts]
    return entry


def _histograms(table: Table) -> tuple[list, list]:
    """Per label, counts over BINS bins of [0, 1], split into tagged and untagged files."""
    L = len(table.labels)
    tagged = np.zeros((L, BINS), np.int64)
    untagged = np.zeros((L, BINS), np.int64)
    s = table.scores
    ok = ~np.isnan(s)
    bins = np.clip(np.floor(np.nan_to_num(s) * BINS), 0, BINS - 1).astype(np.int64)
    flat = np.arange(L)[None, :] * BINS + bins
    for target, mask in ((tagged, ok & table.tagged), (untagged, ok & ~table.tagged)):
        target += np.bincount(flat[mask], minlength=L * BINS).reshape(L, BINS)
    return tagged.tolist(), untagged.tolist()


def _thresholds(table: Table, sidecar: dict | None) -> tuple[list, str]:
    """The tag thresholds: the scan's --threshold where it set one; otherwise the model's own,
    which the sidecar does not record, so each is bracketed from the rows themselves (the lowest
    score of a tagged file, when that is above the highest score of an untagged one)."""
    L = len(table.labels)
    given = (sidecar or {}).get("threshold")
    if isinstance(given, (int, float)):
        return [float(given)] * L, "option"
    recorded = (sidecar or {}).get("thresholds")  # scans since the sidecar records them
    if (isinstance(recorded, list) and len(recorded) == L and list((sidecar or {}).get("labels") or table.labels)
            == list(table.labels) and all(isinstance(t, (int, float)) for t in recorded)):
        return [float(t) for t in recorded], "model"
    out = []
    for j in range(L):
        s, t = table.scores[:, j], table.tagged[:, j]
        ok = ~np.isnan(s)
        on, off = s[ok & t], s[ok & ~t]
        if len(on) and (not len(off) or off.max() < on.min()):
            out.append(round(float(on.min()), 4))
        else:
            out.append(None)
    return out, "inferred"


def _problems(table: Table) -> dict:
    """Every row with an error column (error, partial, empty), paths split into a folder table."""
    idx = [i for i, e in enumerate(table.error) if e or table.status[i] == "error"]
    order = {s: k for k, s in enumerate(("error", "partial", "empty"))}
    idx.sort(key=lambda i: (order.get(table.status[i], 3), table.path[i]))
    dirs: dict[str, int] = {}
    messages: dict[str, int] = {}
    statuses: dict[str, int] = {}
    out = {"status": [], "dir": [], "name": [], "msg": []}
    for i in idx:
        folder, _, name = table.path[i].rpartition("/")
        out["status"].append(statuses.setdefault(table.status[i], len(statuses)))
        out["dir"].append(dirs.setdefault(folder, len(dirs)))
        out["name"].append(name)
        out["msg"].append(messages.setdefault(table.error[i] or "(no message)", len(messages)))
    out.update(statuses=list(statuses), dirs=list(dirs), messages=list(messages))
    return out


def _model(sidecar: dict | None, labels: list[str]) -> dict:
    if sidecar is None:
        return {"known": False}
    out = {"known": True, "sha256": str(sidecar.get("model_sha256", "")), "name": str(sidecar.get("model_name") or ""),
           "aggregate": sidecar.get("aggregate"),
           "hop_frames": sidecar.get("hop_frames"), "threshold": sidecar.get("threshold")}
    if isinstance(sidecar.get("labels"), list) and list(sidecar["labels"]) != labels:
        out["labels_differ"] = True  # the sidecar was rewritten by a later scan with other labels
    return out


def _finite_sum(a: np.ndarray) -> float:
    return float(np.nansum(a)) if len(a) else 0.0


def build(tags: str | os.PathLike, segments: str | os.PathLike | None = None, fmt: str = "auto",
          timelines: int = TIMELINES, seed: int = 0, embeddings: str | os.PathLike | None = None,
          similar: int = SIMILAR) -> dict:
    """Everything the report shows, JSON-able: aggregates of TAGS plus a sample of SEG's timelines
    and, with ``embeddings``, the nearest files of a sample of ``similar`` files."""
    t0 = time.perf_counter()
    tags = Path(tags)
    table = read_table(tags, fmt)
    sidecar = read_sidecar(tags)
    L, n = len(table.labels), len(table.path)
    statuses = Counter(table.status)
    scored = ~np.isnan(table.scores).all(axis=1) if L else np.zeros(n, bool)
    per_file = table.tagged.sum(axis=1)
    hist_tagged, hist_untagged = _histograms(table)
    thresholds, threshold_kind = _thresholds(table, sidecar)
    tagged_int = table.tagged.astype(np.int32)
    data = {
        "version": 1,
        "title": tags.name,
        "source": str(tags),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "labels": table.labels,
        "summary": {
            "files": n, "seconds": _finite_sum(table.duration),
            "bytes": int(table.size[table.size > 0].sum()), "windows": int(table.windows.sum()),
            "statuses": {s: statuses.get(s, 0) for s in STATUSES},
            "other_statuses": {s: c for s, c in statuses.items() if s not in STATUSES},
            "scored": int(scored.sum()), "untagged": int((scored & (per_file == 0)).sum()),
            "mean_tags": float(per_file[scored].mean()) if scored.any() else 0.0,
            "malformed": table.malformed, "unknown_tags": table.unknown_tags,
        },
        "model": _model(sidecar, table.labels),
        "files_per_label": table.tagged.sum(axis=0).tolist(),
        "cooccurrence": (tagged_int.T @ tagged_int).tolist(),  # [i][j]: files tagged both; [i][i]: files tagged i
        "tags_per_file": np.bincount(per_file[scored], minlength=L + 1).tolist(),
        "hist": {"bins": BINS, "tagged": hist_tagged, "untagged": hist_untagged, "threshold": thresholds,
                 "threshold_kind": threshold_kind},
        "problems": _problems(table),
        "timelines": _timelines(table, segments, timelines, seed),
        "similar": _similar(table, embeddings, similar, seed),
    }
    data["build_seconds"] = round(time.perf_counter() - t0, 3)
    return data


def _timelines(table: Table, segments: str | os.PathLike | None, k: int, seed: int) -> dict:
    if segments is None:
        return {"given": False, "files": []}
    sample = sample_timelines(segments, k, seed)
    cap = _column_cap([len(t.starts) for t in sample.timelines], [len(t.labels) for t in sample.timelines])
    label_sets: list[list[str]] = []
    rows = {p: i for i, p in enumerate(table.path)}
    files, unmatched = [], 0
    for t in sample.timelines:
        entry = _encode_timeline(t, cap)
        if t.labels not in label_sets:
            label_sets.append(t.labels)
        entry["ls"] = label_sets.index(t.labels)
        i = rows.get(t.path)
        if i is None:
            unmatched += 1  # the segments file of another scan, or a row dropped since
        else:
            entry["status"] = table.status[i]
            entry["tags"] = [lab for lab, on in zip(table.labels, table.tagged[i]) if on]
        files.append(entry)
    return {"given": True, "source": str(segments), "total": sample.total, "sampled": len(files),
            "skipped": sample.skipped, "unmatched": unmatched, "limit": k, "seed": seed, "column_cap": cap,
            "pooled": sum(1 for f in files if f["pool"] > 1), "label_sets": label_sets, "files": files}


def _similar(table: Table, embeddings: str | os.PathLike | None, limit: int, seed: int) -> dict:
    """For ``limit`` files drawn at random (seeded), their ``SIMILAR_K`` nearest files in the whole
    table by embedding, from the table's index (:mod:`mictag.similar.index`, built or refreshed as
    ``mictag similar`` does). Paths are listed once (``names``, with their tags from TAGS) and
    referred to by number; similarities in thousandths."""
    if embeddings is None:
        return {"given": False, "files": []}
    from mictag.output.embeddings import EmbeddingsError
    from mictag.similar.index import open_index

    try:
        index = open_index(embeddings)
    except EmbeddingsError as exc:
        raise ReportError(str(exc)) from None
    keys = index.live_keys
    chosen = sorted(random.Random(seed).sample(range(len(keys)), min(limit, len(keys))))
    rows = {p: i for i, p in enumerate(table.path)}
    names: list[str] = []
    name_tags: list[list[str] | None] = []
    numbers: dict[str, int] = {}

    def number(path: str) -> int:
        if path not in numbers:
            numbers[path] = len(names)
            names.append(path)
            i = rows.get(path)
            name_tags.append(None if i is None else [lab for lab, on in zip(table.labels, table.tagged[i]) if on])
        return numbers[path]

    files = []
    for c in chosen:
        key = int(keys[c])
        found = index.search(index.vector(key), SIMILAR_K, exclude={key})
        files.append([number(index.path(key)), [[number(index.path(k)), round(1000 * s)] for k, s in found]])
    return {"given": True, "source": str(embeddings), "total": len(index), "sampled": len(files), "limit": limit,
            "k": SIMILAR_K, "index": index.kind, "names": names, "tags": name_tags, "files": files}
