"""Where each of the 20 OpenMIC classes comes from: SoundFont presets (recorded samples of the
instrument, played from MIDI), drum kits (SoundFont kits and Hydrogen kits of recorded drums) and
one-shot recordings (sonic-pi-samples, lmms-common). One table, read by the builder and printed
into the corpus's SOURCES file.

Every entry is a *source*: the unit the train/val/test split is drawn over, so that no preset,
kit or recording is heard in two splits. A class with fewer than three sources (mandolin and
ukulele have one preset each) is split by register instead: its preset's low notes (its lower
sample zones) train, its high notes test, and the note says so.
"""

from __future__ import annotations

from dataclasses import dataclass

# SoundFonts: package, path below the unpacked root.
FONTS = {
    "musescore": ("musescore-general-soundfont", "usr/share/sounds/sf3/MuseScore_General_Full.sf3"),
    "timgm": ("timgm6mb-soundfont", "usr/share/sounds/sf2/TimGM6mb.sf2"),
    "avl-black-pearl": ("avldrums.lv2-soundfont", "usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2"),
    "avl-red-zeppelin": ("avldrums.lv2-soundfont", "usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2"),
    "csound": ("csound-soundfont", "usr/share/sounds/sf2/sf_GMbank.sf2"),
}
PACKAGES = ("musescore-general-soundfont", "timgm6mb-soundfont", "avldrums.lv2-soundfont", "hydrogen-drumkits",
            "sonic-pi-samples", "lmms-common")
# Not among the defaults: a sample family of its own (an EMU8000-era GS bank, public domain), kept
# out of training so that mictag's own held-out test has recordings no trained model has heard
# (`mictag corpus build --packages csound-soundfont`).
HELD_OUT_PACKAGES = ("csound-soundfont",)
LICENCE_NOTES = {
    # Its copyright file says it adapts Fluid (R3) Mono GM, which is also the source of two of the
    # packages kept for the independent evaluation: an evaluation on those shares sample lineage.
    "musescore-general-soundfont": "MIT (MuseScore General, by S. Christian Collins, adapted from Fluid (R3) "
                                   "Mono GM by Michael Cowgill and Frank Wen's Fluid (R3) GM)",
    "timgm6mb-soundfont": "GPL-2 (TimGM6mb, by Tim Brechbill)",
    "avldrums.lv2-soundfont": "CC-BY-SA 4.0 (AVL Drumkits, by Glen MacArthur)",
    "hydrogen-drumkits": "GPL-2+ and CC (see the package's copyright file, kit by kit)",
    "sonic-pi-samples": "CC0 (each sample from freesound.org)",
    "lmms-common": "GPL-2+",
    "alsa-utils": "only its spoken channel names (usr/share/sounds/alsa), the speech in negative clips",
    "csound-soundfont": "public domain (Csound's sf_GMbank.sf2, a GM/GS bank: \"Public Domain\" in its licence field)",
}


@dataclass(frozen=True)
class Preset:
    """A melodic SoundFont preset that plays ``label``."""

    label: str
    font: str
    bank: int
    program: int
    low: int  # MIDI range it plays in
    high: int
    role: str = "melody"  # melody | chords | bass | pad

    @property
    def id(self) -> str:
        return f"{self.font}:{self.bank}:{self.program}"


def _gm(label: str, programs, low: int, high: int, role: str = "melody", fonts=("musescore", "timgm"),
        extra: tuple[tuple[int, int], ...] = ()) -> list[Preset]:
    out = [Preset(label, font, 0, p, low, high, role) for p in programs for font in fonts]
    out += [Preset(label, "musescore", bank, p, low, high, role) for bank, p in extra]
    out += [Preset(label, "csound", 0, p, low, high, role) for p in programs]
    out += [Preset(label, "csound", bank, p, low, high, role) for bank, p in extra if bank == 8]
    return out


