"""How the notes are played, for the "produced" corpus style: a band that drifts a little in tempo,
plays a dynamic curve over the clip (crescendo, decrescendo or swell), and no player exactly on
the grid or at one velocity.

A :class:`Performance` is drawn once per clip (tempo and dynamics are the band's), the timing
spread once per part; :func:`perform` applies them to a part's notes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from mictag.corpus.midi import Note

CURVES = ("crescendo", "decrescendo", "swell")
MAX_DRIFT = 0.03  # the local tempo moves at most this share away from the song's
JITTER_SECONDS = (0.005, 0.020)  # range of a part's timing spread (standard deviation)
NOTE_VELOCITY_SPREAD = 10  # each note's velocity moves up to this much either way
MIN_LENGTH = 0.01  # seconds


@dataclass(frozen=True)
class Performance:
    curve: str  # one of CURVES
    curve_depth: float  # velocity steps between the curve's middle and its ends
    drift: float  # the largest local change of tempo, a signed share (|drift| <= MAX_DRIFT)
    drift_slow: float  # 0..1: the share of the drift that is one slow wave (the rest: two)

    def to_dict(self) -> dict:
        return asdict(self)


def draw_performance(rng: np.random.Generator) -> Performance:
    return Performance(CURVES[int(rng.integers(len(CURVES)))], float(rng.uniform(10, 30)),
                       float(rng.uniform(-MAX_DRIFT, MAX_DRIFT)), float(rng.uniform(0, 1)))


def draw_jitter(rng: np.random.Generator) -> float:
    """A part's timing spread in seconds."""
    return float(rng.uniform(*JITTER_SECONDS))


def warp(t: np.ndarray, seconds: float, perf: Performance) -> np.ndarray:
    """Times moved by the tempo drift: t + w(t), where w(0) = w(seconds) = 0 (the clip keeps its
    length) and |w'| <= |drift|, so the local tempo is within that share of the song's."""
    phase = math.pi * np.asarray(t, np.float64) / seconds
    slow, fast = perf.drift_slow, 1 - perf.drift_slow
    return t + perf.drift * seconds / math.pi * (slow * np.sin(phase) + fast * np.sin(2 * phase) / 2)


def velocity_offset(t: np.ndarray, seconds: float, perf: Performance) -> np.ndarray:
    """The dynamic curve at times ``t``, in velocity steps: from -depth to +depth."""
    x = np.clip(np.asarray(t, np.float64) / seconds, 0.0, 1.0)
    shape = {"crescendo": 2 * x - 1, "decrescendo": 1 - 2 * x, "swell": 2 * np.sin(math.pi * x) - 1}[perf.curve]
    return perf.curve_depth * shape


def perform(notes: list[Note], seconds: float, perf: Performance, jitter: float,
            rng: np.random.Generator) -> list[Note]:
    """``notes`` as played: starts and ends through the tempo drift, starts jittered (normal, sd
    ``jitter`` seconds) and kept in [0, seconds), velocities along the curve plus a random step
    of up to ``NOTE_VELOCITY_SPREAD`` each way, kept in 1..127."""
    if not notes:
        return []
    start = np.array([n.start for n in notes])
    end = warp(start + np.array([n.length for n in notes]), seconds, perf)
    start = warp(start, seconds, perf)
    moved = np.clip(start + rng.normal(0.0, jitter, start.size), 0.0, max(0.0, seconds - 1e-3))
    length = np.maximum(end - start, MIN_LENGTH)  # the warped length; jitter moves the note whole
    spread = rng.integers(-NOTE_VELOCITY_SPREAD, NOTE_VELOCITY_SPREAD + 1, start.size)
    velocity = np.clip(np.round(np.array([n.velocity for n in notes]) + velocity_offset(moved, seconds, perf) + spread),
                       1, 127)
    return [Note(float(s), float(d), n.pitch, int(v)) for n, s, d, v in zip(notes, moved, length, velocity)]
