"""experiments/real_instruments.py: the labelling rules and the split by take (synthetic files, no apt)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

_SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "real_instruments.py"
_spec = importlib.util.spec_from_file_location("real_instruments", _SCRIPT)
ri = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ri  # dataclasses look their module up there
_spec.loader.exec_module(ri)


@pytest.mark.parametrize("path, label", [
    ("lmms/samples/drums/kick01.ogg", "drums"),
    ("sonic-pi/samples/drum_tom_hi_hard.flac", "drums"),
    ("sonic-pi/samples/tabla_ghe1.flac", "drums"),
    ("sonic-pi/samples/loop_tabla.flac", "drums"),
    ("lmms/samples/drums/hihat_closed01.ogg", "cymbals"),
    ("sonic-pi/samples/drum_splash_soft.flac", "cymbals"),
    ("lmms/samples/instruments/church_organ01.ogg", "organ"),
    ("lmms/samples/instruments/e_piano_accord01.ogg", "piano"),
    ("sonic-pi/samples/ambi_piano.flac", "piano"),
    ("lmms/samples/instruments/steel_guitar_heavy_distorted01.ogg", "guitar"),
    ("lmms/samples/instruments/bassslap01.ogg", "bass"),
    ("sonic-pi/samples/ambi_choir.flac", "voice"),
    # dropped: synthetic, electronic, ensembles, mixtures, no OpenMIC class, unknown
    ("lmms/samples/stringsnpads/strings01.ogg", None),
    ("lmms/samples/stringsnpads/chorus01.ogg", None),
    ("lmms/samples/basses/bass01.ogg", None),
    ("lmms/samples/waveforms/saw1.flac", None),
    ("lmms/samples/beats/rave_kick01.ogg", None),
    ("lmms/samples/drums/snare_electro01.ogg", None),
    ("lmms/samples/drums/clap01.ogg", None),
    ("lmms/samples/instruments/harpsichord01.ogg", None),
    ("lmms/samples/latin/latin_brass01.ogg", None),
    ("sonic-pi/samples/bd_808.flac", None),
    ("sonic-pi/samples/elec_cymbal.flac", None),
    ("sonic-pi/samples/loop_amen.flac", None),
    ("sonic-pi/samples/ambi_drone.flac", None),
    ("sonic-pi/samples/bass_woodsy_c.flac", None),
    ("sonic-pi/samples/drum_cowbell.flac", None),
    ("somewhere/kazoo.wav", None),
])
def test_rules(path, label):
    got, why = ri.label_for(path)
    assert got == label and why


def test_every_rule_label_is_an_openmic_class():
    assert {label for _, label, _ in ri.RULES} - {None} <= set(ri.OPENMIC_LABELS)


def test_segment_lengths():
    rate = ri.RATE
    assert [c.size for c in ri.segment(np.ones(rate), 8)] == [rate]  # short: one clip, not padded
    assert [c.size / rate for c in ri.segment(np.ones(int(7.5 * rate)), 8)] == [3, 3, 1.5]
    assert [c.size / rate for c in ri.segment(np.ones(int(6.5 * rate)), 8)] == [3, 3]  # tail < 1 s dropped
    assert len(ri.segment(np.ones(40 * rate), 8)) == 8


def _tone(seconds: float, rate: int, freq: float, level: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


FILES = {  # path below usr/share -> seconds (0 amplitude where the name says silent)
    "lmms/samples/drums/kick01.wav": 0.5, "lmms/samples/drums/kick02.wav": 7.5, "lmms/samples/drums/snare01.wav": 1.0,
    "lmms/samples/drums/tom01.wav": 4.2, "lmms/samples/drums/tom02.wav": 0.3,
    "lmms/samples/instruments/steel_guitar01.wav": 6.2,
    "lmms/samples/instruments/steel_guitar_heavy_distorted01.wav": 6.2,
    "lmms/samples/instruments/steel_guitar_slight_distorted01.wav": 6.2,
    "lmms/samples/latin/latin_guitar01.wav": 3.5, "lmms/samples/latin/latin_guitar02.wav": 2.0,
    "lmms/samples/instruments/cello01.wav": 2.0,  # one take only: label dropped
    "lmms/samples/instruments/piano01_silent.wav": 2.0,  # silent: dropped
    "lmms/samples/stringsnpads/strings01.wav": 2.0,  # rule drop
}


@pytest.fixture
def built(tmp_path):
    share = tmp_path / "lmms-common_9.9_all" / "usr" / "share"
    for i, (rel, seconds) in enumerate(FILES.items()):
        (share / rel).parent.mkdir(parents=True, exist_ok=True)
        level = 0.0 if "silent" in rel else 0.1
        sf.write(share / rel, _tone(seconds, 22050, 220 + 40 * i, level), 22050, subtype="PCM_16")
    (share / "lmms/presets").mkdir(parents=True)
    (share / "lmms/presets/Bass.xpf").write_text("<preset/>")
    out = tmp_path / "out"
    return ri.build([tmp_path / "lmms-common_9.9_all"], out, seed=3, max_clips=8), out


def test_build_splits_by_take(built):
    report, out = built
    with (out / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "split", "drums", "guitar"]
    splits_of = defaultdict(set)
    take_of = {clip: r["take"] for r in report["sources"] for clip in r["clips"]}
    assert set(take_of) == {row["file"] for row in rows}
    for row in rows:
        splits_of[take_of[row["file"]]].add(row["split"])
        assert (int(row["drums"]), int(row["guitar"])) in ((1, 0), (0, 1))
        info = sf.info(out / row["file"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16") and info.duration <= 3.0
    assert all(len(s) == 1 for s in splits_of.values())  # every take (so every source file) in one split
    guitar_takes = {r["take"] for r in report["sources"] if r["label"] == "guitar"}
    assert len(guitar_takes) == 3  # the distorted copies joined steel_guitar01's take
    for label in ("drums", "guitar"):  # at least one take per split
        assert all(report["counts"][label][s]["sources"] >= 1 for s in ri.SPLITS)
    assert report["counts"]["drums"]["train"]["clips"] + report["counts"]["drums"]["val"]["clips"] \
        + report["counts"]["drums"]["test"]["clips"] == 1 + 3 + 1 + 2 + 1
    reasons = {d["source"].split("/")[-1]: d["reason"] for d in report["dropped"]}
    assert "silent" in reasons["piano01_silent.wav"] and "fewer than 3" in reasons["cello01.wav"]
    assert "ensemble" in reasons["strings01.wav"]
    assert report["non_audio_files_skipped"] == {".xpf": 1}
    assert report["packages"]["lmms-common"]["version"] == "9.9"
    assert json.loads((out / "report.json").read_text())["seed"] == 3
