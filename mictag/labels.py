"""The 20 OpenMIC-2018 instrument classes and their many-to-one map from AudioSet's 527 classes.

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


@lru_cache(maxsize=None)
def openmic_audioset_map() -> dict[str, tuple[int, ...]]:
    """For each OpenMIC class, the AudioSet output indices whose scores it reduces."""
    text = resources.files(_DATA).joinpath("openmic_audioset_map.csv").read_text("utf-8")
    sources: dict[str, list[int]] = {label: [] for label in OPENMIC_LABELS}
    for row in csv.DictReader(text.splitlines()):
        sources[row["openmic_class"]].append(int(row["audioset_index"]))
    if any(not idx for idx in sources.values()):
        raise RuntimeError("the packaged OpenMIC/AudioSet map leaves a class without sources")
    return {label: tuple(idx) for label, idx in sources.items()}
