"""What a mix goes through before it is released: a bus compressor and a master limiter, for the
"produced" corpus style.

Both are vectorised numpy (scipy is not a dependency of mictag): the compressor follows its
envelopes over 1-ms blocks (a Python loop over 10,000 blocks for a 10-s clip, not 160,000
samples), the limiter needs no loop at all. Together they take a few milliseconds a clip.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 16  # samples: the compressor's envelope step (1 ms at 16 kHz), finer than its 5-ms fastest attack
RMS_SECONDS = 0.01  # the compressor's RMS detector averages over about this long
TINY = 1e-12


def db(x: float | np.ndarray) -> float | np.ndarray:
    return 20 * np.log10(np.maximum(np.abs(x), TINY))


def compress(x: np.ndarray, rate: int, *, threshold_db: float, ratio: float, attack_s: float,
             release_s: float) -> np.ndarray:
    """A feed-forward bus compressor: an RMS detector (one pole, ``RMS_SECONDS``), a hard knee at
    ``threshold_db`` dBFS above which the level rises ``1/ratio`` dB per dB, and the gain
    reduction smoothed with ``attack_s`` while it grows and ``release_s`` while it falls. No
    makeup gain (the limiter has it)."""
    n = x.size
    if n == 0:
        return x.astype(np.float32)
    blocks = -(-n // BLOCK)
    square = np.zeros(blocks * BLOCK)
    square[:n] = np.square(x, dtype=np.float64)
    power = square.reshape(blocks, BLOCK).mean(axis=1)
    a_rms, a_att, a_rel = (math.exp(-BLOCK / (s * rate)) for s in (RMS_SECONDS, attack_s, release_s))
    level, smoothed = 0.0, np.empty(blocks)
    for b, p in enumerate(power.tolist()):  # the mean square, averaged (linear: one pole)
        level = a_rms * level + (1 - a_rms) * p
        smoothed[b] = level
    over = np.maximum(0.0, 10 * np.log10(np.maximum(smoothed, TINY)) - threshold_db)
    wanted = over * (1 - 1 / ratio)  # dB of gain reduction the static curve asks for
    reduction, gr = np.empty(blocks), 0.0
    for b, w in enumerate(wanted.tolist()):  # attack while the reduction grows, release while it falls
        a = a_att if w > gr else a_rel
        gr = a * gr + (1 - a) * w
        reduction[b] = gr
    centres = (np.arange(blocks) + 0.5) * BLOCK - 0.5
    gain = 10 ** (-np.interp(np.arange(n), centres, reduction) / 20)
    return (x * gain).astype(np.float32)


def _running_min(x: np.ndarray, width: int) -> np.ndarray:
    """min(x[i : i + width]) for each i (the end padded with +inf): van Herk/Gil-Werman, O(n)."""
    n = x.size
    blocks = -(-(n + width) // width)
    padded = np.full(blocks * width, np.inf)
    padded[:n] = x
    rows = padded.reshape(blocks, width)
    prefix = np.minimum.accumulate(rows, axis=1).ravel()
    suffix = np.minimum.accumulate(rows[:, ::-1], axis=1)[:, ::-1].ravel()
    i = np.arange(n)
    return np.minimum(suffix[i], prefix[i + width - 1])


def limit(x: np.ndarray, rate: int, *, ceiling_db: float, makeup_db: float = 0.0, attack_s: float = 0.002,
          release_s: float = 0.05) -> np.ndarray:
    """A master limiter: ``makeup_db`` of gain, then no sample above ``ceiling_db`` dBFS.

    A look-ahead peak limiter: the gain each sample needs is held over the next ``attack_s`` and
    then averaged over the last ``attack_s``, so it ramps down before a peak and every sample's
    gain is at most what that sample needs (the ceiling is exact, not approximate). It recovers
    linearly in dB, 10 dB per ``release_s``. Where nothing would pass the ceiling the gain is
    exactly 1: a quiet signal comes out as it went in (times the makeup)."""
    y = x.astype(np.float64) * 10 ** (makeup_db / 20)
    n = y.size
    if n == 0:
        return y.astype(np.float32)
    # Just under the ceiling, so that rounding to float32 cannot lift a sample above it.
    ceiling = 10 ** (ceiling_db / 20) * (1 - 1e-6)
    peak = np.abs(y)
    if peak.max() <= ceiling:
        return y.astype(np.float32)
    need = db(np.minimum(1.0, ceiling / np.maximum(peak, TINY)))  # <= 0 dB
    width = max(1, int(round(attack_s * rate)))
    held = _running_min(need, width)
    # Release: the least of every earlier held value plus the recovery since it (10 dB a release
    # time), so gain[i] = min over j <= i of held[j] + rate * (i - j): a running minimum.
    per_sample = 10.0 / (release_s * rate)
    ramp = per_sample * np.arange(n)
    released = np.minimum(0.0, ramp + np.minimum.accumulate(held - ramp))
    gain = 10 ** (released / 20)
    # Attack: a moving average over the last `width` samples (ones before the start). Every value
    # it averages is held over a window that covers sample i, so none exceeds what i needs.
    sums = np.cumsum(np.concatenate([np.ones(width), gain]))
    smooth = (sums[width:] - sums[:-width]) / width
    return np.clip(y * smooth, -ceiling, ceiling).astype(np.float32)
