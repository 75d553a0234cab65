"""The corpus's rendering parts: the MIDI writer (read back by an independent parser), the
SoundFont preset reader, and FluidSynth rendering (deterministic, whatever ran before)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from mictag.corpus.midi import DRUM_CHANNEL, Note, Part, write_midi

TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")


def _read_midi(path: Path) -> tuple[int, list[list[tuple[int, int, bytes]]]]:
    """(ticks per beat, per track [(absolute tick, status, data)]) — a plain SMF reader."""
    data = path.read_bytes()
    assert data[:4] == b"MThd"
    _, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    assert fmt == 1
    pos, tracks = 14, []
    for _ in range(ntracks):
        assert data[pos : pos + 4] == b"MTrk"
        length = struct.unpack(">I", data[pos + 4 : pos + 8])[0]
        body, pos = data[pos + 8 : pos + 8 + length], pos + 8 + length
        i, tick, events = 0, 0, []
        while i < len(body):
            delta = 0
            while True:
                b = body[i]
                i += 1
                delta = (delta << 7) | (b & 0x7F)
                if b < 0x80:
                    break
            tick += delta
            status = body[i]
            if status == 0xFF:
                kind, size = body[i + 1], body[i + 2]
                events.append((tick, 0xFF, bytes([kind]) + body[i + 3 : i + 3 + size]))
                i += 3 + size
            else:
                size = 1 if status & 0xF0 == 0xC0 else 2
                events.append((tick, status, body[i + 1 : i + 1 + size]))
                i += 1 + size
        tracks.append(events)
    return division, tracks


def test_midi_file_holds_every_note_at_its_time(tmp_path):
    melody = Part(channel=2, program=24, bank=8, notes=[Note(0.0, 0.5, 60, 100), Note(0.5, 0.25, 64, 70),
                                                         Note(1.25, 2.0, 67, 127)], volume=90)
    drums = Part(channel=DRUM_CHANNEL, notes=[Note(0.0, 0.1, 36), Note(0.5, 0.1, 38)])
    division, tracks = _read_midi(write_midi(tmp_path / "x.mid", [melody, drums]))
    assert len(tracks) == 3
    tempo = next(e for e in tracks[0] if e[1] == 0xFF and e[2][0] == 0x51)
    assert int.from_bytes(tempo[2][1:], "big") == 1_000_000  # 60 bpm: beats are seconds
    track = tracks[1]
    assert (0, 0xB2, bytes([0, 0])) in track and (0, 0xB2, bytes([32, 8])) in track  # bank 8
    assert (0, 0xC2, bytes([24])) in track and (0, 0xB2, bytes([7, 90])) in track
    assert (0, 0xB2, bytes([2, 100])) in track and (0, 0xB2, bytes([11, 127])) in track  # breath, expression
    ons = [(t / division, d[0], d[1]) for t, s, d in track if s == 0x92]
    offs = [(t / division, d[0]) for t, s, d in track if s == 0x82]
    assert ons == [(0.0, 60, 100), (0.5, 64, 70), (1.25, 67, 127)]
    assert offs == [(0.5, 60), (0.75, 64), (3.25, 67)]
    assert [s for _, s, _ in tracks[2] if s & 0xF0 == 0x90] == [0x99, 0x99]  # drums on channel 10


@pytest.mark.skipif(not TIMGM.is_file(), reason="timgm6mb-soundfont is not installed")
def test_soundfont_presets_are_read_from_the_file():
    from mictag.corpus.soundfont import presets

    found = presets(TIMGM)
    by_slot = {(p.bank, p.program): p.name for p in found}
    assert len(found) > 100 and (0, 0) in by_slot and (128, 0) in by_slot  # GM melodic + a drum kit
    assert "guitar" in by_slot[(0, 24)].lower() or "nylon" in by_slot[(0, 24)].lower()


def test_a_file_that_is_not_a_soundfont_is_refused(tmp_path):
    from mictag.corpus.soundfont import SoundFontError, presets

    (tmp_path / "x.sf2").write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(SoundFontError, match="not a SoundFont"):
        presets(tmp_path / "x.sf2")


@pytest.mark.skipif(not TIMGM.is_file(), reason="timgm6mb-soundfont is not installed")
def test_rendering_is_deterministic_whatever_ran_before():
    pytest.importorskip("ctypes")
    from mictag.corpus.synth import SynthError, render_parts

    guitar = Part(0, 24, 0, [Note(i * 0.25, 0.2, 55 + i % 12, 80 + i % 30) for i in range(16)])
    try:
        first = render_parts([(TIMGM, guitar)], 4.5)
    except SynthError as exc:
        pytest.skip(str(exc))
    render_parts([(TIMGM, Part(3, 40, 0, [Note(0.1, 1.0, 70, 120)]))], 2.0)  # something else in between
    again = render_parts([(TIMGM, guitar)], 4.5)
    (x,), (y,) = first, again
    assert x.shape == (72000,) and x.dtype == np.float32
    assert np.array_equal(x, y)
    assert np.abs(x).max() > 0.01 and np.abs(x[: int(0.2 * 16000)]).max() > 0.01  # it sounds from the start
    silent = render_parts([(TIMGM, Part(0, 24, 0, []))], 1.0)[0]
    assert not silent.any()
