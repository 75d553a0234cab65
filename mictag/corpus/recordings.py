"""One-shot recordings of real instruments (sonic-pi-samples, CC0; lmms-common, GPL-2+), labelled by
their file names through one ordered rule table, and played into a clip as hits or phrases.

The rule table is shared with the real-instruments experiment (``experiments/real_instruments.py``),
which cuts the same recordings into a test set of real audio.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# (regex searched in the lower-cased path below usr/share/, OpenMIC label or None = drop, why).
# The first match wins, so drops that carve exceptions out of a later keep come first.
RULES: list[tuple[str, str | None, str]] = [
    (r"^sonic-pi/buffers/", None, "random-noise buffer, not an instrument"),
    (r"/(shapes|waveforms)/", None, "single-cycle oscillator / LFO waveforms: synthetic"),
    (r"/(basses|bassloops)/", None, "LMMS bass hits and loops (acid, rave, TB-303, techno): synthesizers"),
    (r"/stringsnpads/", None, "string ensembles and synth/choir pads: ensemble or synthetic"),
    (r"/beats/", None, "drum-machine hits and loops mixing kit pieces (drums + cymbals in one file)"),
    (r"/(effects|misc)/", None, "sound effects, crowd, applause, metronome, breath: no OpenMIC class"),
    (r"/(elec|glitch|mehackit|vinyl|misc)_", None, "Sonic Pi electronic, glitch, robot, vinyl, misc sounds"),
    (r"/bass_", None, "Sonic Pi bass set (dnb, trance, drop, voxy...): synth basses"),
    (r"/ambi_(?!choir|piano)", None, "ambient textures and drones: no single instrument"),
    (r"/loop_(?!tabla)", None, "loops: full kits (drums + cymbals), electronic or found sounds"),
    (r"/(bd|sn)_", None, "Sonic Pi production kicks/snares (808, haus, tek, dub...): mostly electronic"),
    (r"/perc_", None, "bells, door, snaps, impacts, till: no OpenMIC class"),
    (r"/(kick_(distorted|hardcore|hiphop)|snare_(electro|hiphop|harsh)|nasty_)", None,
     "electronic or heavily processed drum hits"),
    (r"/(clap|clav|shaker|wood|zap)\d", None, "handclap, claves, shaker, woodblock, zap: no OpenMIC class"),
    (r"cowbell", None, "cowbell: no OpenMIC class"),
    (r"harpsichord", None, "harpsichord: no OpenMIC class"),
    (r"latin_brass", None, "brass section: several instruments"),
    (r"(drums/|drum_)(hihat|cymbal|crash|ride|splash)", "cymbals", "hi-hats, crash/ride/splash cymbals"),
    (r"(drums/|drum_)(kick|bassdrum|bass_|heavy_kick|snare|tom|rim|sidestick|roll)", "drums",
     "acoustic kit drums: kick, snare (rim shots, roll), toms"),
    (r"tabla", "drums", "tabla strokes and a tabla-only loop: AudioSet files Tabla under Drum"),
    (r"bassslap", "bass", "slap electric bass guitar"),
    (r"cello", "cello", "solo cello"),
    (r"organ", "organ", "church pipe organ, electric organ"),
    (r"piano", "piano", "acoustic and electric piano (OpenMIC piano includes Electric piano)"),
    (r"flute", "flute", "solo flute"),
    (r"guit", "guitar", "steel, Latin (acoustic) and electric guitar, clean or distorted"),
    (r"trumpet", "trumpet", "solo trumpet"),
    (r"violin", "violin", "solo violin: fingered, double stop, pizzicato"),
    (r"choir", "voice", "sung choir"),
]
_RULES = [(re.compile(pattern), label, why) for pattern, label, why in RULES]
# Processed copies of one take share its split: LMMS's steel_guitar_{heavy,medium,slight}_distorted01
# are steel_guitar01 through distortion (waveform correlation up to 0.9 between them).
_SAME_TAKE = re.compile(r"_(heavy|medium|slight)_distorted(?=\d)")



def label_for(path: str) -> tuple[str | None, str]:
    """(label or None, why) from the first rule matching ``path`` (below usr/share/)."""
    lowered = path.lower()
    for pattern, label, why in _RULES:
        if pattern.search(lowered):
            return label, why
    return None, "no rule: not recognisably one OpenMIC instrument"


AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff"}


def take(source_id: str) -> str:
    """The recording a file is a (processed) copy of: copies share a split."""
    return _SAME_TAKE.sub("", source_id)


def find_recordings(roots: dict[str, Path]) -> list[tuple[str, str, Path]]:
    """(source id "<package>/<path below usr/share>", label, path) of every labelled audio file."""
    found = []
    for package, root in sorted(roots.items()):
        share = root / "usr" / "share"
        if package not in ("sonic-pi-samples", "lmms-common") or not share.is_dir():
            continue
        for path in sorted(p for p in share.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
            rel = path.relative_to(share).as_posix()
            label, _ = label_for(rel)
            if label is not None:
                found.append((f"{package}/{rel}", label, path))
    return found


_DECODED: dict[str, np.ndarray] = {}


def decoded(path: str, rate: int) -> np.ndarray:
    """A sample file as mono 16 kHz float32, decoded once per process (empty if it cannot be)."""
    from mictag import audio

    if rate != audio.TARGET_RATE:
        raise ValueError(f"samples play at {audio.TARGET_RATE} Hz, not {rate}")
    if path not in _DECODED:
        try:
            _DECODED[path] = audio.load(path)
        except audio.AudioError:
            _DECODED[path] = np.zeros(0, np.float32)
    return _DECODED[path]


def render_recording(path: str, rng: np.random.Generator, beat: float, seconds: float, rate: int = 16000,
                     pitched: bool = True, every: float | None = None) -> np.ndarray:
    """The recording played through the clip: a short one as hits on the beat (pitched ones moved
    by up to three semitones a hit, by resampling), a long one as phrases from random offsets.
    With ``every`` (the one-shots style): one hit (or phrase) at the start of every ``every``
    seconds, cut at the next one, then silence."""
    x = decoded(path, rate)
    n = int(round(seconds * rate))
    out = np.zeros(n + rate, np.float32)
    if x.size == 0:
        return out[:n]
    short = x.size < 1.5 * rate
    t = float(rng.uniform(0, beat)) if every is None else float(rng.uniform(0.0, 0.05))
    while t < seconds:
        if short:
            hit = x
            if pitched:
                ratio = 2 ** (int(rng.integers(-3, 4)) / 12)
                idx = np.arange(0, x.size - 1, ratio)
                hit = np.interp(idx, np.arange(x.size), x).astype(np.float32)
            gain = float(rng.uniform(0.5, 1.0))
            step = beat * float(rng.choice([1.0, 2.0, 0.5]))
        else:
            start = int(rng.integers(0, max(1, x.size - rate)))
            hit = x[start : start + int(rng.uniform(2.0, 6.0) * rate)]
            gain, step = 1.0, hit.size / rate + float(rng.uniform(0.0, 0.5))
        if every is not None:  # one sound a slot: it ends where the next slot starts
            gain = float(rng.uniform(0.3, 1.0))
            hit = hit[: max(1, int((every - t % every) * rate))]
            step = every - t % every + float(rng.uniform(0.0, 0.05))
        at = int(t * rate)
        if at < n:
            out[at : at + hit.size] += gain * hit[: out.size - at]
        t += step
    return out[:n]
