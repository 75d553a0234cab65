"""An int8 variant is trusted only once it has been checked on real audio.

The deviation recorded at export is measured on synthetic windows, and real recordings can be
further off (musicnn's int8: 0.010 on synthetic windows, 0.062 on 400 real samples). So the first
time auto runs a model's int8 variant, :class:`CheckedInt8` scores the first ``CHECK_WINDOWS``
windows with both the variant and the path auto would take without it, returns the latter's
scores for them, and then keeps the variant if it stayed within :data:`INT8_BOUND` of it, or
switches to the other path for good. The verdict is remembered per variant file in
``$MICTAG_HOME/cache/int8-verdicts.json``, so later scans start on the right path at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from mictag.paths import mictag_home
from mictag.runtime.choice import INT8_BOUND

CHECK_WINDOWS = 16


def _verdicts_file() -> Path:
    return mictag_home() / "cache" / "int8-verdicts.json"


def _key(variant: Path) -> str:
    st = variant.stat()
    return f"{variant.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def load_verdict(variant: Path) -> dict | None:
    """{"trusted": bool, "max_abs_dp": float, "windows": int} for a checked variant, else None."""
    try:
        return json.loads(_verdicts_file().read_text("utf-8")).get(_key(variant))
    except (OSError, ValueError):
        return None


def save_verdict(variant: Path, verdict: dict) -> None:
    path = _verdicts_file()
    try:
        known = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known[_key(variant)] = verdict
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1), "utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # checked again next time


class CheckedInt8:
    """A backend that runs an int8 variant once it has matched ``reference`` on real windows."""

    def __init__(self, fast, reference, on_message: Callable[[str], None] | None = None,
                 windows: int = CHECK_WINDOWS):
        self.fast, self.reference = fast, reference
        self.active = None  # decided: the backend that scores from now on
        self.say = on_message or (lambda m: None)
        self.windows, self.seen, self.max_dev = windows, 0, 0.0
        self.meta, self.name, self.preferred_batch = fast.meta, fast.name, fast.preferred_batch
        self.plan = fast.plan

    @property
    def variant(self) -> str:
        return self.fast.variant

    @property
    def description(self) -> str:
        if self.active is None:
            return (f"{self.fast.description}, checked against {self.reference.description} on the first "
                    f"{self.seen} windows (max |dp| {self.max_dev:.3f})")
        return self.active.description

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.active is not None:
            return self.active.run(x, valid)
        exact = self.reference.run(x, valid)
        self.max_dev = max(self.max_dev, float(np.abs(self.fast.run(x, valid) - exact).max()))
        self.seen += len(x)
        variant = self.fast.plan.model
        if self.max_dev > INT8_BOUND:
            save_verdict(variant, {"trusted": False, "max_abs_dp": self.max_dev, "windows": self.seen})
            self.say(f"the int8 variant is {self.max_dev:.3f} from {self.reference.plan.precision} on this audio "
                     f"(more than {INT8_BOUND}): scanning on {self.reference.plan.describe()} instead, "
                     f"and later scans will too")
            self.active, self.fast = self.reference, None
        elif self.seen >= self.windows:
            save_verdict(variant, {"trusted": True, "max_abs_dp": self.max_dev, "windows": self.seen})
            units = self.fast.plan.reason.split(";")[0]
            self.fast.plan = replace(self.fast.plan, check=False, reason=(
                f"{units}; int8 within {self.max_dev:.3f} of fp32 on {self.seen} windows of this audio"))
            self.active, self.reference = self.fast, None
        return exact
