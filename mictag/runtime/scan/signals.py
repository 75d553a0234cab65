"""Stopping a scan on SIGINT, SIGTERM or SIGHUP (Ctrl-C, `kill`, a closed terminal or cron's end).

The first signal asks the scan to stop: it starts no new file, scores what is decoded, writes the
files that finish, stops its workers and says how far it got; the exit code is 128 + the signal
(130, 143, 129). A second signal stops it at once (KeyboardInterrupt: the rows already written
stay, the journal is closed, the workers end).
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopSignals:
    """A context manager that turns the stop signals into a request (``stop()`` is then true)."""

    def __init__(self):
        self.signum: int | None = None
        self._saved: dict = {}

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "SIGINT"

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        else:
            raise KeyboardInterrupt  # the second one: stop now

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # only the main thread may install them
            for sig in STOP_SIGNALS:
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()
