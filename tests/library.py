"""A small but nasty audio library of REAL files for scan tests.

``make_library(root)`` writes it and returns ``{relative posix path: expected status}``; only the
paths a scan must report are keys (non-audio files and the symlink loop are not).
``DURATIONS`` holds the true duration (frames written / rate) of every decodable file.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import soundfile as sf

# relative path -> seconds of audio written (the decodable files only)
DURATIONS: dict[str, float] = {}

UNICODE_NAME = "Ünïcode dir/naïve café — take 2.flac"
SILENT = "quiet/silence 16k.wav"
TRUNCATED = "broken/truncated.flac"
DANGLING = "broken/x.wav"
LONG = "long/two and a half minutes.flac"
M4A = "m4a/aac stereo 48k.m4a"
NON_AUDIO = ("notes.txt", "covers/cover.jpg", "a/b/c/readme.md")


def signal(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    """Tones plus a little noise, different in every channel: (frames, channels) float32 in [-0.9, 0.9]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    out = np.empty((n, channels), np.float32)
    for c in range(channels):
        f0 = rng.uniform(110.0, min(1500.0, rate / 5))
        tone = sum(0.5 ** h * np.sin(2 * np.pi * f0 * (h + 1) * t + rng.uniform(0, 6.28)) for h in range(3))
        env = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.3, 3.0) * t) ** 2
        out[:, c] = 0.3 * tone * env + 0.03 * rng.standard_normal(n)
    out /= max(1.0, float(np.abs(out).max()) / 0.9)
    return out


def _write(root: Path, rel: str, seconds: float, rate: int, channels: int, seed: int, **kw) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    x = signal(seconds, rate, channels, seed)
    sf.write(path, x, rate, **kw)
    DURATIONS[rel] = x.shape[0] / rate


def write_m4a(path: Path, x: np.ndarray, rate: int) -> None:
    """AAC in an MP4 container, encoded with PyAV's bundled FFmpeg."""
    import av

    layout = {1: "mono", 2: "stereo"}[x.shape[1]]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout=layout)
        step = 1024
        for start in range(0, x.shape[0], step):
            block = np.ascontiguousarray(x[start : start + step].T)  # planar (channels, samples)
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def make_library(root: Path) -> dict[str, str]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    DURATIONS.clear()
    expected: dict[str, str] = {}

    def ok(rel, seconds, rate, channels, seed, **kw):
        _write(root, rel, seconds, rate, channels, seed, **kw)
        expected[rel] = "ok"

    # WAV in every sample type, channel count and rate
    ok("wav/u8 mono 8k.wav", 1.0, 8000, 1, 1, subtype="PCM_U8")
    ok("wav/pcm16 stereo 44k.wav", 3.0, 44100, 2, 2, subtype="PCM_16")
    ok("wav/pcm24 6ch 48k.wav", 2.0, 48000, 6, 3, subtype="PCM_24")
    ok("wav/float32 mono 96k.wav", 1.5, 96000, 1, 4, subtype="FLOAT")
    ok("wav/short 0.2s.wav", 0.2, 22050, 1, 5, subtype="PCM_16")
    # compressed formats
    ok("flac/stereo 22k.flac", 4.0, 22050, 2, 6, format="FLAC", subtype="PCM_16")
    ok("ogg/vorbis stereo 44k.ogg", 3.0, 44100, 2, 7, format="OGG", subtype="VORBIS")
    ok("mp3/song stereo 44k.mp3", 2.5, 44100, 2, 8, format="MP3", subtype="MPEG_LAYER_III")
    # one long file (the only one: decode time stays small)
    ok(LONG, 150.0, 22050, 1, 9, format="FLAC", subtype="PCM_16")
    # names with spaces and non-ASCII letters; nested three deep
    ok(UNICODE_NAME, 2.0, 44100, 1, 10, format="FLAC", subtype="PCM_24")
    ok("a/b/c/deep tone.ogg", 1.7, 48000, 1, 11, format="OGG", subtype="VORBIS")
    ok("a/b/middle.wav", 1.0, 16000, 2, 12, subtype="PCM_16")

    # M4A/AAC through PyAV (skipped only where this FFmpeg build cannot encode AAC)
    m4a = root / M4A
    m4a.parent.mkdir(parents=True, exist_ok=True)
    x = signal(2.0, 48000, 2, 13)
    try:
        write_m4a(m4a, x, 48000)
    except Exception:  # pragma: no cover - depends on the FFmpeg build
        m4a.unlink(missing_ok=True)
    else:
        expected[M4A] = "ok"
        DURATIONS[M4A] = x.shape[0] / 48000

    # digital silence: scored (status ok), flagged in the error column
    (root / SILENT).parent.mkdir(parents=True, exist_ok=True)
    sf.write(root / SILENT, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    expected[SILENT] = "ok"
    DURATIONS[SILENT] = 1.0

    # a valid WAV with no frames at all
    (root / "broken").mkdir(exist_ok=True)
    sf.write(root / "broken/no frames.wav", np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    expected["broken/no frames.wav"] = "empty"
    DURATIONS["broken/no frames.wav"] = 0.0

    # a zero-byte file, a text file posing as MP3, a dangling symlink
    (root / "broken/zero bytes.wav").write_bytes(b"")
    expected["broken/zero bytes.wav"] = "error"
    (root / "broken/not really.mp3").write_text("This is a shopping list, not an MP3.\n" * 20, encoding="utf-8")
    expected["broken/not really.mp3"] = "error"
    os.symlink(root / "broken/gone away.wav", root / DANGLING)
    expected[DANGLING] = "error"

    # a FLAC cut in half. Decided by trying: libsndfile decodes the frames before the cut, then its
    # read fails ("flac decoder lost sync" / "psf_fseek() failed"); mictag keeps the audio decoded
    # before the break and flags the row "partial" ("decoding stopped at 2.56 s (...)").
    # (An MP3 cut in half is NOT usable here: libsndfile just ends early without an error, so it
    # reads as a shorter, "ok" file.)
    full = signal(6.0, 44100, 2, 14)
    buf = root / "broken/.full.flac"
    sf.write(buf, full, 44100, format="FLAC", subtype="PCM_16")
    data = buf.read_bytes()
    buf.unlink()
    (root / TRUNCATED).write_bytes(data[: len(data) // 2])
    expected[TRUNCATED] = TRUNCATED_STATUS

    # a symlink loop: a/b/c/up -> a/b (its own parent): walking it must not list files twice
    os.symlink("..", root / "a/b/c/up", target_is_directory=True)

    # files that are not audio: never rows
    (root / "notes.txt").write_text("liner notes\n", encoding="utf-8")
    (root / "covers").mkdir(exist_ok=True)
    (root / "covers/cover.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01" + bytes(200))
    (root / "a/b/c/readme.md").write_text("# nothing to hear\n", encoding="utf-8")
    return expected


# What a FLAC cut in half gives (decided by trying; see make_library).
TRUNCATED_STATUS = "partial"


def read_table(path: Path) -> dict[str, dict]:
    """A scan's CSV output, by path; every file must have one row."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a file has two rows"
    return {r["path"]: r for r in rows}
