"""Writing each file's instruments into its own metadata, from the rows a scan wrote.

Which files are touched. A file is written only if (1) its row's path resolves inside the
library: not absolute, no ``..`` out of it, no symlink leading out (checked on the real path,
which is then the one opened); (2) the scan tagged it (status ok or partial); (3) its size and
mtime are still the row's, so the tags describe the audio that is there; (4) its format is one of
:mod:`mictag.filetags.formats`; (5) its fields differ from what this run writes, so a second run
writes nothing and leaves every byte as it was.

What is written. ``field`` (INSTRUMENTS): one value per instrument in the row's tags, replacing
the earlier values (no instrument: no field). With ``scores`` also ``MICTAG_<LABEL>``, the
probability to 3 decimals, per label, and ``MICTAG_MODEL``, the model's sha256 from the scan's
``<out>.mictag.json``. mictag owns the ``MICTAG_`` fields: a run leaves exactly its own, so
without ``scores`` earlier ones are removed and no score outlives the scan that made it.

Keeping the scan's rows true. Saving tags changes a file's size and mtime, and a rescan would
take the file for a changed one and tag it again. So each written file's row gets the file's new
size and mtime, and the output is rewritten atomically once, at the end (temporary file, fsync,
rename; for Parquet also its ``<out>.jsonl-journal``, which is what a scan resumes from). Until
then the new stats are never only in memory: ``<out>.write-tags-journal`` gets a line before a
file is saved (its path and the size/mtime of its row) and one after (its new size/mtime). The
end, rewriting the output and removing the journal, comes also after a stop (Ctrl-C, SIGTERM or
SIGHUP: the file in progress is finished first) or an error. A save and its journal lines are
never cut by a signal (the stop signals are held meanwhile); only kill -9 or a power cut can, and
then the journal stays: the next write-tags on that output applies it first, in order, to rows
that still hold the size/mtime of an entry's first line (a row a rescan has since redone is left
alone). A file whose save began but whose second line is missing is taken as written when its
tags are already exactly this run's. Until that next run, a rescan would merely redo those files.

The output's scan lock (:mod:`mictag.output.lock`) is held throughout, so a scan and
write-tags never rewrite it at once; ``dry_run`` takes no lock and writes no file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path, PurePosixPath, PureWindowsPath

from mictag.errors import ConfigError, MictagError
from mictag.filetags.formats import SUPPORTED, TagFileError, TagStore, describe_format, open_tags
from mictag.output.files import lock_path, parquet_journal_path, read_state, write_tags_journal_path
from mictag.output.formats import format_of, read_parquet, read_rows, rewrite, write_parquet_rows
from mictag.output.journal import Journal, writing
from mictag.output.lock import OutputLock
from mictag.output.rows import Stat, columns, labels_of, row_stat, same_stat
from mictag.runtime.scan.signals import STOP_SIGNALS

FIELD = "INSTRUMENTS"
PREFIX = "MICTAG_"  # mictag's own fields (scores, model)
MODEL_FIELD = PREFIX + "MODEL"
DECIMALS = 3  # of a probability written with --scores
TAGGED = ("ok", "partial")  # the statuses whose tags are the scan's verdict on the file
REQUIRED = ("path", "size_bytes", "mtime", "status", "tags")
OUTCOMES = ("written", "up to date", "changed since the scan", "refused", "skipped", "failed")
_FIELD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .-]*")  # valid in Vorbis, ID3 TXXX and MP4 freeform alike

def check_field(name: str) -> str:
    """``name`` if it can name the instruments field in every format, else a ConfigError."""
    if not _FIELD_NAME.fullmatch(name or ""):
        raise ConfigError(f"--field {name!r} cannot name a tag in every format: use letters, digits, '_', '-', "
                          f"'.' and spaces (the default is {FIELD})")
    if name.upper().startswith(PREFIX):
        raise ConfigError(f"--field {name!r}: the {PREFIX} fields hold mictag's scores; choose another name")
    return name


def score_field(label: str) -> str:
    """The field of a label's probability: ``mallet_percussion`` -> ``MICTAG_MALLET_PERCUSSION``."""
    return PREFIX + re.sub(r"[^A-Z0-9]+", "_", label.upper()).strip("_")


