"""The "produced" corpus style: the v1 recipe untouched, the mastering chain against what its
parameters promise (the limiter's ceiling, the compressor's ratio), performed notes inside the clip
and reproducible, and a tiny produced build with negative clips: the same bytes with any number of
workers, every label of a negative 0, digital silence exactly zero."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mictag.corpus.build import CorpusSpec
from mictag.corpus.midi import Note
from mictag.errors import ConfigError
from mictag.labels import OPENMIC_LABELS

TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
RATE = 16000
needs_timgm = pytest.mark.skipif(not TIMGM.is_file(), reason="timgm6mb-soundfont is not installed")


def _dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))


# -- the recipe -------------------------------------------------------------------------------------
def test_the_v1_recipe_is_unchanged_and_the_produced_one_differs():
    v1 = CorpusSpec()
    assert v1.digest() == "cd651901e78f38f3"
    assert "style" not in v1.to_dict() and "negatives" not in v1.to_dict()
    produced = CorpusSpec(style="produced")
    with_negatives = CorpusSpec(style="produced", negatives=0.05)
    assert len({v1.digest(), produced.digest(), with_negatives.digest()}) == 3
    assert produced.to_dict()["style"] == "produced" and "negatives" not in produced.to_dict()
    assert with_negatives.to_dict()["negatives"] == 0.05


@pytest.mark.parametrize("kwargs, message", [
    ({"style": "loud"}, "unknown corpus style 'loud'"),
    ({"style": "produced", "negatives": 1.0}, "from 0 up to"),
    ({"style": "produced", "negatives": -0.1}, "from 0 up to"),
    ({"negatives": 0.05}, "part of the produced style"),
])
def test_a_bad_style_or_share_of_negatives_is_refused(kwargs, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        CorpusSpec(**kwargs)
    from mictag.cli import main

    args = [f"--{k}={v}" for k, v in kwargs.items()]
    result = CliRunner().invoke(main, ["corpus", "build", "--out", str(tmp_path / "c"), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "c").exists()  # refused before anything is fetched or written


# -- mastering --------------------------------------------------------------------------------------
def test_the_limiter_never_passes_its_ceiling_and_leaves_what_is_far_from_a_peak_alone():
    from mictag.corpus.mastering import limit

    rng = np.random.default_rng(0)
    t = np.arange(3 * RATE) / RATE
    x = 0.05 * np.sin(2 * np.pi * 220 * t)  # -26 dBFS peaks: under the ceiling even after the makeup
    loud = slice(RATE, 2 * RATE)
    x[loud] = rng.standard_normal(RATE) * 0.3
    x[RATE + rng.integers(0, RATE, 50)] = rng.choice([-1, 1], 50) * 2.0  # spikes of +6 dBFS
    x = x.astype(np.float32)
    for ceiling in (-1.0, -0.5, -0.1):
        y = limit(x, RATE, ceiling_db=ceiling, makeup_db=6.0, attack_s=0.002, release_s=0.05)
        assert y.dtype == np.float32 and y.shape == x.shape
        assert np.abs(y).max() <= 10 ** (ceiling / 20)
        assert np.abs(y).max() > 10 ** ((ceiling - 0.5) / 20)  # limited to the ceiling, not far below it
        made_up = (x.astype(np.float64) * 10 ** (6 / 20)).astype(np.float32)
        before, after = slice(0, RATE - 100), slice(2 * RATE + RATE // 2, None)  # before the look-ahead; recovered
        assert np.array_equal(y[before], made_up[before]) and np.array_equal(y[after], made_up[after])
        assert np.abs(y[loud]).mean() < np.abs(made_up[loud]).mean()


def test_the_limiter_leaves_a_quiet_input_as_it_is():
    from mictag.corpus.mastering import limit

    t = np.arange(RATE) / RATE
    x = (0.3 * np.sin(2 * np.pi * 330 * t) * np.exp(-2 * t)).astype(np.float32)  # -10.5 dBFS peak
    assert np.array_equal(limit(x, RATE, ceiling_db=-1.0), x)
    y = limit(x, RATE, ceiling_db=-1.0, makeup_db=6.0)  # -4.5 dBFS: still under
    assert np.allclose(y, x * 10 ** (6 / 20), rtol=1e-6, atol=0)


@pytest.mark.parametrize("ratio", [2.0, 4.0, 6.0])
def test_the_compressor_takes_the_level_above_threshold_down_by_its_ratio(ratio):
    from mictag.corpus.mastering import compress

    t = np.arange(RATE) / RATE
    tone = np.sin(2 * np.pi * 440 * t) * np.sqrt(2)  # 0 dBFS RMS
    levels = (-6.0, -36.0, -6.0, -36.0)  # loud sections 18 dB over the threshold, quiet ones 12 dB under
    x = np.concatenate([tone * 10 ** (lv / 20) for lv in levels]).astype(np.float32)
    y = compress(x, RATE, threshold_db=-24.0, ratio=ratio, attack_s=0.01, release_s=0.05)
    settled = [slice(k * RATE + RATE // 2, (k + 1) * RATE) for k in range(4)]  # after the attack or release
    out = [_dbfs(y[s]) for s in settled]
    assert out[2] == pytest.approx(-24.0 + 18.0 / ratio, abs=0.3)
    assert out[3] == pytest.approx(-36.0, abs=0.1)  # under the threshold: untouched
    assert out[2] - out[3] == pytest.approx(30.0 - 18.0 * (1 - 1 / ratio), abs=0.3)  # the dynamic range it leaves
    # The attack lets the start of a loud section through before the gain comes down.
    onset = slice(2 * RATE, 2 * RATE + RATE // 400)
    assert _dbfs(y[onset]) > out[2] + 3


def test_the_studio_reverbs_are_what_they_claim():
    from mictag.corpus.room import response

    hall = response("hall", 2.0, RATE, seed=1, predelay=0.03)
    plate = response("plate", 1.2, RATE, seed=1)
    assert response("dry", 0.0, RATE, seed=1) is None
    assert np.sum(hall.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-4)
    assert not hall[: int(0.03 * RATE)].any() and hall[int(0.03 * RATE) :][:RATE // 10].any()  # the pre-delay
    assert all(np.abs(plate[k : k + 16]).max() > 0 for k in range(0, 800, 16))  # dense from the first sample

    def high_share(ir):
        power = np.abs(np.fft.rfft(ir)) ** 2
        return power[np.fft.rfftfreq(ir.size, 1 / RATE) > 3000].sum() / power.sum()

    assert high_share(plate) > 1.5 * high_share(hall)  # a plate is bright, a hall dark


# -- performance ------------------------------------------------------------------------------------
def test_performed_notes_stay_in_the_clip_and_are_the_same_for_one_seed():
    from mictag.corpus.performance import Performance, perform, warp

    seconds = 4.0
    notes = [Note(k * 0.125, 0.1, 60 + k % 12, (1, 64, 127)[k % 3]) for k in range(32)]  # from 0 to the end
    perf = Performance("crescendo", 25.0, 0.03, 0.5)
    played = perform(notes, seconds, perf, 0.02, np.random.default_rng(5))
    again = perform(notes, seconds, perf, 0.02, np.random.default_rng(5))
    other = perform(notes, seconds, perf, 0.02, np.random.default_rng(6))
    assert played == again and played != other
    assert all(0.0 <= n.start < seconds and n.length > 0 and 1 <= n.velocity <= 127 for n in played)
    assert [n.pitch for n in played] == [n.pitch for n in notes]
    # The tempo drift keeps the clip's ends and the local tempo within 3%.
    grid = np.linspace(0, seconds, 4001)
    slope = np.diff(warp(grid, seconds, perf)) / np.diff(grid)
    assert warp(np.array([0.0, seconds]), seconds, perf) == pytest.approx([0.0, seconds], abs=1e-12)
    assert slope.min() >= 0.97 - 1e-9 and slope.max() <= 1.03 + 1e-9 and slope.max() > 1.02


def test_the_timing_spread_and_the_dynamic_curve_are_as_drawn():
    from mictag.corpus.performance import Performance, perform, velocity_offset, warp

    seconds = 10.0
    notes = [Note(0.05 + k * 0.01, 0.05, 60, 64) for k in range(990)]
    shapes = {"crescendo": (-1, 0, 1), "decrescendo": (1, 0, -1), "swell": (-1, 1, -1)}  # ends and middle
    for curve, signs in shapes.items():
        perf = Performance(curve, 20.0, 0.0, 0.5)
        played = perform(notes, seconds, perf, 0.01, np.random.default_rng(1))
        starts = np.array([p.start for p in played])
        shift = starts - warp(np.array([n.start for n in notes]), seconds, perf)
        assert np.std(shift) == pytest.approx(0.01, rel=0.1) and abs(np.mean(shift)) < 0.002
        v = np.array([p.velocity for p in played])
        curve_at = 64 + velocity_offset(starts, seconds, perf)
        assert np.abs(v - curve_at).max() <= 10.5  # each note at most 10 steps (and rounding) off the curve
        windows = (slice(0, 100), slice(445, 545), slice(890, 990))
        for window, sign in zip(windows, signs):
            assert v[window].mean() == pytest.approx(curve_at[window].mean(), abs=2)
            assert np.sign(round(v[window].mean() - 64, -1)) == sign


# -- negatives --------------------------------------------------------------------------------------
@pytest.mark.parametrize("colour, slope_db", [("white", 0.0), ("pink", -3.0), ("brown", -6.0)])
def test_noise_has_its_level_and_colour(colour, slope_db):
    from mictag.corpus.negatives import noise

    x = noise(np.random.default_rng(0), 10 * RATE, colour, -30.0)
    assert _dbfs(x) == pytest.approx(-30.0, abs=0.01)
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    octave = lambda lo: power[(f >= lo) & (f < 2 * lo)].mean() * lo  # noqa: E731  (power per octave)
    per_octave = 10 * np.log10(octave(1000) / octave(500)) - 3.0  # the density's fall per octave
    assert per_octave == pytest.approx(slope_db, abs=0.5)


def test_applause_is_claps_in_their_band():
    from mictag.corpus.negatives import applause

    x = applause(np.random.default_rng(3), 5 * RATE, RATE, 50.0)
    assert np.array_equal(x, applause(np.random.default_rng(3), 5 * RATE, RATE, 50.0))
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    assert power[(f > 400) & (f < 5000)].sum() > 0.9 * power.sum()
    frames = np.sqrt(np.mean(x[: 5 * RATE].reshape(50, -1) ** 2, axis=1))
    assert (frames > 0).all()  # dozens of claps a second: never a silent 100 ms


def _speech_root(tmp: Path, names=("One", "Two", "Three")) -> Path:
    """An unpacked alsa-utils with synthetic "voices" (48 kHz, as ALSA's are) and its Noise.wav."""
    root = tmp / "alsa-utils_1.2.8-1_amd64"
    folder = root / "usr/share/sounds/alsa"
    folder.mkdir(parents=True)
    t = np.arange(int(0.8 * 48000)) / 48000
    for k, name in enumerate(names):
        voice = 0.3 * np.sin(2 * np.pi * (140 + 20 * k) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
        sf.write(folder / f"{name}.wav", voice.astype(np.float32), 48000, subtype="PCM_16")
    sf.write(folder / "Noise.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 48000).astype(np.float32), 48000)
    return root


def test_speech_files_split_like_sources_and_fill_the_clip(tmp_path):
    from mictag.corpus.build import split_files
    from mictag.corpus.negatives import find_speech, speech

    root = _speech_root(tmp_path, names=[f"W{k}" for k in range(8)])
    files = find_speech({"alsa-utils": root})
    assert [f.name for f in files] == [f"W{k}.wav" for k in range(8)]  # Noise.wav is not speech
    assert find_speech({}) == []
    splits = split_files(files, seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [5, 1, 2]
    assert sorted(sum(splits.values(), [])) == sorted(map(str, files))
    x = speech(np.random.default_rng(0), splits["train"], 10 * RATE, RATE)
    assert np.array_equal(x, speech(np.random.default_rng(0), splits["train"], 10 * RATE, RATE))
    frames = np.abs(x.reshape(100, -1)).max(axis=1)
    assert (frames > 0).mean() > 0.6 and frames[-20:].any()  # words all through, to the end


def test_digital_silence_is_exact_zeros():
    from mictag.corpus.build import Catalogue, render_negative

    spec = CorpusSpec(seconds=2.0, style="produced", negatives=0.5)
    plan = {"index": 0, "split": "train", "room": {"low_db": 3.0, "high_db": -3.0, "peak_dbfs": -6.0},
            "production": {"negative": {"kind": "silence", "seed": 7}}}
    x = render_negative(plan, Catalogue({}, []), spec)
    assert x.dtype == np.float32 and x.shape == (2 * RATE,) and not x.any()


# -- planning and building --------------------------------------------------------------------------
def _roots(tmp: Path) -> dict[str, Path]:
    root = tmp / "timgm6mb-soundfont_1.3-5_all"
    (root / "usr/share/sounds/sf2").mkdir(parents=True)
    (root / "usr/share/sounds/sf2/TimGM6mb.sf2").symlink_to(TIMGM)
    return {"timgm6mb-soundfont": root, "alsa-utils": _speech_root(tmp)}


@needs_timgm
def test_produced_clips_play_what_the_v1_clips_play(tmp_path):
    from mictag.corpus.build import catalogue, plan_clip

    cat = catalogue(_roots(tmp_path), seed=0)
    v1 = CorpusSpec(clips=40, seconds=4.0, packages=("timgm6mb-soundfont",))
    produced = CorpusSpec(clips=40, seconds=4.0, packages=("timgm6mb-soundfont",), style="produced", negatives=0.3)
    without = CorpusSpec(clips=40, seconds=4.0, packages=("timgm6mb-soundfont",), style="produced")
    negatives = 0
    for i in range(40):
        a, b, c = plan_clip(i, v1, cat), plan_clip(i, produced, cat), plan_clip(i, without, cat)
        assert a["split"] == b["split"] and b == plan_clip(i, produced, cat)
        if "negative" in b["production"]:
            negatives += 1
            assert b["parts"] == [] and b["song"] is None
            continue
        assert b == c  # a share of negatives changes no other clip
        assert [(p["source"].id, p["labels"], p["gain_db"]) for p in a["parts"]] == \
               [(p["source"].id, p["labels"], p["gain_db"]) for p in b["parts"]]
        for p, q in zip(a["parts"], b["parts"]):
            assert [n.pitch for n in p["notes"]] == [n.pitch for n in q["notes"]]
            if p["notes"]:
                assert p["notes"] != q["notes"] and 0.005 <= q["jitter_s"] <= 0.02
        assert b["room"]["peak_dbfs"] == a["room"]["peak_dbfs"]
    assert 5 <= negatives <= 20


def _csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@needs_timgm
def test_a_produced_build_with_negatives_is_the_same_with_any_number_of_workers(tmp_path):
    from mictag.corpus.build import build
    from mictag.corpus.synth import SynthError

    spec = CorpusSpec(clips=12, seconds=2.0, packages=("timgm6mb-soundfont",), style="produced", negatives=0.5)
    roots = _roots(tmp_path)
    try:
        report = build(tmp_path / "one", spec, roots=roots, workers=1)
    except SynthError as exc:
        pytest.skip(str(exc))
    build(tmp_path / "two", spec, roots=roots, workers=2)
    digest = lambda root: {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                           for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".flac", ".mid", ".csv")}
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    assert len([k for k in digest(tmp_path / "one") if k.endswith(".flac")]) == 12

    out = tmp_path / "one"
    records = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
    full, masked = _csv(out / "labels-full.csv"), _csv(out / "labels.csv")
    negatives = [k for k, r in enumerate(records) if "negative" in r]
    kinds = [records[k]["negative"] for k in negatives]
    assert 3 <= len(negatives) <= 9 and report["negatives"] == {kind: kinds.count(kind) for kind in sorted(set(kinds))}
    for k, r in enumerate(records):
        x, rate = sf.read(out / r["file"], dtype="int16")
        assert rate == RATE and x.shape == (2 * RATE,)
        known = [masked[k][lab] for lab in OPENMIC_LABELS if masked[k][lab] != ""]
        assert known  # every clip keeps a known label, negatives too
        if k in negatives:
            assert r["labels"] == [] and r["parts"] == [] and r["negative"] in ("silence", "noise", "applause",
                                                                                 "speech")
            assert all(full[k][lab] == "0" for lab in OPENMIC_LABELS) and set(known) == {"0"}
            if r["negative"] == "silence":
                assert not x.any()  # exact digital silence
            elif r["negative"] == "noise":
                assert _dbfs(x / 32768.0) == pytest.approx(r["production"]["negative"]["level_dbfs"], abs=0.1)
            else:
                assert np.abs(x).max() / 32768 == pytest.approx(10 ** (r["room"]["peak_dbfs"] / 20), rel=0.01)
        else:
            assert r["labels"] and "negative" not in r and {"performance", "reverb", "compressor", "limiter"} <= set(
                r["production"])
            assert np.abs(x).max() / 32768 == pytest.approx(10 ** (r["room"]["peak_dbfs"] / 20), rel=0.01)
    assert report["silent_clips"] == 0 and report["recipe_digest"] == spec.digest() != CorpusSpec().digest()
    sources = (out / "SOURCES.md").read_text()
    assert "## Produced style" in sources and "## Negative clips" in sources and "alsa-utils" in sources
