"""Builders of small real data sets for tests: real OGG Vorbis files whose content depends on
their labels, in the OpenMIC-2018 layout or the folder + labels.csv layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from mictag.labels import OPENMIC_LABELS

RATE = 22050  # not 16 kHz: the reader must resample; stereo: it must downmix


def instrument_sound(label_index: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A class-dependent sound: a harmonic tone whose pitch and brightness identify the class."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 110.0 * 2 ** (label_index / 4.0)  # 20 classes over 5 octaves
    tone = sum((0.6 ** h) * np.sin(2 * np.pi * f0 * (h + 1) * t + rng.uniform(0, 6.28)) for h in range(4))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * t) ** 2
    return (tone * envelope).astype(np.float32)


def clip(active: list[int], seconds: float, rng: np.random.Generator) -> np.ndarray:
    mono = 0.01 * rng.standard_normal(int(seconds * RATE)).astype(np.float32)
    for i in active:
        mono += 0.25 * instrument_sound(i, seconds, rng)
    mono /= max(1.0, float(np.abs(mono).max()) / 0.9)
    gains = rng.uniform(0.7, 1.0, size=2).astype(np.float32)
    return np.stack([mono * gains[0], mono * gains[1]], axis=1)


def labelled_clips(n: int, seed: int, n_classes: int = 20, reveal: float = 0.1):
    """(active instruments, soft targets, mask) for n clips; about (1 - reveal) of labels masked,
    with positives revealed more often than negatives, as in OpenMIC's annotation."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        active = sorted(rng.choice(n_classes, size=int(rng.integers(1, 4)), replace=False).tolist())
        target = np.zeros(n_classes, np.float32)
        target[active] = 1.0
        mask = rng.random(n_classes) < reveal
        mask[active] |= rng.random(len(active)) < 0.6
        if not mask.any():
            mask[active[0]] = True
        soft = np.where(target > 0, rng.uniform(0.6, 1.0, n_classes), rng.uniform(0.0, 0.4, n_classes))
        yield active, np.where(mask, soft, 0.5).astype(np.float32), mask, rng


def make_openmic(root: Path, n_train: int = 240, n_test: int = 80, seconds: float = 1.5, seed: int = 0) -> Path:
    """A small OpenMIC-2018 directory: audio/{key[:3]}/{key}.ogg, openmic-2018.npz,
    class-map.json and partitions/split01_{train,test}.csv."""
    root = Path(root)
    keys, y_true, y_mask = [], [], []
    for n, (active, target, mask, rng) in enumerate(labelled_clips(n_train + n_test, seed)):
        key = f"{(n * 7919) % 1000:03d}_{n:06d}"
        path = root / "audio" / key[:3] / f"{key}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, clip(active, seconds, rng), RATE, format="OGG", subtype="VORBIS")
        keys.append(key)
        y_true.append(target)
        y_mask.append(mask)
    order = np.argsort(keys)
    keys_sorted = np.array(keys)[order]
    np.savez(root / "openmic-2018.npz", X=np.zeros((len(keys), 10, 128), np.uint8),
             Y_true=np.stack(y_true)[order], Y_mask=np.stack(y_mask)[order], sample_key=keys_sorted)
    (root / "class-map.json").write_text(json.dumps({label: i for i, label in enumerate(OPENMIC_LABELS)}))
    (root / "partitions").mkdir(exist_ok=True)
    (root / "partitions" / "split01_train.csv").write_text("\n".join(keys[:n_train]) + "\n")
    (root / "partitions" / "split01_test.csv").write_text("\n".join(keys[n_train:]) + "\n")
    return root


def make_folder(root: Path, labels: tuple[str, ...] = ("low", "mid", "high"), n: int = 90,
                seconds: float = 1.5, seed: int = 1) -> Path:
    """A user's labelled folder: nested audio files and labels.csv (blank = unknown)."""
    root = Path(root)
    rows = []
    for n_i, (active, target, mask, rng) in enumerate(labelled_clips(n, seed, n_classes=len(labels), reveal=0.7)):
        rel = Path("set a" if n_i % 2 else "set_b") / f"clip {n_i:03d}.ogg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, clip([6 * a for a in active], seconds, rng), RATE, format="OGG", subtype="VORBIS")
        cells = ["" if not m else ("1" if t >= 0.5 else "0") for t, m in zip(target, mask)]
        rows.append([rel.as_posix(), *cells])
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *labels])
        writer.writerows(rows)
    return root
