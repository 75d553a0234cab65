"""A second, test-only set of real recordings from Debian packages that no corpus source, no
training set and no selection ever used (an "unseen family"), for the shipped tagger's cross-domain
test:

    python experiments/unseen_recordings.py --out /tmp/unseen [--cache DIR]

Every file is labelled by hand from its name and its package's documentation (the FILES table);
files whose instrument is not one OpenMIC class, or not known for sure, are left out with the
reason. Speech, noise and bird song are negatives (no label: the corpus's negatives are speech,
noise, silence and applause). STK's drums are 16-bit big-endian raw files at 22.05 kHz: they are
wrapped as WAV and decoded like every other file by mictag.audio (mono 16 kHz), then cut as
experiments/real_instruments.py cuts its clips (up to 3 s whole, longer files in 3-s clips). Every
clip is split "test". Writes out/audio/*.flac, out/labels.csv (file, split, the 20 OpenMIC
labels, all known) and out/report.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from mictag.corpus.packages import FetchError, fetch
from mictag.labels import OPENMIC_LABELS
from real_instruments import RATE, SILENCE_DBFS, decode, rms_dbfs, segment

LICENCES = {  # from usr/share/doc/<package>/copyright
    "stk": "STK licence (MIT-style) for the rawwaves",
    "sound-icons": "GPL-2+",
    "supercollider-common": "GPL-2+",
    "alsa-utils": "GPL-2",
}
NEGATIVE = ""  # a file no OpenMIC instrument plays in
# (package, path below usr/share, label or NEGATIVE, what it is)
FILES: list[tuple[str, str, str, str]] = [
    ("stk", "stk/rawwaves/bassdrum.raw", "drums", "STK Drummer: bass drum"),
    ("stk", "stk/rawwaves/snardrum.raw", "drums", "STK Drummer: snare drum"),
    ("stk", "stk/rawwaves/tomhidrm.raw", "drums", "STK Drummer: high tom"),
    ("stk", "stk/rawwaves/tommiddr.raw", "drums", "STK Drummer: mid tom"),
    ("stk", "stk/rawwaves/tomlowdr.raw", "drums", "STK Drummer: low tom"),
    ("stk", "stk/rawwaves/hihatcym.raw", "cymbals", "STK Drummer: hi-hat"),
    ("stk", "stk/rawwaves/crashcym.raw", "cymbals", "STK Drummer: crash cymbal"),
    ("stk", "stk/rawwaves/ridecymb.raw", "cymbals", "STK Drummer: ride cymbal"),
    ("sound-icons", "sounds/sound-icons/cymbaly-1.wav", "cymbals", "cymbals (Czech: cymbaly)"),
    ("sound-icons", "sounds/sound-icons/guitar-12.wav", "guitar", "guitar"),
    ("sound-icons", "sounds/sound-icons/guitar-13.wav", "guitar", "guitar"),
    ("sound-icons", "sounds/sound-icons/piano-3.wav", "piano", "piano"),
    ("sound-icons", "sounds/sound-icons/electric-piano-3.wav", "piano",
     "electric piano (AudioSet, OpenMIC's source, files it under Piano)"),
    ("sound-icons", "sounds/sound-icons/trumpet-1.wav", "trumpet", "trumpet"),
    ("sound-icons", "sounds/sound-icons/trumpet-12.wav", "trumpet", "trumpet"),
    ("sound-icons", "sounds/sound-icons/violoncello-7.wav", "cello", "cello (Czech: violoncello)"),
    ("sound-icons", "sounds/sound-icons/xylofon.wav", "mallet_percussion", "xylophone (Czech: xylofon)"),
    ("sound-icons", "sounds/sound-icons/canary-long.wav", NEGATIVE, "a canary singing: bird song"),
    ("sound-icons", "sounds/sound-icons/glass-water-1.wav", NEGATIVE, "water poured into a glass"),
    ("supercollider-common", "SuperCollider/sounds/a11wlk01.wav", NEGATIVE, "speech: Apollo 11 radio"),
    *[("alsa-utils", f"sounds/alsa/{name}.wav", NEGATIVE, "speech: a speaker-test channel name")
      for name in ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right",
                   "Side_Left", "Side_Right")],
    ("alsa-utils", "sounds/alsa/Noise.wav", NEGATIVE, "noise: speaker-test's noise signal"),
]
LEFT_OUT = {  # audio files in these packages not used, and why
    "stk rawwaves other than the drums": "single-cycle oscillator tables and excitation impulses, not recordings",
    "stk cowbell1.raw, tambourn.raw": "hand percussion: drums, cymbals or neither is a judgement call",
    "sound-icons cembalo-*, klavichord-4": "harpsichord and clavichord: no OpenMIC class (a tagger may say piano)",
    "sound-icons percussion-*, chord-7": "which instrument plays is not known",
    "sound-icons pisk-*, pipe, prompt, gummy-cat-2, cockchafer-gentleman-1": "beeps and effects: synthetic or unknown",
    "supercollider-common a11wlk01-44_1.aiff": "the same take as a11wlk01.wav",
    "supercollider-common SinedPink.aiff": "a test signal",
}
STK_RATE = 22050


def load(root: Path, rel: str) -> np.ndarray:
    """The file as mono 16 kHz float32 through mictag.audio; STK's raw files wrapped as WAV first."""
    path = root / "usr" / "share" / rel
    if path.suffix != ".raw":
        return decode(path)
    pcm = np.frombuffer(path.read_bytes(), ">i2").astype(np.float32) / 32768.0
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / (path.stem + ".wav")
        sf.write(wav, pcm, STK_RATE, subtype="PCM_16")
        return decode(wav)


