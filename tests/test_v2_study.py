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


def test_the_bootstrap_interval_is_the_basic_interval_of_the_openmic_macro_f1():
    from mictag.train.metrics import evaluate

    rng = np.random.default_rng(1)
    y = (rng.random((25, 20)) < 0.08).astype(np.float32)
    tags = rng.random((25, 20)) < 0.1
    lo, hi = study.bootstrap_macro_f1(y, tags, rounds=300, seed=5)
    point = evaluate(OPENMIC_LABELS, y, np.ones_like(y, bool), tags.astype(np.float32)).macro_f1
    # the same resamples scored one by one with the package's own metric
    w = np.random.default_rng(5).multinomial(25, np.full(25, 1 / 25), size=300)
    scores = []
    for counts in w:
        idx = np.repeat(np.arange(25), counts)
        scores.append(evaluate(OPENMIC_LABELS, y[idx], np.ones((len(idx), 20), bool), tags[idx].astype(np.float32)).macro_f1)
    q_lo, q_hi = np.percentile(scores, [2.5, 97.5])
    assert lo == pytest.approx(2 * point - q_hi, abs=1e-9) and hi == pytest.approx(2 * point - q_lo, abs=1e-9)
    assert lo <= point <= hi


def test_unseen_recordings_are_labelled_decoded_and_all_test(tmp_path):
    import json

    import soundfile as sf

    unseen = _load("unseen_recordings")
    roots = {}
    tone = lambda rate, s: (0.5 * np.sin(2 * np.pi * 220 * np.arange(int(s * rate)) / rate)).astype(np.float32)  # noqa: E731
    for package, rel, _, _ in unseen.FILES:
        root = roots.setdefault(package, tmp_path / f"{package}_1.0_all")
        path = root / "usr" / "share" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".raw":  # STK: headerless 16-bit big-endian at 22.05 kHz
            path.write_bytes((tone(unseen.STK_RATE, 0.5) * 32767).astype(">i2").tobytes())
        else:
            sf.write(path, tone(44100, 4.0 if "a11wlk01" in rel else 1.0), 44100)
    report = unseen.build(roots, tmp_path / "out")
    with (tmp_path / "out" / "labels.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert report["total_clips"] == len(rows) == len(unseen.FILES) + 1  # the 4-s speech file makes two clips
    assert {r["split"] for r in rows} == {"test"}
    for r in rows:
        labels = [lab for lab in OPENMIC_LABELS if r[lab] == "1"]
        assert set(r) >= set(OPENMIC_LABELS) and len(labels) <= 1
        if "bassdrum" in r["file"]:
            assert labels == ["drums"]
            x, rate = sf.read(tmp_path / "out" / r["file"])
            assert rate == 16000 and abs(len(x) - 8000) <= 2
            # read as big-endian, the tone survives: its 220 Hz peak dominates the spectrum
            spectrum = np.abs(np.fft.rfft(x))
            assert abs(np.argmax(spectrum) * rate / len(x) - 220) < 5
        if "Front_Center" in r["file"]:
            assert labels == []
    assert json.loads((tmp_path / "out" / "report.json").read_text())["counts"]["negative"] == 13
