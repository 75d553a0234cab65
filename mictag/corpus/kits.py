"""Hydrogen drum kits (recorded drums, a sample file per hit and velocity layer) played from the
same General MIDI drum notes as the SoundFont kits."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mictag.corpus.instruments import CYMBAL_NOTES, DRUM_NOTES, ELECTRONIC_KITS
from mictag.corpus.midi import Note

# Instrument names -> piece, the first match wins (hydrogen kits name them freely).
PIECES = (("hihat", r"hi.?hat|\bhh\b|\bhat"), ("ride", r"\bride"), ("crash", r"crash|china|splash|cymbal"),
          ("kick", r"kick|bass ?drum|\bbd\b|^bd|bd_"), ("snare", r"snare|\bsn\b|^sd|rim"), ("tom", r"\btom"))
NOTE_PIECE = {n: piece for piece, notes in {**DRUM_NOTES, **CYMBAL_NOTES}.items() for n in notes}


@dataclass
class Kit:
    name: str
    folder: Path
    # piece -> list of velocity layers: (min, max, file)
    pieces: dict[str, list[tuple[float, float, Path]]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"hydrogen:{self.name}"

    def has(self, what: str) -> bool:
        need = {"drums": ("kick", "snare"), "cymbals": ("hihat", "ride", "crash")}
        if what == "both":
            return self.has("drums") and self.has("cymbals")
        return any(p in self.pieces for p in need[what]) if what == "cymbals" else all(p in self.pieces for p in need[what])


def _piece(name: str) -> str | None:
    lowered = name.lower()
    return next((piece for piece, pattern in PIECES if re.search(pattern, lowered)), None)


def read_kit(folder: Path) -> Kit | None:
    """A kit's pieces from its drumkit.xml, or None for a kit of no use here."""
    xml = folder / "drumkit.xml"
    if folder.name in ELECTRONIC_KITS or not xml.is_file():
        return None
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError:
        return None
    ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
    kit = Kit(folder.name, folder)
    for inst in root.iter(f"{ns}instrument"):
        name = inst.findtext(f"{ns}name") or ""
        piece = _piece(name)
        if piece is None or piece in kit.pieces:
            continue
        layers = []
        for layer in inst.iter(f"{ns}layer"):
            file = folder / (layer.findtext(f"{ns}filename") or "")
            if file.is_file():
                layers.append((float(layer.findtext(f"{ns}min") or 0), float(layer.findtext(f"{ns}max") or 1), file))
        if not layers:  # old kits name one file on the instrument itself
            file = folder / (inst.findtext(f"{ns}filename") or "")
            if file.is_file():
                layers.append((0.0, 1.0, file))
        if layers:
            kit.pieces[piece] = sorted(layers)
    return kit if kit.has("drums") or kit.has("cymbals") else None


def find_kits(drumkits_dir: Path) -> list[Kit]:
    return [k for k in (read_kit(d) for d in sorted(drumkits_dir.iterdir()) if d.is_dir()) if k is not None]


_SAMPLES: dict[Path, np.ndarray] = {}


def _sample(path: Path, rate: int) -> np.ndarray:
    """A hit as mono float32 at ``rate`` (the runtime's decoder: mean downmix, soxr), at most 3 s."""
    from mictag import audio

    if rate != audio.TARGET_RATE:
        raise ValueError(f"kits render at {audio.TARGET_RATE} Hz, not {rate}")
    if path not in _SAMPLES:
        _SAMPLES[path] = audio.load(path)[: 3 * rate]
    return _SAMPLES[path]


def render_kit(kit: Kit, notes: list[Note], seconds: float, rate: int = 16000) -> np.ndarray:
    """The notes on ``kit``: each hit is its piece's sample for the note's velocity, added at its time."""
    out = np.zeros(int(round(seconds * rate)) + 3 * rate, np.float32)
    for n in notes:
        piece = NOTE_PIECE.get(n.pitch)
        layers = kit.pieces.get(piece or "")
        if not layers and piece in ("ride", "crash"):
            layers = kit.pieces.get("crash" if piece == "ride" else "ride")
        if not layers:
            continue
        v = n.velocity / 127
        file = next((f for lo, hi, f in layers if lo <= v <= hi), layers[-1][2])
        hit = _sample(file, rate)
        at = int(round(n.start * rate))
        out[at : at + hit.size] += hit[: out.size - at] * (0.4 + 0.6 * v)
    return out[: int(round(seconds * rate))]
