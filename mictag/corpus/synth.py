"""Rendering parts with FluidSynth's library (libfluidsynth, through ctypes): a SoundFont is loaded
once per process (MuseScore General's SF3 takes seconds to decompress) and every part after that
renders in milliseconds. Reverb and chorus are off (the corpus adds its own room).

FluidSynth works in blocks of 64 samples and applies an event at the next block, so events are
placed on block boundaries (4 ms at 16 kHz) and every render starts on one; the synth is reset
and run silent for a few blocks before each part. Even so a synth keeps some state from the notes
it played (an attack can differ by up to 1e-2 afterwards), so :func:`render_parts` renders each
clip on a synth of its own: the same clip gives the same samples whatever ran before, in any
worker. A process keeps one synth holding every SoundFont it has used, so that FluidSynth's
sample cache makes a new synth's load cheap (0.14 s for MuseScore General instead of 4 s)."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import numpy as np

from mictag.corpus.midi import START_CONTROLLERS, Part
from mictag.errors import MictagError

BLOCK = 64  # FluidSynth's internal block (FLUID_BUFSIZE): events take effect on these boundaries
SETTLE_BLOCKS = 16  # silent blocks after a reset, before a part


class SynthError(MictagError):
    """FluidSynth is missing or failed."""


def _library():
    name = ctypes.util.find_library("fluidsynth") or "libfluidsynth.so.3"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise SynthError("FluidSynth's library is not installed (Debian: apt-get install libfluidsynth3, "
                         "or the fluidsynth package)") from None
    p, i, d, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_char_p
    for name, res, args in (
        ("new_fluid_settings", p, []), ("delete_fluid_settings", None, [p]),
        ("fluid_settings_setnum", i, [p, s, d]), ("fluid_settings_setint", i, [p, s, i]),
        ("new_fluid_synth", p, [p]), ("delete_fluid_synth", None, [p]),
        ("fluid_synth_sfload", i, [p, s, i]), ("fluid_synth_program_select", i, [p, i, i, i, i]),
        ("fluid_synth_noteon", i, [p, i, i, i]), ("fluid_synth_noteoff", i, [p, i, i]),
        ("fluid_synth_cc", i, [p, i, i, i]), ("fluid_synth_system_reset", i, [p]),
        ("fluid_synth_set_gain", None, [p, ctypes.c_float]),
        ("fluid_synth_write_float", i, [p, i, p, i, i, p, i, i]),
        ("fluid_set_log_function", p, [i, p, p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    for level in (2, 3, 4):  # FLUID_WARN, INFO, DBG: e.g. "no preset on channel 9" before a program is chosen
        lib.fluid_set_log_function(level, None, None)
    return lib


class Synth:
    """One FluidSynth instance at ``sample_rate`` with SoundFonts loaded on first use."""

    def __init__(self, sample_rate: int = 16000):
        self.lib = _library()
        self.rate = sample_rate
        self.settings = self.lib.new_fluid_settings()
        self.lib.fluid_settings_setnum(self.settings, b"synth.sample-rate", float(sample_rate))
        self.lib.fluid_settings_setint(self.settings, b"synth.reverb.active", 0)
        self.lib.fluid_settings_setint(self.settings, b"synth.chorus.active", 0)
        self.lib.fluid_settings_setint(self.settings, b"synth.polyphony", 256)
        self.synth = self.lib.new_fluid_synth(self.settings)
        if not self.synth:
            raise SynthError("FluidSynth could not start a synthesizer")
        self.lib.fluid_synth_set_gain(self.synth, ctypes.c_float(0.5))
        self.fonts: dict[str, int] = {}
        self._clock = 0  # samples rendered since the synth was created

    def _run(self, left: np.ndarray, right: np.ndarray, start: int, n: int) -> None:
        self.lib.fluid_synth_write_float(self.synth, n, left[start:].ctypes.data, 0, 1, right[start:].ctypes.data, 0, 1)
        self._clock += n

    def _settle(self) -> None:
        """Reset, then run silent up to a block boundary and a few blocks more."""
        self.lib.fluid_synth_system_reset(self.synth)
        n = (-self._clock) % BLOCK + SETTLE_BLOCKS * BLOCK
        scratch = np.zeros(n, np.float32)
        self._run(scratch, scratch.copy(), 0, n)

    def font(self, path: str | Path) -> int:
        key = str(path)
        if key not in self.fonts:
            sfid = self.lib.fluid_synth_sfload(self.synth, key.encode(), 1)
            if sfid < 0:
                raise SynthError(f"FluidSynth cannot load the SoundFont {path}")
            self.fonts[key] = sfid
        return self.fonts[key]

    def render(self, font: str | Path, part: Part, seconds: float) -> np.ndarray:
        """``part`` (its notes in seconds: beats at 60 bpm) on ``font``, mono float32, ``seconds`` long."""
        lib, synth = self.lib, self.synth
        sfid = self.font(font)
        self._settle()
        ch = part.channel
        if lib.fluid_synth_program_select(synth, ch, sfid, part.bank, part.program) != 0:
            raise SynthError(f"{font} has no preset {part.bank}:{part.program}")
        lib.fluid_synth_cc(synth, ch, 7, part.volume)
        for cc, value in START_CONTROLLERS:
            lib.fluid_synth_cc(synth, ch, cc, value)
        at = lambda t: int(round(t * self.rate / BLOCK)) * BLOCK  # noqa: E731  (on a block boundary)
        events = []
        for n in part.notes:
            on = at(n.start)
            events.append((on, 1, n.pitch, n.velocity))
            events.append((max(on + BLOCK, at(n.start + n.length)), 0, n.pitch, 0))
        events.sort(key=lambda e: (e[0], e[1]))  # offs before ons at the same block
        total = -(-int(round(seconds * self.rate)) // BLOCK) * BLOCK
        left = np.zeros(total, np.float32)
        right = np.zeros(total, np.float32)
        now, k = 0, 0
        while now < total:
            while k < len(events) and events[k][0] <= now:
                _, on, pitch, vel = events[k]
                if on:
                    lib.fluid_synth_noteon(synth, ch, pitch, vel)
                else:
                    lib.fluid_synth_noteoff(synth, ch, pitch)
                k += 1
            until = min(total, events[k][0]) if k < len(events) else total
            self._run(left, right, now, until - now)
            now = until
        keep = int(round(seconds * self.rate))
        return 0.5 * (left[:keep] + right[:keep])

    def close(self) -> None:
        if self.synth:
            self.lib.delete_fluid_synth(self.synth)
            self.lib.delete_fluid_settings(self.settings)
            self.synth = self.settings = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_HOLDER: Synth | None = None


def render_parts(items: list[tuple[str | Path, Part]], seconds: float, sample_rate: int = 16000) -> list[np.ndarray]:
    """Each (SoundFont, part), in order, on a fresh synth: deterministic whatever was rendered before."""
    global _HOLDER
    if _HOLDER is None or _HOLDER.rate != sample_rate:
        _HOLDER = Synth(sample_rate)
    for font, _ in items:
        _HOLDER.font(font)  # keeps the font's samples in FluidSynth's cache for the fresh synth below
    synth = Synth(sample_rate)
    try:
        return [synth.render(font, part, seconds) for font, part in items]
    finally:
        synth.close()
