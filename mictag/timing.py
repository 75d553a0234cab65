"""Best-of-N wall time of a call: what the attention-kernel choice and the benchmarks measure."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(fn: Callable[[], object], repeats: int = 3, warmup: bool = True) -> float:
    """The shortest of ``repeats`` timed calls of ``fn`` (after one untimed call)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
