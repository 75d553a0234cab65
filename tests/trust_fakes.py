"""A fast path that agrees with its model on the first windows and deviates later, for the trust
tests (importable by a scan in a subprocess, which wraps the fast plan's engine in it)."""

from __future__ import annotations

import numpy as np


class Deviating:
    """Scores like ``inner`` for the first ``after`` windows, then moves every score ``by`` toward
    (and past) 0.5: out of bound, and tags flip."""

    def __init__(self, inner, after: int, by: float = 0.08):
        self.inner, self.after, self.by, self.seen = inner, after, by, 0
        self.meta, self.name, self.preferred_batch, self.plan = inner.meta, inner.name, inner.preferred_batch, inner.plan

    @property
    def variant(self) -> str:
        return self.inner.variant

    @property
    def description(self) -> str:
        return self.inner.description

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        p = np.asarray(self.inner.run(x, valid), np.float32)
        index = np.arange(self.seen, self.seen + len(x))
        self.seen += len(x)
        late = index >= self.after
        out = p.copy()
        out[late] = np.clip(p[late] + np.where(p[late] >= 0.5, -self.by, self.by), 0.0, 1.0)
        return out


def wrap_fast_paths(after: int, by: float = 0.08) -> None:
    """Make every fast path that ``open_backend`` loads deviate after ``after`` windows."""
    from mictag.runtime.engines import open as backends

    load = backends._load

    def deviating_load(plan, threads):
        engine = load(plan, threads)
        return Deviating(engine, after, by) if plan.check else engine

    backends._load = deviating_load


def deviating_stage(after: int, flags: str, home: str):
    """A Ray model actor class whose fast path deviates after ``after`` windows, on a CPU that has
    ``flags``; its verdicts in ``home``."""
    import os

    from mictag.runtime.scan.distributed import ModelStage

    class DeviatingStage(ModelStage):
        def __init__(self, *args, **kwargs):
            from mictag import cpu

            os.environ["MICTAG_CPU_FLAGS"], os.environ["MICTAG_HOME"] = flags, home
            cpu.cpu_info.cache_clear()
            super().__init__(*args, **kwargs)
            self.backend.fast = Deviating(self.backend.fast, after)

    return DeviatingStage
