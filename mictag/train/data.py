"""Labelled data sets: OpenMIC-2018 in its official layout, and a user's own folder + CSV.

Both give :class:`Splits` of :class:`Example` (audio path, soft targets, label mask). Labels not
given stay masked, as OpenMIC's missing labels are: they never reach the loss or the metric.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mictag.errors import MictagError
from mictag.labels import OPENMIC_LABELS

OPENMIC_NPZ = "openmic-2018.npz"
OPENMIC_TRAIN = "partitions/split01_train.csv"
OPENMIC_TEST = "partitions/split01_test.csv"
FOLDER_CSV = "labels.csv"


class DatasetError(MictagError):
    """A data set path, layout or file is missing or malformed."""


@dataclass(frozen=True)
class Example:
    key: str
    path: Path
    target: np.ndarray  # (labels,) float32 in [0, 1]; soft where the source is
    mask: np.ndarray  # (labels,) bool: True where the label is known


@dataclass
class Splits:
    labels: tuple[str, ...]
    train: list[Example] = field(default_factory=list)
    val: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)

    def split(self, name: str) -> list[Example]:
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {name!r}: choose train, val or test")
        return getattr(self, name)


def carve_validation(keys: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of ``keys`` into (train, validation) with ``fraction`` held out."""
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"validation fraction must be in [0, 1), not {fraction}")
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = int(round(fraction * len(keys)))
    val = {keys[i] for i in order[:n_val]}
    return [k for k in keys if k not in val], [k for k in keys if k in val]


def _read_keys(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"OpenMIC partition file {path} is missing")
    with path.open(newline="", encoding="utf-8") as f:
        keys = [row[0].strip() for row in csv.reader(f) if row and row[0].strip()]
    if not keys:
        raise DatasetError(f"OpenMIC partition file {path} lists no keys")
    return keys


