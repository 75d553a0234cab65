"""What makes clips not all dry: a room (a synthetic exponentially decaying impulse response),
a tilt of the spectrum (low and high shelves), and the mix of parts at their gains."""

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
