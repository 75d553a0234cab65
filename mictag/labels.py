"""The 20 OpenMIC-2018 instrument classes, the source classes of each frozen backbone (AudioSet's
527 for the AST, MagnaTagATune's 50 tags for musicnn) and the many-to-one maps between them.

Defined once here; training, export and runtime all read them from this module.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources

# OpenMIC-2018 class-map.json order (alphabetical): index i is column i of Y_true / Y_mask.
OPENMIC_LABELS: tuple[str, ...] = (
    "accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
    "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
    "trumpet", "ukulele", "violin", "voice",
)

AUDIOSET_NUM_CLASSES = 527

# The 50 MagnaTagATune tags of musicnn's MTT models, by output index (musicnn's configuration.py).
MTT_LABELS: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
    "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop",
    "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice",
    "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice", "choral",
)
_DATA = "mictag.data"


@lru_cache(maxsize=None)
def audioset_labels() -> tuple[str, ...]:
    """AudioSet's 527 display names, by output index (CC BY 4.0 ontology)."""
    text = resources.files(_DATA).joinpath("audioset_class_labels_indices.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    names = [""] * len(rows)
    for row in rows:
        names[int(row["index"])] = row["display_name"]
    if len(names) != AUDIOSET_NUM_CLASSES or not all(names):
        raise RuntimeError("the packaged AudioSet label table is damaged")
    return tuple(names)


def _read_map(name: str, index_column: str, num_source: int) -> dict[str, tuple[int, ...]]:
    text = resources.files(_DATA).joinpath(name).read_text("utf-8")
    sources: dict[str, list[int]] = {}
    for row in csv.DictReader(text.splitlines()):
        label, index = row["openmic_class"], int(row[index_column])
        if label not in OPENMIC_LABELS or not 0 <= index < num_source:
            raise RuntimeError(f"the packaged map {name} is damaged at {row}")
        sources.setdefault(label, []).append(index)
    return {label: tuple(sources[label]) for label in OPENMIC_LABELS if label in sources}


@lru_cache(maxsize=None)
def openmic_audioset_map() -> dict[str, tuple[int, ...]]:
    """For each OpenMIC class, the AudioSet output indices whose scores it reduces."""
    table = _read_map("openmic_audioset_map.csv", "audioset_index", AUDIOSET_NUM_CLASSES)
    if len(table) != len(OPENMIC_LABELS):
        raise RuntimeError("the packaged OpenMIC/AudioSet map leaves a class without sources")
    return table


@lru_cache(maxsize=None)
def openmic_mtt_map() -> dict[str, tuple[int, ...]]:
    """The OpenMIC classes MagnaTagATune's tags can express, each with its tag indices. The other
    twelve (accordion, banjo, bass, clarinet, cymbals, ...) have no tag: they stay absent."""
    return _read_map("openmic_mtt_map.csv", "mtt_index", len(MTT_LABELS))