# -- the scan's output --------------------------------------------------------------------------
@dataclass
class ScanOutput:
    """A scan's output as read: its rows (as the format gives them), labels and model."""

    path: Path
    fmt: str
    rows: list[dict]
    labels: list[str]
    model: str | None  # "sha256:<hex>" of the model, from the sidecar
    schema: object = None  # Parquet: the table's schema, kept when it is rewritten

    def save(self) -> None:
        """Atomically replace the output with ``rows``."""
        if self.fmt != "parquet":
            rewrite(self.path, self.fmt, self.labels, self.rows)
            return
        write_parquet_rows(self.path, self.rows, self.schema)


def _model_of(path: Path) -> str | None:
    """The model fingerprint in the scan's state beside the output (:mod:`mictag.output.files`)."""
    state = read_state(path)
    sha = state.get("model_sha256") if state else None
    return f"sha256:{sha}" if isinstance(sha, str) and sha else None


def _check_output_file(path: Path) -> None:
    if not path.exists():
        raise MictagError(f"{path} does not exist: give the output file (--out) of `mictag scan`")
    if not path.is_file():
        raise MictagError(f"{path} is not a file: give the output file (--out) of `mictag scan`")


def read_scan_output(path: str | os.PathLike) -> ScanOutput:
    """Read what ``mictag scan --out path`` wrote (CSV, JSONL or Parquet); a MictagError if it is not that."""
    path = Path(path)
    _check_output_file(path)
    fmt = "csv"
    schema = None
    try:
        fmt = format_of(path)
        if fmt == "parquet":
            rows, schema = read_parquet(path)
        else:
            rows = read_rows(path, fmt)
    except UnicodeDecodeError:
        raise MictagError(f"cannot read {path}: it is not text, so not a {fmt} output of `mictag scan`") from None
    except OSError as exc:
        raise MictagError(f"cannot read {path}: {exc.strerror or exc}") from None
    header = list(rows[0]) if rows else []
    missing = [c for c in REQUIRED if c not in header]
    if rows and missing:
        raise MictagError(f"{path} is not an output of `mictag scan`: it has no {', '.join(missing)} column")
    labels = labels_of(header) if rows else []
    if labels is None:
        labels = [c for c in header if c not in columns([])]
    if fmt == "csv" and rows and labels_of(header) is None:
        # rewriting it would drop or reorder columns someone added or moved
        raise MictagError(f"{path} does not have the columns of `mictag scan` in their order ({', '.join(header)}); "
                          f"restore it or rescan")
    return ScanOutput(path, fmt, rows, labels, _model_of(path), schema)


# -- rows and paths ---------------------------------------------------------------------------
def _patch(rows: list[dict], updates: list[tuple[str, Stat, Stat]]) -> set[str]:
    """Apply (path, before, after) updates in order to the rows that still hold ``before``; the
    paths of the rows changed."""
    by_path: dict[str, list[dict]] = {}
    for row in rows:
        by_path.setdefault(row.get("path"), []).append(row)
    patched = set()
    for rel, before, after in updates:
        for row in by_path.get(rel, ()):
            held = row_stat(row)
            if held is not None and same_stat(held, before):
                row["size_bytes"], row["mtime"] = after
                if row.get("content_sha256"):
                    row["content_sha256"] = ""  # other bytes now: not a key for reusing this row
                patched.add(rel)
    return patched


def resolve_inside(root: Path, rel: object) -> tuple[Path | None, str]:
    """The real path of a row's file under ``root`` (the library's real path), or None and why not."""
    if not isinstance(rel, str) or not rel:
        return None, "the row names no file"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return None, "it is an absolute path (a scan names files relative to the library)"
    try:
        real = Path(os.path.realpath(root / rel))
    except (OSError, ValueError) as exc:  # a NUL in the name
        return None, f"it is not a usable path ({exc})"
    if real != root and real.is_relative_to(root):
        return real, ""
    if ".." in PurePosixPath(rel).parts:
        return None, "its '..' leads outside the library"
    return None, f"it leads through a symlink to {real}, outside the library"