def build(roots: dict[str, Path], out_dir: Path, max_clips: int = 8) -> dict:
    shutil.rmtree(out_dir / "audio", ignore_errors=True)
    (out_dir / "audio").mkdir(parents=True)
    records, dropped = [], []
    with (out_dir / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "split", *OPENMIC_LABELS])
        for package, rel, label, what in FILES:
            source = f"{package}/{rel}"
            clips = []
            for k, clip in enumerate(segment(load(roots[package], rel), max_clips)):
                if rms_dbfs(clip) < SILENCE_DBFS:
                    dropped.append({"source": source, "clip": k, "reason": f"silent clip (RMS < {SILENCE_DBFS:g} dBFS)"})
                    continue
                stem = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{package}_{Path(rel).stem}")
                file = f"audio/{stem}_{k:02d}.flac"
                sf.write(out_dir / file, clip, RATE, subtype="PCM_16", format="FLAC")
                writer.writerow([file, "test", *(int(lab == label) for lab in OPENMIC_LABELS)])
                clips.append((file, clip.size / RATE))
            records.append({"source": source, "label": label or None, "what": what, "take": source,
                            "split": "test", "clips": [c for c, _ in clips],
                            "seconds": round(sum(s for _, s in clips), 3)})
    counts = {label or "negative": sum(len(r["clips"]) for r in records if (r["label"] or "") == label)
              for label in dict.fromkeys(lab for _, _, lab, _ in FILES)}
    report = {
        "what": "test-only real recordings from packages no corpus source, training set or selection used",
        "packages": {name: {"root": root.name, "licence": LICENCES[name]} for name, root in roots.items()},
        "clip_seconds": 3.0, "sample_rate": RATE, "counts": counts,
        "total_clips": sum(len(r["clips"]) for r in records),
        "total_seconds": round(sum(r["seconds"] for r in records), 1),
        "left_out": LEFT_OUT, "dropped": dropped, "sources": records,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/mictag/experiments/debs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-clips", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        roots = fetch(LICENCES, args.cache.expanduser())
    except FetchError as exc:
        sys.exit(f"unseen_recordings: {exc}")
    report = build(roots, args.out, args.max_clips)
    print(json.dumps(report["counts"]), f"{report['total_clips']} clips, {report['total_seconds']:.0f} s")
    print(f"wrote {args.out / 'labels.csv'} and {args.out / 'report.json'}")


if __name__ == "__main__":
    main()
