"""Writing an output so that it survives anything: each row one unbuffered append (a failure
leaves at most one torn line, which the next run cuts), synced to disk at most once a second and
when closed, so the output itself is the resume journal; whole files replaced atomically. A write
that fails (no space, quota, I/O error, read-only or vanished folder) raises
:class:`OutputError`, one sentence saying what failed, where and what to do."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

from mictag.errors import MictagError

SYNC_SECONDS = 1.0  # the journal reaches the disk at least this often (and at the end)


class OutputError(MictagError):
    """The scan's output could not be written."""


_WRITE_FAILURES = {
    errno.ENOSPC: ("there is no space left on its device", "free some space"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or raise the quota"),
    errno.EIO: ("the device reported an I/O error", "check the disk"),
    errno.EROFS: ("its file system is read-only", "write --out somewhere writable"),
    errno.ENOENT: ("it or its folder was deleted or moved while the scan ran", "recreate the folder"),
    errno.ESTALE: ("its network file handle went stale", "check the mount"),
    errno.EACCES: ("permission is denied", "make it writable or write --out elsewhere"),
    errno.EPERM: ("permission is denied", "make it writable or write --out elsewhere"),
}


@contextlib.contextmanager
def writing(path: str | os.PathLike):
    """Turn an OSError while writing ``path`` into one OutputError sentence."""
    try:
        yield
    except OSError as exc:
        what, todo = _WRITE_FAILURES.get(exc.errno, (exc.strerror or str(exc), "fix that"))
        raise OutputError(f"cannot write {path}: {what} (errno {exc.errno}); {todo}, then rerun the same "
                          f"command: it keeps the rows already written and does the rest") from None

def write_text_synced(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        try:
            with tmp.open("w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

def repair_torn_tail(path: Path) -> None:
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

class Journal:
    """An append-only text file written with one unbuffered write per line, synced at most once
    per ``SYNC_SECONDS`` and when closed."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if fresh else 0)
            self._fd: int | None = os.open(path, flags, 0o644)
        self._synced = time.monotonic()

    @property
    def empty(self) -> bool:
        return os.fstat(self._fd).st_size == 0

    def append(self, text: str) -> None:
        with writing(self.path):
            _write_all(self._fd, text.encode("utf-8"))
            if time.monotonic() - self._synced >= SYNC_SECONDS:
                self._check_still_there()
                os.fsync(self._fd)
                self._synced = time.monotonic()

    def _check_still_there(self) -> None:
        """Rows written to a file that was deleted or moved away would be lost without an error."""
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            raise OSError(errno.ENOENT, "the output was deleted or its folder removed") from None
        mine = os.fstat(self._fd)
        if (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino):
            raise OSError(errno.ENOENT, "the output was replaced by another file")

    def close(self, quiet: bool = False) -> None:
        """Sync and close; ``quiet`` (another error is already on its way) swallows a failure."""
        if self._fd is None:
            return
        try:
            with writing(self.path):
                try:
                    self._check_still_there()
                    os.fsync(self._fd)
                finally:
                    os.close(self._fd)
                    self._fd = None
        except OutputError:
            if not quiet:
                raise
