"""The v2 tagger study's scoring (experiments/musicnn_features.py, musicnn_v2.py, scan_metrics.py):
labels read as the study reads them, file scores as the scan makes them, and metrics of the tags a
scan wrote, on hand-made data whose answers are known."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mictag.labels import OPENMIC_LABELS
from mictag.output.rows import columns

_EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name: str):
    if str(_EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(_EXPERIMENTS))  # the scripts import each other as siblings
    spec = importlib.util.spec_from_file_location(name, _EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


features = _load("musicnn_features")
study = _load("musicnn_v2")
scan_metrics = _load("scan_metrics")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_single_instrument_folders_know_every_label_and_masked_corpora_do_not(tmp_path):
    _write_csv(tmp_path / "single.csv", ["file", "split", "drums", "piano"], [["a.flac", "test", 1, 0]])
    files, splits, y = features.read_labels(tmp_path / "single.csv")
    assert files == ["a.flac"] and splits == ["test"]
    assert y[0, OPENMIC_LABELS.index("drums")] == 1 and y[0, OPENMIC_LABELS.index("piano")] == 0
    assert not np.isnan(y).any() and y.sum() == 1  # the 18 labels it does not name are its negatives
    _write_csv(tmp_path / "masked.csv", ["file", "split", *OPENMIC_LABELS],
               [["b.flac", "train", *(["1"] + [""] * 19)]])
    _, _, y = features.read_labels(tmp_path / "masked.csv")
    assert y[0, 0] == 1 and np.isnan(y[0, 1:]).all()  # a blank cell is unknown, not negative


def test_file_scores_are_the_maximum_of_the_window_sigmoids_over_real_windows_only():
    s = object.__new__(study.Subset)
    s.x = np.zeros((2, 3, 20), np.float32)
    s.x[0, 0, 0], s.x[0, 1, 0] = -2.0, 3.0  # file 0: two windows, the second scores label 0 highest
    s.x[1, 0, 0], s.x[1, 2, 0] = 1.0, 9.0  # file 1: its third window is padding and must not count
    s.mask = np.array([[True, True, False], [True, False, False]])
    s.y, s.files = np.zeros((2, 20), np.float32), np.arange(2)
    identity = torch.nn.Identity()
    scores = study.file_scores(identity, s)
    assert scores[0, 0] == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert scores[1, 0] == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert scores[0, 1] == pytest.approx(0.5)


def test_scan_metrics_scores_the_tags_the_scan_wrote(tmp_path):
    """Four single-instrument files; the scan tagged drums on both drum files and on one piano file,
    and piano nowhere: drums F1 = mean(neg F1 2/3, pos F1 0.8), piano = mean(neg 2/3, pos 0)."""
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    _write_csv(data / "labels.csv", ["file", "split", "drums", "piano"],
               [[f"audio/{n}.flac", "test", int(n.startswith("d")), int(n.startswith("p"))] for n in ("d1", "d2", "p1", "p2")])
    header = columns(list(OPENMIC_LABELS))
    rows = []
    for name, tags in (("d1", "drums"), ("d2", "drums"), ("p1", "drums"), ("p2", "")):
        scores = {label: 0.0 for label in OPENMIC_LABELS}
        scores["drums"] = 0.9 if tags else 0.1
        scores["piano"] = 0.2 if name.startswith("p") else 0.1  # ranks the piano files first: AP 1
        rows.append([f"{name}.flac", 1, 0.0, 3.0, 1, "ok", "", *(scores[l] for l in OPENMIC_LABELS), tags, "", ""])
    _write_csv(tmp_path / "tags.csv", header, rows)
    m = scan_metrics.metrics(tmp_path / "tags.csv", data, data / "audio")
    assert m["files"] == 4 and not m["missing"]
    assert m["per_label_f1"]["drums"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["per_label_f1"]["piano"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert m["per_label_f1"]["violin"] == 1.0  # absent and never tagged: its negatives are all right
    assert m["per_label_ap"]["piano"] == pytest.approx(1.0)
    assert m["tagged_share"]["drums"] == 0.75
    others = 18 * 1.0
    assert m["macro_f1"] == pytest.approx(((2 / 3 + 0.8) / 2 + 1 / 3 + others) / 20)
    assert m["present_macro_f1"] == pytest.approx(((2 / 3 + 0.8) / 2 + 1 / 3) / 2)


def test_scan_metrics_scores_only_the_labels_a_zero_training_scan_has(tmp_path):
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    _write_csv(data / "labels.csv", ["file", "split", "drums"], [["audio/d.flac", "test", 1]])
    labels = ["cello", "drums"]
    _write_csv(tmp_path / "tags.csv", columns(labels), [["d.flac", 1, 0.0, 3.0, 1, "ok", "", 0.1, 0.9, "drums", "", ""]])
    m = scan_metrics.metrics(tmp_path / "tags.csv", data, data / "audio")
    assert m["labels"] == labels and m["per_label_f1"] == {"cello": 1.0, "drums": 1.0}
