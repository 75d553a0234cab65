"""Batch buckets: the few batch sizes a GPU backend compiles for (a CUDA graph each, or shapes
inside one TensorRT profile). A batch runs at the smallest bucket that holds it, so a short last
batch computes at most about twice its rows and no new shape ever appears mid-scan."""

from __future__ import annotations


def batch_buckets(max_batch: int, smallest: int = 1) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``max_batch``, then ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError(f"the largest batch must be at least 1, not {max_batch}")
    out, b = [], max(1, smallest)
    while b < max_batch:
        out.append(b)
        b *= 2
    return (*out, max_batch)


def bucket_for(rows: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``rows``."""
    for b in buckets:
        if b >= rows:
            return b
    raise ValueError(f"{rows} rows exceed the largest bucket ({buckets[-1]})")
