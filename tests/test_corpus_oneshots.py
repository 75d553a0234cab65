"""The "oneshots" corpus style (a sample library's files): its own recipe, one instrument a clip,
one sound at the start of every slot and nothing between, for presets, kits and recordings alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mictag.corpus.build import ONE_SHOT_SLOT_S, CorpusSpec
from mictag.corpus.instruments import CYMBAL_NOTES, DRUM_NOTES
from mictag.corpus.music import new_song, one_shots
from mictag.corpus.recordings import render_recording

TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
RATE = 16000
needs_timgm = pytest.mark.skipif(not TIMGM.is_file(), reason="timgm6mb-soundfont is not installed")


def test_the_oneshots_recipe_is_its_own():
    digests = {CorpusSpec(style=s).digest() for s in ("v1", "produced", "oneshots")}
    assert len(digests) == 3
    assert CorpusSpec(style="oneshots").to_dict()["style_version"] == 1


@pytest.mark.parametrize("role, pieces", [("melody", None), ("chords", None), ("bass", None),
                                          (None, "drums"), (None, "cymbals")])
def test_one_sound_starts_each_slot_and_ends_before_the_next(role, pieces):
    rng = np.random.default_rng(3)
    song = new_song(rng, 12.0)
    notes = one_shots(rng, song, 3.0, role or "drums", 40, 80, pieces=pieces)
    slots = sorted({int(n.start // 3.0) for n in notes})
    assert slots == [0, 1, 2, 3]
    for n in notes:
        at = n.start - 3.0 * int(n.start // 3.0)
        assert 0.0 <= at <= 0.05 + 4 * 0.03  # the onset (a strum's last string at most 4 x 30 ms later)
        assert at + n.length < 3.0  # its note is off before the next slot starts
        if pieces:
            allowed = {p for group in (DRUM_NOTES if pieces == "drums" else CYMBAL_NOTES).values() for p in group}
            assert n.pitch in allowed
        else:
            assert 40 <= n.pitch <= 80
    per_slot = [sum(1 for n in notes if int(n.start // 3.0) == k) for k in slots]
    assert max(per_slot) == 1 or role == "chords"


def test_a_recording_plays_once_a_slot_then_silence(tmp_path):
    hit = np.sin(2 * np.pi * 440 * np.arange(int(0.4 * RATE)) / RATE).astype(np.float32) * 0.5
    path = tmp_path / "hit.wav"
    sf.write(path, hit, RATE)
    x = render_recording(str(path), np.random.default_rng(0), beat=0.5, seconds=9.0, rate=RATE, pitched=False,
                         every=3.0)
    assert x.shape == (9 * RATE,)
    for k in range(3):
        slot = x[k * 3 * RATE:(k + 1) * 3 * RATE]
        sounding = np.flatnonzero(np.abs(slot) > 1e-6)
        assert sounding.size and sounding[0] <= 0.05 * RATE  # the hit starts the slot
        assert sounding[-1] < 0.5 * RATE  # and nothing else sounds in it
    # on the beat (no slots), the same recording repeats within 3 s
    y = render_recording(str(path), np.random.default_rng(0), beat=0.5, seconds=9.0, rate=RATE, pitched=False)
    assert np.flatnonzero(np.abs(y[:3 * RATE]) > 1e-6)[-1] > 1.0 * RATE


@needs_timgm
def test_oneshots_clips_hold_one_instrument_and_isolated_sounds(tmp_path):
    from mictag.corpus.build import build
    from mictag.corpus.synth import SynthError

    root = tmp_path / "timgm"
    (root / "usr/share/sounds/sf2").mkdir(parents=True)
    (root / "usr/share/sounds/sf2/TimGM6mb.sf2").symlink_to(TIMGM)
    spec = CorpusSpec(clips=10, seconds=6.0, packages=("timgm6mb-soundfont",), style="oneshots")
    try:
        report = build(tmp_path / "out", spec, roots={"timgm6mb-soundfont": root}, workers=1)
    except SynthError as exc:
        pytest.skip(str(exc))
    import json

    records = [json.loads(line) for line in (tmp_path / "out" / "clips.jsonl").read_text().splitlines()]
    assert len(records) == 10 and report["spec"]["style"] == "oneshots"
    louder = 0
    for r in records:
        assert len(r["parts"]) == 1 and len(r["labels"]) == 1
        x, rate = sf.read(tmp_path / "out" / r["file"], dtype="float32")
        slot = int(ONE_SHOT_SLOT_S * rate)
        onset = np.sqrt(np.mean(x[slot:slot + rate // 4] ** 2))  # the second slot's first 0.25 s
        before = np.sqrt(np.mean(x[slot - rate // 10:slot] ** 2))  # the first slot's last 0.1 s
        louder += onset > 2 * before
    assert louder >= 8  # a reverb's tail or a long release may reach the next slot now and then
