"""Clips with no instrument at all, for the "produced" corpus style: digital silence, noise (white,
pink or brown), synthetic applause and speech. Their labels are all 0.

Speech comes from the spoken channel names ALSA ships for speaker tests (Debian ``alsa-utils``,
``usr/share/sounds/alsa/``; ``Noise.wav`` there is noise, not speech). One speaker says them all,
so a split of the files keeps words, not voices, apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KINDS = ("silence", "noise", "applause", "speech")
WEIGHTS = {"silence": 0.15, "noise": 0.3, "applause": 0.25, "speech": 0.3}
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power falls as 1/f**exponent
SPEECH_PACKAGE = "alsa-utils"
SPEECH_DIR = "usr/share/sounds/alsa"
NOT_SPEECH = ("Noise.wav",)


def find_speech(roots: dict[str, Path]) -> list[Path]:
    """The spoken-word files of the unpacked speech package, if it is among ``roots``."""
    folder = roots[SPEECH_PACKAGE] / SPEECH_DIR if SPEECH_PACKAGE in roots else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.wav") if p.name not in NOT_SPEECH)


def kinds_available(speech: list[str]) -> tuple[list[str], list[float]]:
    """(kinds, probabilities): speech only where there are speech files."""
    kinds = [k for k in KINDS if k != "speech" or speech]
    weights = np.array([WEIGHTS[k] for k in kinds])
    return kinds, list(weights / weights.sum())


def noise(rng: np.random.Generator, n: int, colour: str, level_dbfs: float) -> np.ndarray:
    """``n`` samples of ``colour`` noise (spectrum shaped in the frequency domain) at an RMS of
    ``level_dbfs``."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    spectrum[1:] *= f[1:] ** (-NOISE_COLOURS[colour] / 2)
    spectrum[0] = 0.0
    x = np.fft.irfft(spectrum, n)
    x *= 10 ** (level_dbfs / 20) / max(float(np.sqrt(np.mean(x**2))), 1e-12)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _clap(rng: np.random.Generator, rate: int) -> np.ndarray:
    """One hand clap: a burst of noise of 10-30 ms decaying fast, band-passed around 0.8-2.5 kHz."""
    n = int(rng.uniform(0.01, 0.03) * rate)
    burst = rng.standard_normal(n) * np.exp(-np.arange(n) / (rng.uniform(0.002, 0.006) * rate))
    f = np.fft.rfftfreq(n, 1 / rate)
    centre, octaves = rng.uniform(800, 2500), rng.uniform(0.5, 1.5)
    band = np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / centre) / (octaves / 2)) ** 2)
    clap = np.fft.irfft(np.fft.rfft(burst) * band, n)
    return clap / max(float(np.abs(clap).max()), 1e-12)


def applause(rng: np.random.Generator, n: int, rate: int, claps_per_second: float, voices: int = 24) -> np.ndarray:
    """An audience clapping: a Poisson stream of claps, each one of ``voices`` clap sounds (people
    clap differently) at a random gain, uniformly spread over the clip."""
    sounds = [_clap(rng, rate) for _ in range(voices)]
    count = int(rng.poisson(claps_per_second * n / rate))
    at = rng.integers(0, n, count)
    who = rng.integers(0, voices, count)
    gain = 10 ** (rng.uniform(-20, 0, count) / 20)
    out = np.zeros(n + rate // 10)
    for a, w, g in zip(at.tolist(), who.tolist(), gain.tolist()):  # at most a few hundred claps
        clap = sounds[w]
        out[a : a + clap.size] += g * clap
    return out[:n].astype(np.float32)


def speech(rng: np.random.Generator, files: list[str], n: int, rate: int) -> np.ndarray:
    """Random speech files one after another with short gaps (0.15-0.7 s), each at its own
    gain, until the clip is full."""
    from mictag.corpus.recordings import decoded

    out = np.zeros(n, np.float32)
    t = int(rng.uniform(0.0, 0.5) * rate)
    while t < n:
        x = decoded(files[int(rng.integers(len(files)))], rate)
        gain = 10 ** (rng.uniform(-4, 0) / 20)
        out[t : t + x.size] += gain * x[: n - t]
        t += x.size + int(rng.uniform(0.15, 0.7) * rate)
    return out
