"""What makes clips not all dry: a room (a synthetic exponentially decaying impulse response),
a tilt of the spectrum (low and high shelves), and the mix of parts at their gains. The
"produced" style adds two studio reverbs, a hall and a plate (:func:`response` picks one)."""

from __future__ import annotations

import numpy as np


def impulse_response(rng: np.random.Generator, rt60: float, rate: int) -> np.ndarray:
    """Decaying noise with early reflections: a room of reverberation time ``rt60`` seconds."""
    n = int(rt60 * rate)
    t = np.arange(n) / rate
    ir = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)  # -60 dB at rt60
    for _ in range(6):
        at = int(rng.uniform(0.003, 0.04) * rate)
        ir[at] += rng.uniform(0.3, 0.8) * rng.choice([-1, 1])
    ir[0] = 1.0
    return (ir / np.sqrt(np.sum(ir**2))).astype(np.float32)


def _diffuse_tail(rng: np.random.Generator, n: int, rate: int, rt60_low: float, rt60_high: float,
                  high_gain: float = 1.0, crossover: float = 2000.0) -> np.ndarray:
    """Dense decaying noise whose band above ``crossover`` Hz dies in ``rt60_high`` seconds and
    the band below in ``rt60_low`` (air and walls absorb highs faster; a plate keeps them)."""
    noise = rng.standard_normal(n)
    f = np.fft.rfftfreq(n, 1 / rate)
    to_high = 1 / (1 + (crossover / np.maximum(f, 1.0)) ** 4)
    low = np.fft.irfft(np.fft.rfft(noise) * (1 - to_high), n)
    t = np.arange(n) / rate
    return low * np.exp(-6.91 * t / rt60_low) + high_gain * (noise - low) * np.exp(-6.91 * t / rt60_high)


def hall_response(rng: np.random.Generator, rt60: float, predelay: float, rate: int) -> np.ndarray:
    """A hall's reverberation (no direct sound): silent for ``predelay`` seconds, a few sparse
    early reflections, then a tail that builds up over tens of milliseconds, darker as it decays."""
    start = int(predelay * rate)
    n = start + int(rt60 * rate)
    ir = np.zeros(n)
    tail = _diffuse_tail(rng, n - start, rate, rt60, rt60 * float(rng.uniform(0.4, 0.6)), high_gain=0.7)
    t = np.arange(n - start) / rate
    ir[start:] = tail * (1 - np.exp(-t / float(rng.uniform(0.02, 0.05))))
    level = np.sqrt(np.mean(tail[: rate // 10] ** 2))
    for _ in range(8):  # single samples 4-12 times the tail's RMS: distinct above the diffuse sound
        at = start + int(rng.uniform(0.0, 0.08) * rate)
        ir[at] += rng.uniform(4, 12) * level * rng.choice([-1, 1])
    return (ir / np.sqrt(np.sum(ir**2))).astype(np.float32)


def plate_response(rng: np.random.Generator, rt60: float, rate: int) -> np.ndarray:
    """A plate's reverberation (no direct sound): dense from the first sample, no discrete
    reflections, bright (its highs ring almost as long as its lows, and louder)."""
    n = int(rt60 * rate)
    ir = _diffuse_tail(rng, n, rate, rt60, rt60 * float(rng.uniform(0.8, 1.0)), high_gain=1.5)
    return (ir / np.sqrt(np.sum(ir**2))).astype(np.float32)


REVERBS = ("room", "hall", "plate", "dry")


def response(kind: str, rt60: float, rate: int, seed: int, predelay: float = 0.0) -> np.ndarray | None:
    """The impulse response of reverb ``kind`` (one of :data:`REVERBS`); None for dry."""
    rng = np.random.default_rng(seed)
    if kind == "room":
        return impulse_response(rng, rt60, rate)
    if kind == "hall":
        return hall_response(rng, rt60, predelay, rate)
    if kind == "plate":
        return plate_response(rng, rt60, rate)
    if kind == "dry":
        return None
    raise ValueError(f"no reverb {kind!r}: one of {', '.join(REVERBS)}")


def reverb(x: np.ndarray, ir: np.ndarray, wet: float) -> np.ndarray:
    """``x`` through the room, ``wet`` of it reverberant, the same length."""
    n = x.size + ir.size - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: x.size]
    return ((1 - wet) * x + wet * y).astype(np.float32)


def tilt(x: np.ndarray, rate: int, low_db: float, high_db: float, corner: float = 1000.0) -> np.ndarray:
    """Shelving EQ in the frequency domain: ``low_db`` below ``corner``, ``high_db`` above, smooth between."""
    spectrum = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1 / rate)
    blend = 1 / (1 + (corner / np.maximum(f, 1.0)) ** 2)  # 0 at low f, 1 at high f
    gain_db = low_db * (1 - blend) + high_db * blend
    return np.fft.irfft(spectrum * 10 ** (gain_db / 20), x.size).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def mix(parts: list[np.ndarray], gains_db: list[float]) -> np.ndarray:
    """Parts brought to the same loudness, then at their gains (dB), summed."""
    out = np.zeros_like(parts[0])
    for x, g in zip(parts, gains_db):
        level = rms(x)
        if level > 0:
            out += x / level * 10 ** (g / 20)
    return out