# (bank, program) beyond General MIDI's bank 0 are MuseScore General's own variations; the GS
# variations (bank 8, 16) are in the csound bank too where it has them (the catalogue keeps only
# the presets a font holds).
PRESETS: list[Preset] = [
    *_gm("accordion", (21, 23), 48, 84, "chords", extra=((8, 21), (17, 21))),
    *_gm("banjo", (105,), 48, 79, "chords"),
    *_gm("bass", (32, 33, 34, 35, 36, 37, 43), 28, 55, "bass", extra=((17, 43),)),
    *_gm("cello", (42,), 36, 72, extra=((17, 42),)),
    *_gm("clarinet", (71,), 50, 89, extra=((17, 71),)),
    *_gm("flute", (73,), 60, 96, extra=((17, 73),)),
    *_gm("guitar", (24, 25, 26, 27, 28, 29, 30), 40, 76, "chords", extra=((8, 25), (8, 26), (8, 28))),
    *_gm("mallet_percussion", (9, 11, 12, 13), 60, 96),
    Preset("mandolin", "musescore", 16, 25, 55, 88, "chords"),
    Preset("mandolin", "csound", 16, 25, 55, 88, "chords"),
    *_gm("organ", (16, 17, 18, 19, 20), 36, 84, "chords", extra=((8, 16), (8, 17), (8, 19), (17, 16))),
    *_gm("piano", (0, 1, 2, 3, 4), 36, 96, "chords", extra=((8, 0),)),
    *_gm("saxophone", (64, 65, 66, 67), 49, 80, extra=((17, 64), (17, 65), (17, 66))),
    *_gm("synthesizer", (80, 81, 82, 87, 88, 89, 90, 94), 36, 84, "pad"),
    *_gm("trombone", (57,), 40, 72, extra=((17, 57),)),
    *_gm("trumpet", (56, 59), 55, 82, extra=((17, 56),)),
    Preset("ukulele", "musescore", 8, 24, 60, 81, "chords"),
    Preset("ukulele", "csound", 8, 24, 60, 81, "chords"),
    *_gm("violin", (40,), 55, 96, extra=((8, 40), (17, 40))),
    *_gm("voice", (52, 53), 48, 79, "pad", extra=((17, 52), (17, 53))),
]

# Drum kits: SoundFont kits (General MIDI notes) and Hydrogen kits of recorded drums. Electronic
# kits (TR-808, Electronic) are left out: a drum machine is not OpenMIC's drum kit.
SOUNDFONT_KITS: list[tuple[str, int, int]] = [
    ("musescore", 128, p) for p in (0, 1, 2, 3, 8, 9, 16, 32, 33, 40, 41, 48)
] + [("timgm", 128, p) for p in (0, 8, 16, 32, 40, 48)] + [("avl-black-pearl", 0, 0), ("avl-red-zeppelin", 0, 0)] + [
    ("csound", 128, p) for p in (0, 8, 16, 32, 40, 48)]
HYDROGEN_DIR = "usr/share/hydrogen/data/drumkits"
ELECTRONIC_KITS = ("HardElectro1", "ElectricEmpireKit", "VariBreaks")  # drum-machine and breakbeat kits

# General MIDI drum notes by class: drums are the kit's drums, cymbals its cymbals and hi-hats.
DRUM_NOTES = {"kick": (35, 36), "snare": (38, 40, 37), "tom": (41, 43, 45, 47, 48, 50)}
CYMBAL_NOTES = {"hihat": (42, 44, 46), "ride": (51, 59, 53), "crash": (49, 57, 55, 52)}

# How real each hard class is (printed into SOURCES).
PROVENANCE = {
    "voice": "recorded sung vowels (GM Choir Aahs / Voice Oohs in MuseScore General and TimGM6mb, MuseScore's "
             "expressive choir) played as held chords, plus Sonic Pi's recorded choir: real voices, but no words",
    "ukulele": "one preset, MuseScore General's Ukulele (recorded plucked notes); split by register",
    "mandolin": "one preset, MuseScore General's Mandolin (recorded tremolo/plucked notes); split by register",
    "banjo": "GM Banjo in MuseScore General and TimGM6mb: recorded five-string banjo notes",
    "accordion": "GM Accordion and Tango Accordion (both fonts), MuseScore's Italian and expressive accordions: "
                 "recorded reeds",
}