def open_openmic(root: str | Path, val_fraction: float = 0.15, seed: int = 0) -> Splits:
    """OpenMIC-2018: ``audio/{key[:3]}/{key}.ogg``, ``openmic-2018.npz`` (Y_true, Y_mask,
    sample_key), ``partitions/split01_{train,test}.csv``; a seeded validation split is carved
    from train."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"OpenMIC root {root} is not a directory")
    npz_path = root / OPENMIC_NPZ
    if not npz_path.is_file():
        raise DatasetError(f"{npz_path} is missing: is {root} an OpenMIC-2018 directory?")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            missing = [k for k in ("Y_true", "Y_mask", "sample_key") if k not in npz.files]
            if missing:
                raise DatasetError(f"{npz_path} lacks {', '.join(missing)}")
            y_true, y_mask, keys = npz["Y_true"], npz["Y_mask"], npz["sample_key"]
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot read {npz_path}: {exc}") from exc
    n, k = len(keys), len(OPENMIC_LABELS)
    if y_true.shape != (n, k) or y_mask.shape != (n, k):
        raise DatasetError(f"{npz_path}: Y_true {y_true.shape} and Y_mask {y_mask.shape} must both be ({n}, {k})")
    class_map = root / "class-map.json"
    if class_map.is_file():
        mapping = json.loads(class_map.read_text("utf-8"))
        order = tuple(sorted(mapping, key=mapping.get))
        if order != OPENMIC_LABELS:
            raise DatasetError(f"{class_map} does not list the 20 OpenMIC classes in their standard order")
    index = {str(key): i for i, key in enumerate(keys)}

    def examples(split_keys: list[str], source: str) -> list[Example]:
        unknown = [key for key in split_keys if key not in index]
        if unknown:
            raise DatasetError(f"{source} names {len(unknown)} keys absent from {npz_path.name}, e.g. {unknown[0]}")
        out = []
        for key in split_keys:
            i = index[key]
            out.append(Example(key, root / "audio" / key[:3] / f"{key}.ogg",
                               y_true[i].astype(np.float32), y_mask[i].astype(bool)))
        absent = [e.path for e in out if not e.path.is_file()]
        if absent:
            raise DatasetError(f"{len(absent)} audio files of {source} are missing, e.g. {absent[0]}")
        return out

    train_keys, val_keys = carve_validation(_read_keys(root / OPENMIC_TRAIN), val_fraction, seed)
    return Splits(
        labels=OPENMIC_LABELS,
        train=examples(train_keys, OPENMIC_TRAIN),
        val=examples(val_keys, OPENMIC_TRAIN),
        test=examples(_read_keys(root / OPENMIC_TEST), OPENMIC_TEST),
    )


def _label_value(text: str, where: str) -> tuple[float, bool]:
    text = text.strip().lower()
    if text in ("", "?", "na", "nan", "unknown"):
        return 0.5, False
    if text in ("yes", "true", "y"):
        return 1.0, True
    if text in ("no", "false", "n"):
        return 0.0, True
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: label value {text!r} is not 0/1, a probability, yes/no or blank") from None
    if not 0.0 <= value <= 1.0:
        raise DatasetError(f"{where}: label value {value} is outside [0, 1]")
    return value, True


def open_folder(path: str | Path, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> Splits:
    """A user's own labelled folder: ``labels.csv`` with a ``file`` column (paths relative to the
    CSV) and one column per class holding 1/0 (or yes/no, or a probability); a blank cell is an
    unknown label, masked. An optional ``split`` column (train/val/test) fixes the splits;
    otherwise they are drawn with ``seed``."""
    path = Path(path)
    csv_path = path / FOLDER_CSV if path.is_dir() else path
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path} is missing: a labelled folder needs a {FOLDER_CSV} (file, one column per class)")
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    if "file" not in header:
        raise DatasetError(f"{csv_path} has no 'file' column (header: {', '.join(header) or 'empty'})")
    labels = tuple(h for h in header if h not in ("file", "split"))
    if not labels:
        raise DatasetError(f"{csv_path} has no label columns besides 'file'")
    if not rows:
        raise DatasetError(f"{csv_path} lists no files")
    base = csv_path.parent
    examples, splits = [], []
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path}:{line}"
        audio = base / (row["file"] or "").strip()
        if not row["file"] or not audio.is_file():
            raise DatasetError(f"{where}: audio file {audio} does not exist")
        values = [_label_value(row.get(label) or "", f"{where} ({label})") for label in labels]
        examples.append(Example(row["file"].strip(), audio, np.array([v for v, _ in values], np.float32),
                                np.array([m for _, m in values], bool)))
        split = (row.get("split") or "").strip().lower()
        if split and split not in ("train", "val", "test"):
            raise DatasetError(f"{where}: split {split!r} must be train, val or test")
        splits.append(split)
    out = Splits(labels=labels)
    if any(splits):
        if not all(splits):
            raise DatasetError(f"{csv_path}: the split column must be filled on every row or on none")
        for example, split in zip(examples, splits):
            out.split(split).append(example)
        return out
    order = np.random.default_rng(seed).permutation(len(examples))
    n_test = int(round(test_fraction * len(examples)))
    n_val = int(round(val_fraction * len(examples)))
    for rank, i in enumerate(order):
        name = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        out.split(name).append(examples[i])
    return out


def open_dataset(path: str | Path, fmt: str = "auto", val_fraction: float = 0.15, seed: int = 0) -> Splits:
    """Open ``path`` as ``openmic`` or ``folder`` (``auto``: OpenMIC if it holds the npz)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data path {path} does not exist")
    if fmt == "auto":
        fmt = "openmic" if (path / OPENMIC_NPZ).exists() else "folder"
    if fmt == "openmic":
        return open_openmic(path, val_fraction, seed)
    if fmt == "folder":
        return open_folder(path, val_fraction, seed=seed)
    raise DatasetError(f"unknown data format {fmt!r}: choose openmic, folder or auto")