def _instruments(row: dict) -> list[str]:
    return [t.strip() for t in str(row.get("tags") or "").split(";") if t.strip()]


def _probability(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(p) else p


def changes(store: TagStore, fields: dict[str, list[str]]) -> dict[str, list[str]]:
    """What to set (an empty list: delete) so that the file's fields become ``fields`` and it has
    no ``MICTAG_`` field besides those."""
    key = str.upper if store.case_insensitive else str
    wanted = {key(name) for name in fields}
    todo = {name: values for name, values in fields.items() if store.get(name) != values}
    for name in sorted(store.names()):
        if key(name).startswith(PREFIX) and key(name) not in wanted:
            todo[name] = []
    return todo


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while a file is saved and journaled: a second Ctrl-C (which
    stops at once) must not cut a file's metadata in half. They are delivered right after."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield  # Windows, or a worker thread (which gets no signals anyway)
        return
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


# -- the run ----------------------------------------------------------------------------------
@dataclass
class WriteSummary:
    """What a run did: files per outcome (see OUTCOMES), skips per reason ("format", "scan status")."""

    tags: str
    counts: Counter = dataclass_field(default_factory=lambda: Counter(dict.fromkeys(OUTCOMES, 0)))
    skipped_by: Counter = dataclass_field(default_factory=Counter)
    rows_updated: int = 0  # rows of the output given the new size and mtime of their file
    dry_run: bool = False
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0 when no file failed and none was refused, else 1 (as `mictag scan`: 1 when some files failed)."""
        return 1 if self.counts["failed"] or self.counts["refused"] else 0


def summary_line(s: WriteSummary) -> str:
    c = s.counts
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(s.skipped_by.items()))
    line = (f"{'would write' if s.dry_run else 'written'} {c['written']}, up to date {c['up to date']}, "
            f"changed since the scan {c['changed since the scan']}, refused {c['refused']}, "
            f"skipped {c['skipped']}{f' ({why})' if why else ''}, failed {c['failed']}")
    if s.dry_run:
        return f"dry run: {line}; no file was touched"
    if s.rows_updated:
        line += f"; {s.rows_updated} rows of {s.tags} now hold their file's new size and mtime"
    return f"interrupted: {line}; rerun the same command to do the rest" if s.interrupted else line


_SAY = {"written": "wrote", "changed since the scan": "changed since the scan, not touched:", "refused": "refused",
        "skipped": "skipped", "failed": "failed", "up to date": "up to date:"}


class _Run:
    def __init__(self, output: ScanOutput, root: Path, field: str, scores: bool, dry_run: bool,
                 say: Callable[[str], None], should_stop: Callable[[], bool]):
        self.output, self.root, self.field, self.scores, self.dry_run = output, root, field, scores, dry_run
        self.say, self.should_stop = say, should_stop
        self.summary = WriteSummary(str(output.path), dry_run=dry_run)
        self.updates: list[tuple[str, Stat, Stat]] = []
        self.pending: dict[str, Stat] = {}  # files whose save began in a killed run (no second journal line)
        self.patched: set[str] = set()  # paths whose rows now hold a new size and mtime
        self.journal_path = write_tags_journal_path(output.path)
        self._journal: Journal | None = None

    # The journal: {"path", "before": [size, mtime]} before a save, plus "after" once saved.
    def recover(self) -> None:
        """Take in what a run that was killed left in the journal (see the module docstring)."""
        if not self.journal_path.is_file():
            return
        if self.dry_run:  # read only: a torn last line simply does not parse
            entries = []
            for line in self.journal_path.read_text("utf-8", errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        else:  # cut a torn last line first: this run appends to the journal
            with writing(self.journal_path):
                entries = read_rows(self.journal_path, "jsonl")
        for entry in entries:
            try:
                rel, before = entry["path"], (int(entry["before"][0]), float(entry["before"][1]))
                after = (int(entry["after"][0]), float(entry["after"][1])) if "after" in entry else None
            except (KeyError, TypeError, ValueError, IndexError):
                continue  # a line mangled by an outside hand
            if after is None:
                self.pending[rel] = before
            else:
                self.pending.pop(rel, None)
                self.updates.append((rel, before, after))
        self.patched |= _patch(self.output.rows, self.updates)

    def _journal_line(self, entry: dict) -> None:
        if self._journal is None:  # opened at the first write, so a run that writes nothing leaves none
            self._journal = Journal(self.journal_path, fresh=False)
        self._journal.append(json.dumps(entry, ensure_ascii=False) + "\n")

    def _report(self, outcome: str, rel: object, why: str = "", reason: str = "") -> None:
        self.summary.counts[outcome] += 1
        if reason:
            self.summary.skipped_by[reason] += 1
        if why:
            verb = "would write" if outcome == "written" and self.dry_run else _SAY[outcome]
            self.say(f"{verb} {rel}: {why}")

    def fields_for(self, row: dict) -> dict[str, list[str]]:
        fields = {self.field: _instruments(row)}
        if self.scores:
            for label in self.output.labels:
                p = _probability(row.get(label))
                if p is not None:
                    fields[score_field(label)] = [f"{p:.{DECIMALS}f}"]
            if self.output.model:
                fields[MODEL_FIELD] = [self.output.model]
        return fields

    def _describe(self, store: TagStore, todo: dict[str, list[str]]) -> str:
        parts = []
        if self.field in todo:
            new, old = todo[self.field], store.get(self.field)
            was = f" (was {'; '.join(old)})" if old else ""
            parts.append(f"{self.field} = {'; '.join(new)}{was}" if new else f"{self.field} removed{was}")
        others = [name for name in todo if name != self.field]
        if n := sum(1 for name in others if todo[name]):
            parts.append(f"{n} {PREFIX} fields set")
        if n := sum(1 for name in others if not todo[name]):
            parts.append(f"{n} stale {PREFIX} fields removed")
        return ", ".join(parts)

    def one(self, row: dict) -> None:
        rel = row.get("path")
        real, why = resolve_inside(self.root, rel)
        if real is None:
            return self._report("refused", repr(rel), why)
        status = row.get("status")
        if status not in TAGGED:
            return self._report("skipped", rel, f"the scan did not tag it (status {status or 'missing'})",
                                "scan status")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return self._report("changed since the scan", rel, "it is no longer there")
        except OSError as exc:
            return self._report("failed", rel, f"cannot read it: {exc.strerror or exc}")
        if not stat.S_ISREG(st.st_mode):
            return self._report("failed", rel, "it is not a regular file")
        before, now = row_stat(row), (st.st_size, st.st_mtime)
        resumed = False
        if before is None or not same_stat(before, now):
            pending = self.pending.get(rel)
            resumed = before is not None and pending is not None and same_stat(pending, before)
            if not resumed:
                return self._report("changed since the scan", rel, self._how_changed(before, now))
        try:
            store = open_tags(real)
        except TagFileError as exc:
            return self._report("failed", rel, str(exc))
        if store is None:
            return self._report("skipped", rel, f"its format ({describe_format(real)}) is not one mictag writes tags "
                                                f"into ({SUPPORTED})", "format")
        todo = changes(store, self.fields_for(row))
        if resumed:
            if todo:  # not what a killed run of these options wrote: someone else changed it
                return self._report("changed since the scan", rel, self._how_changed(before, now))
            if not self.dry_run:  # saved by the killed run; only the bookkeeping was missing
                self._commit(row, rel, before, now)
            return self._report("up to date", rel)
        if not todo:
            return self._report("up to date", rel)
        what = self._describe(store, todo)
        if self.dry_run:
            return self._report("written", rel, what)
        with _signals_held():
            self._journal_line({"path": rel, "before": list(before)})
            for name, values in todo.items():
                store.set(name, values)
            try:
                store.save()
            except TagFileError as exc:
                return self._report("failed", rel, str(exc) + self._after_failure(real, now))
            st = os.stat(real)
            self._commit(row, rel, before, (st.st_size, st.st_mtime))
        self._report("written", rel, what)

    @staticmethod
    def _how_changed(before: Stat | None, now: Stat) -> str:
        if before is None:
            detail = "its row has no usable size_bytes/mtime"
        elif before[0] != now[0]:
            detail = f"{before[0]} bytes in the scan, {now[0]} now"
        else:
            detail = "modified after the scan"
        return f"{detail}; rescan, then write again"

    @staticmethod
    def _after_failure(real: Path, now: Stat) -> str:
        try:
            st = os.stat(real)
        except OSError:
            return "; the file is gone"
        return "" if same_stat(now, (st.st_size, st.st_mtime)) else "; the file was modified before the error: check it"

    def _commit(self, row: dict, rel: str, before: Stat, after: Stat) -> None:
        self.updates.append((rel, before, after))
        row["size_bytes"], row["mtime"] = after
        self.patched.add(rel)
        self._journal_line({"path": rel, "before": list(before), "after": list(after)})

    def finish(self, quiet: bool) -> None:
        """Put the new sizes and mtimes into the output, then drop the journal. ``quiet``: another
        error is on its way; a failure here then leaves the journal for the next run."""
        if self.dry_run:
            return
        try:
            if self._journal is not None:
                self._journal.close(quiet=quiet)
            if self.patched:
                self.output.save()
            if self.updates:
                scan_journal = parquet_journal_path(self.output.path)
                if self.output.fmt == "parquet" and scan_journal.is_file():  # what a Parquet scan resumes from
                    rows = read_rows(scan_journal, "jsonl")
                    if _patch(rows, self.updates):
                        rewrite(scan_journal, "jsonl", self.output.labels, rows)
            with writing(self.journal_path):
                self.journal_path.unlink(missing_ok=True)
        except MictagError:
            if not quiet:
                raise
        self.summary.rows_updated = len(self.patched)

    def run(self) -> WriteSummary:
        if self.scores and not self.output.model:
            self.say(f"{self.output.path.name}.mictag.json (the scan's record of its model) is not beside "
                     f"{self.output.path} or has no model_sha256: {MODEL_FIELD} is not written")
        self.recover()
        seen: set = set()
        failing = True
        try:
            for row in self.output.rows:
                if self.should_stop():
                    self.summary.interrupted = True
                    break
                if row.get("path") in seen:  # a duplicate row: its file is done once
                    continue
                seen.add(row.get("path"))
                self.one(row)
            failing = False
        finally:
            self.finish(quiet=failing)
        return self.summary


def write_tags(tags_path: str | os.PathLike, library: str | os.PathLike, field: str = FIELD, scores: bool = False,
               dry_run: bool = False, on_message: Callable[[str], None] | None = None,
               should_stop: Callable[[], bool] | None = None, lock: bool = True, wait: bool = False) -> WriteSummary:
    """Write the instruments of each row of the scan output ``tags_path`` into the file it names
    under ``library`` (see the module docstring for which files, what and how).

    ``on_message`` gets one line per file written (or, with ``dry_run``, that would be) and per
    file left alone for a reason; files already up to date are silent. Once ``should_stop()`` is
    true no new file is started (``interrupted``). While a scan writes the output this raises
    OutputBusy, or with ``wait`` waits for it; ``lock=False`` for a caller that already holds the
    output's :class:`~mictag.output.lock.OutputLock`. Raises MictagError when it cannot
    run: a bad field, no such library or output, an output that is not a scan's, or one busy or
    not writable."""
    say = on_message or (lambda m: None)
    field = check_field(field)
    tags_path, library = Path(tags_path), Path(library)
    if not library.is_dir():
        state = "is not a folder" if library.exists() else "does not exist"
        raise MictagError(f"library {library} {state}: give --library the folder that was scanned")
    _check_output_file(tags_path)  # before a lock file is made beside it
    root = Path(os.path.realpath(library))
    with contextlib.ExitStack() as held:
        if lock and not dry_run:
            with writing(lock_path(tags_path)):
                held.enter_context(OutputLock(tags_path, wait, say))
        output = read_scan_output(tags_path)
        relative = [r["path"] for r in output.rows
                    if isinstance(r.get("path"), str) and r["path"] and not PurePosixPath(r["path"]).is_absolute()]
        if relative and not any(os.path.lexists(root / rel) for rel in relative):
            raise MictagError(f"none of the {len(relative)} files in {tags_path} is under {library}: give --library "
                              f"the folder that was scanned")
        return _Run(output, root, field, scores, dry_run, say, should_stop or (lambda: False)).run()
