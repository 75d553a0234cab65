"""Build a labelled data set ("folder" format) of real single-instrument recordings from two Debian
packages, for the reprogrammer accuracy experiment (frozen musicnn, 3-s windows at 16 kHz):

    python experiments/real_instruments.py --out /tmp/realinst [--cache DIR] [--seed 0] [--max-clips 8]

The packages are fetched with `apt-get download` (no root, never installed) and unpacked with
`dpkg-deb -x` into the cache. Each audio file gets the label of the first RULES entry matching its
path, is decoded with mictag.audio (mono 16 kHz) and cut into 3-s clips. Splits are drawn per label
BY TAKE (all clips of a recording, and of its processed copies, share a split). Writes
out/audio/*.flac, out/labels.csv (file, split, one 0/1 column per surviving label) and out/report.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from mictag import audio
from mictag.corpus.packages import FetchError, fetch
from mictag.corpus.recordings import RULES, label_for
from mictag.corpus.recordings import take as take_of
from mictag.labels import OPENMIC_LABELS

LICENCES = {  # from usr/share/doc/<package>/copyright
    "sonic-pi-samples": "CC0 (every sample, each from freesound.org; sources listed in the copyright file)",
    "lmms-common": "GPL-2+ (Files: *, samples included)",
}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff"}
RATE = audio.TARGET_RATE
CLIP_S, MIN_TAIL_S, SILENCE_DBFS, MIN_TAKES = 3.0, 1.0, -60.0, 3
SPLITS = ("train", "val", "test")

@dataclass
class Source:
    id: str  # "<package>/<path below usr/share>"
    path: Path
    label: str
    clips: list[np.ndarray] = field(default_factory=list)

    @property
    def take(self) -> str:
        return take_of(self.id)


def fetch_packages(cache_dir: Path) -> list[Path]:
    """Each package of LICENCES downloaded and unpacked in cache_dir (skipped where already
    unpacked); returns the unpacked roots, named like their .deb (<package>_<version>_<arch>)."""
    return list(fetch(LICENCES, cache_dir).values())


def find_sources(roots: list[Path]) -> tuple[list[Source], list[dict], Counter]:
    """Labelled audio files, dropped audio files (with reasons), and non-audio files by suffix."""
    sources, dropped, skipped = [], [], Counter()
    for root in roots:
        share = root / "usr" / "share"
        for path in sorted(p for p in share.rglob("*") if p.is_file()):
            if path.suffix.lower() not in AUDIO_SUFFIXES:  # presets (.xpf, .xiz, .ds), projects, icons
                skipped[path.suffix.lower() or "(none)"] += 1
                continue
            rel = path.relative_to(share).as_posix()
            source_id = f"{root.name.split('_')[0]}/{rel}"
            label, why = label_for(rel)
            if label is None:
                dropped.append({"source": source_id, "reason": why})
            else:
                sources.append(Source(source_id, path, label))
    return sources, dropped, skipped


def rms_dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12))


def segment(x: np.ndarray, max_clips: int) -> list[np.ndarray]:
    """Up to 3 s: the whole signal; longer: consecutive 3-s clips (at most ``max_clips``) less a
    trailing piece under 1 s."""
    n = int(CLIP_S * RATE)
    if x.size <= n:
        return [x]
    clips = [x[i:i + n] for i in range(0, x.size, n)][:max_clips]
    return [c for c in clips if c.size >= MIN_TAIL_S * RATE]


def decode(path: Path) -> np.ndarray:
    """The whole file as mono 16 kHz float32 (mictag.audio); AudioError unless fully decoded."""
    stream = audio.AudioStream(path)
    chunks = list(stream)
    if stream.partial or not chunks:
        raise audio.AudioError(f"{path}: {stream.partial or 'no audio'}")
    return np.concatenate(chunks)


def cut_sources(sources: list[Source], max_clips: int, dropped: list[dict]) -> list[Source]:
    """The sources with their clips; undecodable files and silent clips go to ``dropped``."""
    kept = []
    for source in sources:
        try:
            x = decode(source.path)
        except audio.AudioError as exc:
            reason = str(exc).removeprefix(f"{source.path}: ")
            dropped.append({"source": source.id, "reason": f"undecodable by mictag.audio: {reason}"})
            continue
        for k, clip in enumerate(segment(x, max_clips)):
            if rms_dbfs(clip) < SILENCE_DBFS:
                dropped.append({"source": source.id, "clip": k, "reason": f"silent clip (RMS < {SILENCE_DBFS:g} dBFS)"})
            else:
                source.clips.append(clip)
        if source.clips:
            kept.append(source)
    return kept


def assign_splits(sources: list[Source], seed: int) -> tuple[dict[str, str], dict[str, int]]:
    """(take -> split, {label: takes} of the labels dropped for fewer than MIN_TAKES takes). Per
    label in OpenMIC order, a seeded shuffle of its takes: about 20% test and 20% val (at least one
    each), the rest train."""
    takes: dict[str, set[str]] = defaultdict(set)
    for source in sources:
        takes[source.label].add(source.take)
    rng = np.random.default_rng(seed)
    splits, too_few = {}, {}
    for label in (lab for lab in OPENMIC_LABELS if lab in takes):
        ordered = sorted(takes[label])
        if len(ordered) < MIN_TAKES:
            too_few[label] = len(ordered)
            continue
        held = max(1, round(0.2 * len(ordered)))
        for rank, i in enumerate(rng.permutation(len(ordered))):
            splits[ordered[i]] = "test" if rank < held else "val" if rank < 2 * held else "train"
    return splits, too_few


def write_dataset(out_dir: Path, sources: list[Source], splits: dict[str, str]) -> list[dict]:
    """The clips as 16-bit FLAC under out_dir/audio and labels.csv; one record per source written."""
    sources = [s for s in sources if s.take in splits]
    labels = [lab for lab in OPENMIC_LABELS if lab in {s.label for s in sources}]
    shutil.rmtree(out_dir / "audio", ignore_errors=True)
    (out_dir / "audio").mkdir(parents=True)
    records = []
    with (out_dir / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "split", *labels])
        for source in sources:
            stem = re.sub(r"[^A-Za-z0-9.+-]+", "_", source.id.rsplit(".", 1)[0].replace("/samples/", "/"))
            files = [f"audio/{stem}_{k:02d}.flac" for k in range(len(source.clips))]
            for file, clip in zip(files, source.clips):
                sf.write(out_dir / file, clip, RATE, subtype="PCM_16", format="FLAC")
                writer.writerow([file, splits[source.take], *(int(lab == source.label) for lab in labels)])
            records.append({"source": source.id, "label": source.label, "take": source.take,
                            "split": splits[source.take], "clips": files,
                            "seconds": round(sum(c.size for c in source.clips) / RATE, 3)})
    return records


def count(records: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    """label (OpenMIC order) -> split -> {sources, clips}."""
    return {label: {split: {"sources": sum(1 for r in mine if r["split"] == split),
                            "clips": sum(len(r["clips"]) for r in mine if r["split"] == split)} for split in SPLITS}
            for label in OPENMIC_LABELS if (mine := [r for r in records if r["label"] == label])}


def build(roots: list[Path], out_dir: Path, seed: int = 0, max_clips: int = 8) -> dict:
    """The data set from unpacked package roots into ``out_dir``; returns (and writes) the report."""
    sources, dropped, skipped = find_sources(roots)
    sources = cut_sources(sources, max_clips, dropped)
    splits, too_few = assign_splits(sources, seed)
    dropped += [{"source": s.id, "reason": f"label {s.label} has {too_few[s.label]} take(s), fewer than {MIN_TAKES}"}
                for s in sources if s.label in too_few]
    records = write_dataset(out_dir, sources, splits)
    packages = [root.name.split("_") for root in roots]
    report = {
        "packages": {name: {"version": version, "deb": f"{name}_{version}_{arch}.deb", "licence": LICENCES.get(name)}
                     for name, version, arch in packages},
        "seed": seed, "max_clips_per_source": max_clips, "clip_seconds": CLIP_S, "sample_rate": RATE,
        "counts": count(records),
        "total_clips": sum(len(r["clips"]) for r in records),
        "total_seconds": round(sum(r["seconds"] for r in records), 1),
        "labels_dropped_too_few_takes": too_few,
        "rules": [{"pattern": p, "label": label, "why": why} for p, label, why in RULES],
        "non_audio_files_skipped": dict(sorted(skipped.items())),
        "dropped": dropped,
        "sources": records,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def print_summary(report: dict) -> None:
    print(f"{'label':<10}" + "".join(f"{split + ' src/clips':>18}" for split in SPLITS))
    for label, cells in report["counts"].items():
        print(f"{label:<10}" + "".join(f"{cells[s]['sources']:>12} / {cells[s]['clips']:<3}" for s in SPLITS))
    print(f"{report['total_clips']} clips, {report['total_seconds'] / 60:.1f} min; {len(report['dropped'])} drops; "
          f"labels with fewer than {MIN_TAKES} takes: {report['labels_dropped_too_few_takes']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Labelled real-instrument clips from sonic-pi-samples and lmms-common.")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/mictag/experiments/debs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-clips", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        roots = fetch_packages(args.cache.expanduser())
    except FetchError as exc:
        sys.exit(f"real_instruments: {exc}")
    print_summary(build(roots, args.out, args.seed, args.max_clips))
    print(f"wrote {args.out / 'labels.csv'} and {args.out / 'report.json'}")


if __name__ == "__main__":
    main()
