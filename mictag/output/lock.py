"""One writer per output: an exclusive OS lock on ``<out>.mictag.lock`` for the whole scan.

The lock is ``flock`` (``msvcrt.locking`` on Windows): the operating system releases it when its
holder ends, however it ends (kill -9 included), so a lock left by a dead scan is simply free —
there is no pid file that could lie. The holder writes who it is (pid, host, start time) into
the lock file, so a second scan can say whom it is waiting for. The file itself stays beside the
output (removing it while others may hold it open would let two scans lock different files).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mictag.errors import MictagError
from mictag.output.files import lock_path

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int, blocking: bool) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not blocking:
                    return False
                time.sleep(0.5)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    INFO_AT = 1  # the locked byte cannot be read by others on Windows
else:
    import fcntl

    def _try_lock(fd: int, blocking: bool) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    INFO_AT = 0


class OutputBusy(MictagError):
    """Another scan is writing the same output."""


class OutputLock:
    """``with OutputLock(out, wait, say):`` holds the output for this process."""

    def __init__(self, out: str | os.PathLike, wait: bool = False, on_message: Callable[[str], None] | None = None):
        self.out = Path(out)
        self.path = lock_path(self.out)
        self.wait = wait
        self.say = on_message or (lambda m: None)
        self._fd: int | None = None

    def _holder(self, fd: int) -> str:
        try:
            os.lseek(fd, INFO_AT, os.SEEK_SET)
            info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
        except (OSError, ValueError):
            info = {}
        if not info.get("pid"):
            return "another scan"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
        return f"the scan with pid {info['pid']} on {info.get('host', '?')}, running since {since}"

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd, blocking=False):
                holder = self._holder(fd)
                if not self.wait:
                    raise OutputBusy(f"{self.out} is being written by {holder}: let it finish (or stop it), "
                                     f"or rerun with --wait to start when it ends")
                self.say(f"waiting for {holder} to finish writing {self.out}")
                _try_lock(fd, blocking=True)
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                               "command": sys.argv[:8]}).encode("utf-8")
            try:
                if INFO_AT == 0:
                    os.ftruncate(fd, 0)
                os.lseek(fd, INFO_AT, os.SEEK_SET)
                os.write(fd, info)
            except OSError:
                pass  # who holds it is a courtesy to the next scan; the lock holds without it
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            if INFO_AT == 0:
                os.ftruncate(self._fd, 0)  # nobody holds it now
            _unlock(self._fd)
        except OSError:
            pass  # closing the descriptor releases it anyway
        finally:
            os.close(self._fd)
            self._fd = None
