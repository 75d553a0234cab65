"""What the parts play: a key, a tempo, a chord progression, and per role a seeded line of notes
(melody, chords, bass, pad) or a drum pattern (drums, cymbals or both); or, for the one-shots
style, one isolated note, chord or hit every slot, as a sample library's files sound."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mictag.corpus.instruments import CYMBAL_NOTES, DRUM_NOTES
from mictag.corpus.midi import Note

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = ((0, 4, 5, 3), (0, 3, 4, 4), (5, 3, 0, 4), (0, 5, 3, 4), (0, 3, 5, 4), (1, 4, 0, 0))


@dataclass(frozen=True)
class Song:
    root: int  # 0..11
    minor: bool
    bpm: float
    progression: tuple[int, ...]
    seconds: float

    @property
    def beat(self) -> float:
        return 60.0 / self.bpm

    @property
    def scale(self) -> tuple[int, ...]:
        return MINOR if self.minor else MAJOR

    def chord_at(self, t: float) -> int:
        """The scale degree of the chord sounding at ``t`` (one chord a bar of 4 beats)."""
        bar = int(t // (4 * self.beat))
        return self.progression[bar % len(self.progression)]

    def pitches(self, degree: int, low: int, high: int, size: int = 3) -> list[int]:
        """A triad (or ``size`` notes) on ``degree``, in [low, high]."""
        out = []
        for k in range(size):
            d = degree + 2 * k
            pc = self.root + self.scale[d % 7] + 12 * (d // 7)
            out.append(pc)
        base = low + ((out[0] - low) % 12)
        chord = [base + (p - out[0]) for p in out]
        while chord[-1] > high and chord[0] - 12 >= low:
            chord = [p - 12 for p in chord]
        return [p for p in chord if low <= p <= high] or [base]

    def scale_notes(self, low: int, high: int) -> list[int]:
        return [p for p in range(low, high + 1) if (p - self.root) % 12 in self.scale]


def new_song(rng: np.random.Generator, seconds: float) -> Song:
    return Song(int(rng.integers(12)), bool(rng.random() < 0.4), float(rng.uniform(70, 160)),
                PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))], seconds)


def _window(rng, low: int, high: int, span: int = 19) -> tuple[int, int]:
    """A register of about an octave and a half inside [low, high]."""
    if high - low <= span:
        return low, high
    start = int(rng.integers(low, high - span + 1))
    return start, start + span


def line(rng: np.random.Generator, song: Song, role: str, low: int, high: int) -> list[Note]:
    """Notes for a melodic ``role`` in [low, high]: varied velocity and articulation."""
    lo, hi = _window(rng, low, high)
    beat, notes = song.beat, []
    legato = rng.random() < 0.5
    base_vel = int(rng.integers(55, 110))
    vel = lambda: int(np.clip(base_vel + rng.normal(0, 10), 20, 127))  # noqa: E731
    t = float(rng.uniform(0, 0.5)) * beat
    if role == "melody":
        scale = song.scale_notes(lo, hi) or [lo]
        i = int(rng.integers(len(scale)))
        while t < song.seconds:
            step = beat * float(rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 2.0]))
            if rng.random() < 0.15:  # a rest
                t += step
                continue
            i = int(np.clip(i + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 0, len(scale) - 1))
            notes.append(Note(t, step * (0.95 if legato else 0.5), scale[i], vel()))
            t += step
    elif role == "chords":
        strum = float(rng.uniform(0.0, 0.03))  # seconds between the strings of a strum
        every = beat * float(rng.choice([1.0, 2.0, 0.5]))
        while t < song.seconds:
            for k, p in enumerate(song.pitches(song.chord_at(t), lo, hi, size=int(rng.integers(3, 5)))):
                notes.append(Note(t + k * strum, every * (0.9 if legato else 0.45), p, vel()))
            t += every
    elif role == "bass":
        every = beat * float(rng.choice([1.0, 2.0, 0.5]))
        while t < song.seconds:
            p = song.pitches(song.chord_at(t), lo, hi, size=1)[0]
            if rng.random() < 0.25:
                p = min(hi, p + 7) if p + 7 <= hi else p
            notes.append(Note(t, every * (0.9 if legato else 0.5), p, vel()))
            t += every
    else:  # pad: held chords, one a bar
        bar = 4 * beat
        t = 0.0
        while t < song.seconds:
            for p in song.pitches(song.chord_at(t), lo, hi, size=3):
                notes.append(Note(t, bar * 0.98, p, vel()))
            t += bar
    return notes


def drum_pattern(rng: np.random.Generator, song: Song, pieces: str) -> list[Note]:
    """A groove: ``pieces`` is "drums" (kick, snare, toms), "cymbals" (hi-hat, ride, crash) or
    "both"."""
    beat, notes = song.beat, []
    kick, snare, tom = (DRUM_NOTES[k][int(rng.integers(len(DRUM_NOTES[k])))] for k in ("kick", "snare", "tom"))
    hat = CYMBAL_NOTES["hihat"][int(rng.integers(2))]
    ride, crash = CYMBAL_NOTES["ride"][0], CYMBAL_NOTES["crash"][int(rng.integers(2))]
    keep = rng.random() < 0.5  # ride instead of hi-hat
    swing = float(rng.uniform(0, 0.08)) * beat
    t, n = 0.0, 0
    while t < song.seconds:
        pos = n % 8  # eighth notes in a bar
        eighth = t + (swing if pos % 2 else 0.0)
        v = lambda lo, hi: int(rng.integers(lo, hi))  # noqa: E731
        if pieces in ("drums", "both"):
            if pos in (0, 4) or (pos == 5 and rng.random() < 0.3):
                notes.append(Note(eighth, 0.1, kick, v(90, 127)))
            if pos in (2, 6):
                notes.append(Note(eighth, 0.1, snare, v(80, 120)))
            if pos == 7 and rng.random() < 0.2:
                notes.append(Note(eighth, 0.1, tom, v(70, 110)))
        if pieces in ("cymbals", "both"):
            notes.append(Note(eighth, 0.1, ride if keep else hat, v(50, 100)))
            if pos == 0 and n % 32 == 0:
                notes.append(Note(eighth, 0.5, crash, v(80, 120)))
        t += beat / 2
        n += 1
    return notes


def one_shots(rng: np.random.Generator, song: Song, slot: float, role: str, low: int = 0, high: int = 127,
              pieces: str | None = None) -> list[Note]:
    """One isolated sound at the start of every ``slot`` seconds, then its decay and silence: a
    note (a strummed chord, half the time, for the ``chords`` role) for a melodic ``role`` in
    [low, high], or one drum (``pieces`` "drums": kick, snare or tom) or cymbal (hi-hat, ride or
    crash) hit. Each with its own pitch, length and velocity."""
    lo, hi = _window(rng, low, high)
    kinds = {"drums": DRUM_NOTES, "cymbals": CYMBAL_NOTES}.get(pieces or "")
    notes, t = [], 0.0
    while t < song.seconds:
        onset = t + float(rng.uniform(0.0, 0.05))
        velocity = int(rng.integers(40, 128))
        if kinds is not None:
            group = list(kinds)[int(rng.integers(len(kinds)))]
            pitch = kinds[group][int(rng.integers(len(kinds[group])))]
            notes.append(Note(onset, 0.5 if group == "crash" else 0.1, pitch, velocity))
        else:
            length = float(rng.uniform(0.2, max(0.3, min(2.0, slot - 0.5))))
            if role == "chords" and rng.random() < 0.5:
                strum = float(rng.uniform(0.0, 0.03))
                chord = song.pitches(int(rng.integers(7)), lo, hi, size=int(rng.integers(3, 5)))
                notes += [Note(onset + k * strum, length, p, velocity) for k, p in enumerate(chord)]
            else:
                notes.append(Note(onset, length, int(rng.integers(lo, hi + 1)), velocity))
        t += slot
    return notes
