"""Rows keyed by content as well as by path: a file whose bytes the same model already scored with
the same options (a file that was moved or renamed, a duplicate) gets its row without being
decoded or scored again; the row says where it came from (``reused_from``).

Every row of a tagged file records the sha256 of the file's bytes (``content_sha256``). At the
start of a scan, the rows of the output (kept, and those of files that are gone: the moved ones)
index their digests. Only a file to scan whose size equals that of an indexed row, or of another
file to scan, can have the same bytes, so only those are hashed before the scan; the digests of
the others are computed by one background thread while the scan runs, out of the decode workers'
way, and written with their rows. A file changed between listing and hashing gets no digest.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from mictag.runtime.scan.discovery import FileEntry

REUSABLE = ("ok", "empty")  # a row whose result depends only on the bytes (not on a crash or a file in flux)
CHUNK = 1 << 20


def file_sha256(path: str, size: int, mtime: float) -> str | None:
    """sha256 of the file's bytes, or None when it is not the file that was listed (another size
    or mtime, before or after reading) or cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size != size or abs(st.st_mtime - mtime) > 1e-3:
                return None
            while block := f.read(CHUNK):
                h.update(block)
            after = os.fstat(f.fileno())
    except OSError:
        return None
    if (after.st_size, after.st_mtime) != (st.st_size, st.st_mtime):
        return None
    return h.hexdigest()


class BackgroundHasher:
    """Hashes files in a thread of its own, in the order given, at most ``LOOKAHEAD`` files ahead of
    what the scan has taken (so it reads near where the decoders read, not the whole library at
    once, and holds few digests); :meth:`digest` waits for one."""

    LOOKAHEAD = 64

    def __init__(self, entries: Iterable[FileEntry]):
        self._todo = list(entries)
        self._wanted = {e.path for e in self._todo}
        self._done: dict[str, str | None] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="mictag-content-hasher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for e in self._todo:
            with self._cond:
                while len(self._done) >= self.LOOKAHEAD and not self._stop:
                    self._cond.wait(0.5)
            if self._stop:
                break
            digest = file_sha256(e.path, e.size, e.mtime)
            with self._cond:
                self._done[e.path] = digest
                self._cond.notify_all()
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def digest(self, path: str, timeout: float = 10.0) -> str | None:
        """The file's digest (None if it changed, was not given, or is not ready within ``timeout``
        seconds, as on a mount that stopped answering: the row is then written without it); each
        is handed out once."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if path not in self._wanted:
                return None
            while path not in self._done and not self._stop and time.monotonic() < deadline:
                self._cond.wait(0.5)
            self._wanted.discard(path)
            self._cond.notify_all()  # room for the next one
            return self._done.pop(path, None)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)


@dataclass
class ReusePlan:
    """What a scan does with its files: ``scan`` them, give ``reused`` ones an earlier row of the
    same bytes, and give ``copies`` (duplicates among the files to scan) the row of the one that
    is scanned."""

    scan: list[FileEntry]
    reused: list[tuple[FileEntry, dict]] = field(default_factory=list)  # (file, the row of its bytes)
    copies: dict[str, list[FileEntry]] = field(default_factory=dict)  # scanned file's path -> its duplicates
    digests: dict[str, str] = field(default_factory=dict)  # path -> sha256, for the files hashed up front
    hashed_bytes: int = 0


def plan_reuse(entries: list[FileEntry], known: Iterable[dict]) -> ReusePlan:
    """Split ``entries`` into files to scan and files whose bytes have a row already (``known``:
    rows with a ``content_sha256``) or will have one in this scan (duplicates)."""
    index: dict[str, dict] = {}
    for row in known:
        digest = row.get("content_sha256")
        if digest and row.get("status") in REUSABLE and digest not in index:
            index[digest] = row
    known_sizes = {_size(r) for r in index.values()}
    sizes = Counter(e.size for e in entries)
    plan = ReusePlan(scan=[])
    first_of: dict[str, FileEntry] = {}
    copies: defaultdict[str, list[FileEntry]] = defaultdict(list)
    for e in entries:
        if e.size not in known_sizes and sizes[e.size] < 2:
            plan.scan.append(e)  # no other bytes of this size: nothing to reuse; hashed as it is scanned
            continue
        digest = file_sha256(e.path, e.size, e.mtime)
        plan.hashed_bytes += e.size if digest else 0
        if digest is None:
            plan.scan.append(e)
            continue
        plan.digests[e.path] = digest
        if digest in index:
            plan.reused.append((e, index[digest]))
        elif digest in first_of:
            copies[first_of[digest].path].append(e)
        else:
            first_of[digest] = e
            plan.scan.append(e)
    plan.copies = dict(copies)
    return plan


def _size(row: dict) -> int | None:
    try:
        return int(row["size_bytes"])  # a string when read back from CSV
    except (KeyError, TypeError, ValueError):
        return None


def reused_row(row: dict, entry: FileEntry, source: str) -> dict:
    """``row`` (another file's, of the same bytes) for ``entry``."""
    return {**row, "path": entry.rel, "size_bytes": entry.size, "mtime": entry.mtime, "reused_from": source}
