"""Build the corpus: OpenMIC-like 10-s clips, 1-4 instruments from different sources each, rendered
from recorded-instrument samples, in the folder format ``mictag train`` reads.

    mictag corpus build --out DIR [--clips 3000] [--seed 0] [--packages ...] [--workers N]
                        [--style v1|produced|oneshots] [--negatives SHARE]

Deterministic: a clip is made from its own seeded generator and rendered on a synth of its own,
so the same spec gives the same files with any number of workers. Writes:

- ``audio/<split>/clip_NNNNN.flac`` (16 kHz mono) and ``midi/clip_NNNNN.mid`` (what was played);
- ``labels.csv``: OpenMIC-style masked labels (about 90% blank = unknown; every clip keeps at
  least one), with a ``split`` column; ``labels-full.csv``: the full truth;
- ``clips.jsonl``: each clip's song, parts (source, class, role, gain) and room;
- ``SOURCES.md``: packages, versions and licences, every source by class and split, how real the
  hard classes are; ``corpus.json``: the spec, its digest (the recipe hash) and the counts.

Splits are drawn over sources (presets, kits): no source is heard in two splits. A class with
fewer than three sources is split by register (low notes train, middle val, high test).

Styles: ``v1`` (the default) is the corpus as first built, byte for byte. ``produced`` plays the
same clips as a band and a studio would: performed notes (:mod:`mictag.corpus.performance`),
reverbs, a bus compressor and a master limiter (:mod:`mictag.corpus.mastering`), and optionally a
share of clips with no instrument (:mod:`mictag.corpus.negatives`). Everything it adds is drawn
from a generator of its own per clip, so its clips play what the v1 clips of the same spec play.
``oneshots`` sounds like a sample library: one instrument a clip (its sources drawn and split as
in v1), one isolated note, strummed chord or hit at the start of every 3 s, then its decay and
silence, through the v1 room.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mictag.corpus import instruments as I
from mictag.corpus.midi import DRUM_CHANNEL, Part, write_midi
from mictag.corpus.music import drum_pattern, line, new_song, one_shots
from mictag.corpus.room import impulse_response, mix, reverb, rms, tilt
from mictag.errors import ConfigError
from mictag.labels import OPENMIC_LABELS

SPLITS = ("train", "val", "test")
CLIP_SPLIT_SHARES = (0.7, 0.15, 0.15)
INSTRUMENT_COUNTS = ((1, 0.3), (2, 0.35), (3, 0.2), (4, 0.15))
BUILDER_VERSION = 1  # bump when a change alters the clips a spec makes
# Styles after v1, each with its own version (in the recipe only for that style): bump one when a
# change alters that style's clips, and v1's recipes stay as they are.
STYLE_VERSIONS = {"v1": None, "produced": 1, "oneshots": 1}
ONE_SHOT_SLOT_S = 3.0  # the one-shots style: one sound every slot (musicnn's window: each window one file's worth)


@dataclass(frozen=True)
class CorpusSpec:
    clips: int = 3000
    seconds: float = 10.0
    sample_rate: int = 16000
    seed: int = 0
    packages: tuple[str, ...] = I.PACKAGES
    known_fraction: float = 0.1  # of all (clip, class) labels, as in OpenMIC (about 90% missing)
    known_positive_share: float = 0.5  # of the known labels (an assumption: see SOURCES.md)
    style: str = "v1"  # "produced": performed notes, studio reverbs, compressor and limiter (see the module doc)
    negatives: float = 0.0  # share of clips with no instrument (produced style only)

    def __post_init__(self):
        if self.style not in STYLE_VERSIONS:
            raise ConfigError(f"unknown corpus style {self.style!r}: use one of {', '.join(STYLE_VERSIONS)}")
        if not 0.0 <= self.negatives < 1.0:
            raise ConfigError(f"negatives is the share of clips with no instrument: from 0 up to (not including) 1, "
                              f"not {self.negatives}")
        if self.negatives and self.style == "v1":
            raise ConfigError("negative clips are part of the produced style: use style 'produced' "
                              "(mictag corpus build --style produced)")

    def to_dict(self) -> dict:
        out = {**asdict(self), "packages": list(self.packages), "builder_version": BUILDER_VERSION}
        # Left out at their defaults, so that every recipe from before they existed keeps its digest.
        if self.style == "v1":
            del out["style"]
        else:
            out["style_version"] = STYLE_VERSIONS[self.style]
        if not self.negatives:
            del out["negatives"]
        return out

    def digest(self) -> str:
        from mictag.digest import config_digest

        return config_digest(self.to_dict())


@dataclass(frozen=True)
class Source:
    """Something that plays one class (or, a kit, drums and cymbals): the unit of the split."""

    id: str
    labels: tuple[str, ...]
    kind: str  # preset | soundfont-kit | hydrogen-kit | recording
    font: str = ""
    bank: int = 0
    program: int = 0
    low: int = 0
    high: int = 127
    role: str = "melody"
    folder: str = ""  # hydrogen kits; the file of a recording
    group: str = ""  # what must share a split with it (a recording's processed copies); default: itself

    @property
    def unit(self) -> str:
        return self.group or self.id


@dataclass
class Catalogue:
    """The sources found in the unpacked packages, and the split of each (with its register)."""

    fonts: dict[str, str]  # font key -> path
    sources: list[Source]
    splits: dict[str, dict[str, tuple[int, int] | None]] = field(default_factory=dict)  # split -> id -> register
    speech: dict[str, list[str]] = field(default_factory=dict)  # split -> speech files (negative clips)

    def available(self, split: str, label: str) -> list[tuple[Source, tuple[int, int] | None]]:
        return [(s, self.splits[split][s.id]) for s in self.sources if label in s.labels and s.id in self.splits[split]]


def catalogue(roots: dict[str, Path], seed: int) -> Catalogue:
    """Every usable source in ``roots`` (package -> unpacked root), with seeded splits."""
    from mictag.corpus.kits import find_kits
    from mictag.corpus.packages import refuse_evaluation_only
    from mictag.corpus.soundfont import presets

    for name in roots:
        refuse_evaluation_only(name)
    fonts, slots = {}, {}
    for key, (package, rel) in I.FONTS.items():
        if package in roots and (roots[package] / rel).is_file():
            fonts[key] = str(roots[package] / rel)
            slots[key] = {(p.bank, p.program) for p in presets(fonts[key])}
    sources = [Source(p.id, (p.label,), "preset", p.font, p.bank, p.program, p.low, p.high, p.role)
               for p in I.PRESETS if p.font in fonts and (p.bank, p.program) in slots[p.font]]
    sources += [Source(f"{font}:{bank}:{program}", ("drums", "cymbals"), "soundfont-kit", font, bank, program)
                for font, bank, program in I.SOUNDFONT_KITS if font in fonts and (bank, program) in slots[font]]
    if "hydrogen-drumkits" in roots:
        for kit in find_kits(roots["hydrogen-drumkits"] / I.HYDROGEN_DIR):
            labels = tuple(lab for lab in ("drums", "cymbals") if kit.has(lab))
            sources.append(Source(kit.id, labels, "hydrogen-kit", folder=str(kit.folder)))
    from mictag.corpus.recordings import find_recordings, take

    sources += [Source(sid, (label,), "recording", role="recording", folder=str(path), group=take(sid))
                for sid, label, path in find_recordings(roots)]
    from mictag.corpus.negatives import find_speech

    return Catalogue(fonts, sources, split_sources(sources, seed), split_files(find_speech(roots), seed))


def split_sources(sources: list[Source], seed: int) -> dict[str, dict[str, tuple[int, int] | None]]:
    """split -> {source id: register or None}. Per class, a seeded shuffle of its sources: about
    20% test and 15% val (at least one each), the rest train; a class with fewer than three
    sources gives each split a third of every source's register instead."""
    rng = np.random.default_rng([seed, 7])
    out: dict[str, dict[str, tuple[int, int] | None]] = {s: {} for s in SPLITS}
    taken: set[str] = set()
    for label in OPENMIC_LABELS:
        mine = [s for s in sources if label in s.labels and s.id not in taken]
        units = sorted({s.unit for s in mine})
        if not units:
            continue
        if len(units) < 3 and all(s.kind == "preset" for s in mine):
            for s in mine:
                third = (s.high - s.low) / 3
                edges = [s.low, round(s.low + third), round(s.low + 2 * third), s.high]
                for k, split in enumerate(SPLITS):  # disjoint registers: no note in two splits
                    out[split][s.id] = (edges[k] + (1 if k else 0), edges[k + 1])
                taken.add(s.id)
            continue
        n = len(units)
        n_test, n_val = max(1, round(0.2 * n)), max(1, round(0.15 * n))
        split_of = {}
        for rank, i in enumerate(rng.permutation(n)):
            split_of[units[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        for s in mine:
            out[split_of[s.unit]][s.id] = None
            taken.add(s.id)
    return out


def split_files(files: list[Path], seed: int) -> dict[str, list[str]]:
    """split -> files, disjoint: about 20% test and 15% val (at least one each), the rest train;
    with fewer than three files every split has them all."""
    names = [str(f) for f in sorted(files)]
    if len(names) < 3:
        return {s: list(names) for s in SPLITS}
    n = len(names)
    n_test, n_val = max(1, round(0.2 * n)), max(1, round(0.15 * n))
    split_of = {}
    for rank, j in enumerate(np.random.default_rng([seed, 8]).permutation(n)):
        split_of[names[j]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return {s: [f for f in names if split_of[f] == s] for s in SPLITS}


# -- planning a clip ------------------------------------------------------------------------------
def clip_split(i: int, seed: int) -> str:
    r = np.random.default_rng([seed, i, 1]).random()
    return "train" if r < CLIP_SPLIT_SHARES[0] else "val" if r < CLIP_SPLIT_SHARES[0] + CLIP_SPLIT_SHARES[1] else "test"


def plan_clip(i: int, spec: CorpusSpec, cat: Catalogue) -> dict:
    """What clip ``i`` plays: its split, song, parts (source, labels, role, notes, gain) and room."""
    rng = np.random.default_rng([spec.seed, i])
    split = clip_split(i, spec.seed)
    song = new_song(rng, spec.seconds)
    classes = [lab for lab in OPENMIC_LABELS if cat.available(split, lab)]
    counts, weights = zip(*INSTRUMENT_COUNTS)
    k = min(len(classes), int(rng.choice(counts, p=weights)))
    oneshots = spec.style == "oneshots"
    if oneshots:  # one instrument a clip, as a sample library's file
        k = min(k, 1)
    chosen = [classes[j] for j in rng.choice(len(classes), size=k, replace=False)]
    parts, used = [], set()
    if "drums" in chosen or "cymbals" in chosen:
        pieces = "both" if {"drums", "cymbals"} <= set(chosen) else ("drums" if "drums" in chosen else "cymbals")
        kits = [(s, r) for s, r in cat.available(split, "drums" if pieces != "cymbals" else "cymbals")
                if pieces != "both" or set(s.labels) >= {"drums", "cymbals"}]
        if kits:
            kit, _ = kits[int(rng.integers(len(kits)))]
            labels = ("drums", "cymbals") if pieces == "both" else (pieces,)
            if kit.kind == "recording":
                notes = []
            elif oneshots:
                notes = one_shots(rng, song, ONE_SHOT_SLOT_S, "drums", pieces=pieces)
            else:
                notes = drum_pattern(rng, song, pieces)
            parts.append({"source": kit, "labels": labels, "role": "drums", "notes": notes,
                          "seed": int(rng.integers(2**31))})
            used.add(kit.id)
    for label in chosen:
        if label in ("drums", "cymbals"):
            continue
        options = [(s, r) for s, r in cat.available(split, label) if s.id not in used]
        if not options:
            continue
        source, register = options[int(rng.integers(len(options)))]
        low, high = register or (source.low, source.high)
        if source.kind != "preset":
            notes = []
        elif oneshots:
            notes = one_shots(rng, song, ONE_SHOT_SLOT_S, source.role, low, high)
        else:
            notes = line(rng, song, source.role, low, high)
        parts.append({"source": source, "labels": (label,), "role": source.role, "notes": notes,
                      "seed": int(rng.integers(2**31))})
        used.add(source.id)
    for p in parts:
        p["gain_db"] = float(rng.uniform(-12, 0))
    room = {"rt60": float(rng.uniform(0.2, 1.2)), "wet": float(rng.uniform(0.0, 0.35)) if rng.random() < 0.8 else 0.0,
            "low_db": float(rng.uniform(-6, 6)), "high_db": float(rng.uniform(-6, 6)),
            "peak_dbfs": float(rng.uniform(-12, -1)), "ir_seed": int(rng.integers(2**31))}
    plan = {"index": i, "split": split, "song": asdict(song), "parts": parts, "room": room}
    if spec.style == "produced":
        plan_production(plan, spec, cat)
    return plan


def plan_production(plan: dict, spec: CorpusSpec, cat: Catalogue) -> None:
    """The produced style's additions to a v1 plan, in place, from a generator of the clip's own:
    a negative (no parts) or the parts' performance; the reverb, compressor and limiter. The v1
    room keeps its tilt and level; its reverb is replaced."""
    from mictag.corpus import negatives as N
    from mictag.corpus.performance import draw_jitter, draw_performance, perform
    from mictag.corpus.room import REVERBS

    rng = np.random.default_rng([spec.seed, plan["index"], 2])
    negative = bool(rng.random() < spec.negatives)  # drawn always: the other clips play as with no negatives
    room = plan["room"]
    plan["room"] = {k: room[k] for k in ("low_db", "high_db", "peak_dbfs")}
    production: dict = {}
    if negative:
        kinds, p = N.kinds_available(cat.speech.get(plan["split"], []))
        kind = kinds[int(rng.choice(len(kinds), p=p))]
        production["negative"] = {"kind": kind, "seed": int(rng.integers(2**31))}
        if kind == "noise":
            production["negative"] |= {"colour": list(N.NOISE_COLOURS)[int(rng.integers(len(N.NOISE_COLOURS)))],
                                       "level_dbfs": float(rng.uniform(-50, -15))}
        elif kind == "applause":
            production["negative"]["claps_per_second"] = float(rng.uniform(20, 80))
        plan["parts"], plan["song"] = [], None
    else:
        perf = draw_performance(rng)
        production["performance"] = perf.to_dict()
        notes_rng = np.random.default_rng(int(rng.integers(2**31)))
        for part in plan["parts"]:
            if part["notes"]:
                part["jitter_s"] = draw_jitter(rng)
                part["notes"] = perform(part["notes"], spec.seconds, perf, part["jitter_s"], notes_rng)
    kind = production.get("negative", {}).get("kind")
    if kind in ("silence", "noise"):  # played as they are: nothing to mix or master
        plan["production"] = production
        return
    # Applause is heard in a room; music and speech in any of the reverbs (or none).
    verb = "room" if kind == "applause" else REVERBS[int(rng.choice(len(REVERBS), p=(0.3, 0.25, 0.2, 0.25)))]
    rt60 = {"room": (0.2, 1.2), "hall": (1.5, 3.0), "plate": (0.8, 2.0), "dry": (0.0, 0.0)}[verb]
    production["reverb"] = {"kind": verb, "rt60": float(rng.uniform(*rt60)),
                            "predelay": float(rng.uniform(0.01, 0.04)) if verb == "hall" else 0.0,
                            "wet": float(rng.uniform(0.1, 0.35)) if verb != "dry" else 0.0,
                            "seed": int(rng.integers(2**31))}
    production["compressor"] = {"threshold_db": float(rng.uniform(-24, -10)), "ratio": float(rng.uniform(2, 6)),
                                "attack_s": float(rng.uniform(0.005, 0.03)), "release_s": float(rng.uniform(0.05, 0.3))}
    production["limiter"] = {"makeup_db": float(rng.uniform(0, 10)), "ceiling_db": float(rng.uniform(-1, -0.1)),
                             "attack_s": float(rng.uniform(0.001, 0.005)), "release_s": float(rng.uniform(0.02, 0.15))}
    # No panning: the clips are mono (as the tagger hears them: every file is downmixed), so a
    # part's place in a stereo field would be summed away.
    plan["production"] = production


# -- rendering ------------------------------------------------------------------------------------
MIN_PART_RMS = 1e-4  # a part quieter than this (a note outside its preset's samples) is dropped


def render_clip(plan: dict, cat: Catalogue, spec: CorpusSpec) -> tuple[np.ndarray, list[dict]]:
    """(the clip's samples, the parts that sound)."""
    from mictag.corpus.kits import read_kit, render_kit
    from mictag.corpus.synth import render_parts

    rate, seconds = spec.sample_rate, spec.seconds
    if "negative" in plan.get("production", {}):
        return render_negative(plan, cat, spec), []
    synth_items, slots = [], []
    for k, p in enumerate(plan["parts"]):
        s = p["source"]
        if s.kind in ("preset", "soundfont-kit"):
            channel = DRUM_CHANNEL if s.kind == "soundfont-kit" else 0
            synth_items.append((cat.fonts[s.font], Part(channel, s.program, s.bank, p["notes"])))
            slots.append(k)
    audio: dict[int, np.ndarray] = dict(zip(slots, render_parts(synth_items, seconds, rate))) if synth_items else {}
    from mictag.corpus.recordings import render_recording

    beat = 60.0 / plan["song"]["bpm"]
    for k, p in enumerate(plan["parts"]):
        if p["source"].kind == "hydrogen-kit":
            audio[k] = render_kit(read_kit(Path(p["source"].folder)), p["notes"], seconds, rate)
        elif p["source"].kind == "recording":
            pitched = not set(p["labels"]) & {"drums", "cymbals"}
            audio[k] = render_recording(p["source"].folder, np.random.default_rng(p["seed"]), beat, seconds, rate,
                                        pitched, every=ONE_SHOT_SLOT_S if spec.style == "oneshots" else None)
    sounding = [k for k in range(len(plan["parts"])) if rms(audio[k]) > MIN_PART_RMS]
    if not sounding:
        return np.zeros(int(seconds * rate), np.float32), []
    x = mix([audio[k] for k in sounding], [plan["parts"][k]["gain_db"] for k in sounding])
    return _finish(x, plan, rate), [plan["parts"][k] for k in sounding]


def _finish(x: np.ndarray, plan: dict, rate: int) -> np.ndarray:
    """The mix through the room's tilt, then the v1 room or the produced chain, at the clip's peak."""
    room = plan["room"]
    x = tilt(x, rate, room["low_db"], room["high_db"])
    if "production" in plan:
        x = _master(x, plan["production"], rate)
    elif room["wet"] > 0:
        x = reverb(x, impulse_response(np.random.default_rng(room["ir_seed"]), room["rt60"], rate), room["wet"])
    peak = float(np.abs(x).max()) or 1.0
    return (x / peak * 10 ** (room["peak_dbfs"] / 20)).astype(np.float32)


def _master(x: np.ndarray, production: dict, rate: int) -> np.ndarray:
    """The produced style's chain: reverb, then the bus at full scale (where the compressor's
    threshold is set) through the compressor and the limiter. The clip's peak level is set after
    it; that level (-12..-1 dBFS) is never above the limiter's ceiling (-1..-0.1 dBFS)."""
    from mictag.corpus.mastering import compress, limit
    from mictag.corpus.room import response

    verb = production["reverb"]
    ir = response(verb["kind"], verb["rt60"], rate, verb["seed"], verb["predelay"])
    if ir is not None:
        x = reverb(x, ir, verb["wet"])
    x = x / (float(np.abs(x).max()) or 1.0)
    x = compress(x, rate, **production["compressor"])
    return limit(x, rate, **production["limiter"])


def render_negative(plan: dict, cat: Catalogue, spec: CorpusSpec) -> np.ndarray:
    """A clip with no instrument: exact zeros, noise at its level, or applause or speech through
    the produced chain."""
    from mictag.corpus import negatives as N

    rate, n = spec.sample_rate, int(spec.seconds * spec.sample_rate)
    what = plan["production"]["negative"]
    rng = np.random.default_rng(what["seed"])
    if what["kind"] == "silence":
        return np.zeros(n, np.float32)
    if what["kind"] == "noise":
        return N.noise(rng, n, what["colour"], what["level_dbfs"])
    if what["kind"] == "applause":
        x = N.applause(rng, n, rate, what["claps_per_second"])
    else:
        x = N.speech(rng, cat.speech[plan["split"]], n, rate)
    return _finish(x, plan, rate)


def _make(args) -> list[dict]:
    """Worker: plan, render and write the clips ``indices``; their records."""
    indices, spec, cat, out = args
    import soundfile as sf

    records = []
    for i in indices:
        plan = plan_clip(i, spec, cat)
        x, parts = render_clip(plan, cat, spec)
        name = f"clip_{i:05d}"
        audio_rel = f"audio/{plan['split']}/{name}.flac"
        sf.write(out / audio_rel, x, spec.sample_rate, subtype="PCM_16", format="FLAC")
        write_midi(out / "midi" / f"{name}.mid", [
            Part(DRUM_CHANNEL if p["source"].kind != "preset" else min(k, 8), p["source"].program, p["source"].bank,
                 p["notes"]) for k, p in enumerate(parts) if p["notes"]])  # recordings play no notes
        labels = sorted({lab for p in parts for lab in p["labels"]}, key=OPENMIC_LABELS.index)
        record = {"file": audio_rel, "split": plan["split"], "labels": labels, "song": plan["song"],
                  "room": plan["room"],
                  "parts": [{"source": p["source"].id, "labels": list(p["labels"]), "role": p["role"],
                             "gain_db": round(p["gain_db"], 2), "notes": len(p["notes"]),
                             "pitches": [min(n.pitch for n in p["notes"]), max(n.pitch for n in p["notes"])]
                             if p["notes"] else None,
                             **({"jitter_ms": round(1000 * p["jitter_s"], 1)} if "jitter_s" in p else {})}
                            for p in parts]}
        if "production" in plan:  # v1 records keep their fields
            production = plan["production"]
            if "negative" in production:
                record["negative"] = production["negative"]["kind"]
            record["production"] = production
        records.append(record)
    return records


# -- labels ---------------------------------------------------------------------------------------
def mask_labels(records: list[dict], spec: CorpusSpec) -> list[dict[str, int | None]]:
    """OpenMIC-style known labels per clip: ``known_fraction`` of all labels known, every clip with
    at least one, positives ``known_positive_share`` of the known (as far as there are positives)."""
    rng = np.random.default_rng([spec.seed, 3])
    n = len(records)
    truth = [{lab: int(lab in r["labels"]) for lab in OPENMIC_LABELS} for r in records]
    known = [set() for _ in range(n)]
    for i, r in enumerate(records):  # at least one known label per clip
        pick = r["labels"] if r["labels"] and rng.random() < spec.known_positive_share else OPENMIC_LABELS
        known[i].add(pick[int(rng.integers(len(pick)))])
    target = int(round(spec.known_fraction * n * len(OPENMIC_LABELS)))
    positives = [(i, lab) for i in range(n) for lab in records[i]["labels"] if lab not in known[i]]
    negatives = [(i, lab) for i in range(n) for lab in OPENMIC_LABELS if not truth[i][lab] and lab not in known[i]]
    have = sum(len(k) for k in known)
    want_pos = max(0, min(len(positives), int(round(spec.known_positive_share * target))
                          - sum(1 for i in range(n) for lab in known[i] if truth[i][lab])))
    want_neg = max(0, min(len(negatives), target - have - want_pos))
    for pool, want in ((positives, want_pos), (negatives, want_neg)):
        for j in rng.permutation(len(pool))[:want]:
            i, lab = pool[j]
            known[i].add(lab)
    return [{lab: (truth[i][lab] if lab in known[i] else None) for lab in OPENMIC_LABELS} for i in range(n)]


def _write_labels(path: Path, records: list[dict], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", *OPENMIC_LABELS])
        for r, row in zip(records, rows):
            w.writerow([r["file"], r["split"], *("" if row[lab] is None else row[lab] for lab in OPENMIC_LABELS)])


# -- the whole build --------------------------------------------------------------------------------
def build(out: str | os.PathLike, spec: CorpusSpec = CorpusSpec(), cache: str | os.PathLike | None = None,
          workers: int | None = None, roots: dict[str, Path] | None = None, on_message=None) -> dict:
    """Build the corpus into ``out``; returns (and writes) corpus.json's content."""
    import time

    from mictag.corpus.negatives import SPEECH_PACKAGE
    from mictag.corpus.packages import FetchError, fetch, licence, version
    from mictag.paths import mictag_home

    say = on_message or (lambda m: None)
    out = Path(out)
    t0 = time.perf_counter()
    speech_missing = ""
    if roots is None:
        cache = Path(cache) if cache else mictag_home() / "cache" / "debs"
        say(f"fetching {', '.join(spec.packages)} into {cache}")
        roots = fetch(spec.packages, cache)
        if spec.negatives and SPEECH_PACKAGE not in roots:
            try:
                roots = {**roots, **fetch([SPEECH_PACKAGE], cache)}
            except FetchError as exc:  # speech is one kind of negative among four: go on without it
                speech_missing = str(exc)
                say(f"no speech in the negative clips: {exc}")
    cat = catalogue(roots, spec.seed)
    if spec.negatives and not speech_missing and not any(cat.speech.values()):
        speech_missing = f"{SPEECH_PACKAGE} is not among the packages"
    for split in SPLITS:
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
    (out / "midi").mkdir(parents=True, exist_ok=True)
    workers = max(1, workers or (os.cpu_count() or 1))
    chunks = [list(range(k, spec.clips, workers * 4)) for k in range(workers * 4)]
    jobs = [(c, spec, cat, out) for c in chunks if c]
    say(f"{len(cat.sources)} sources; rendering {spec.clips} clips in {workers} processes")
    if workers == 1:
        parts = [_make(j) for j in jobs]
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_make, jobs)
    records = sorted((r for chunk in parts for r in chunk), key=lambda r: r["file"])
    masked = mask_labels(records, spec)
    _write_labels(out / "labels.csv", records, masked)
    _write_labels(out / "labels-full.csv", records, [{lab: int(lab in r["labels"]) for lab in OPENMIC_LABELS}
                                                     for r in records])
    with (out / "clips.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    counts = {lab: {s: sum(1 for r in records if r["split"] == s and lab in r["labels"]) for s in SPLITS}
              for lab in OPENMIC_LABELS}
    known = Counter(v for row in masked for v in row.values())
    packages = {name: {"version": version(root), "licence": licence(root, name),
                       "note": I.LICENCE_NOTES.get(name, "")}
                for name, root in roots.items()}
    report = {"spec": spec.to_dict(), "recipe_digest": spec.digest(), "clips": len(records),
              "seconds": round(time.perf_counter() - t0, 1), "packages": packages,
              "sources": {s: sorted(ids) for s, ids in cat.splits.items()}, "positives": counts,
              "known_labels": {"positive": known.get(1, 0), "negative": known.get(0, 0), "unknown": known.get(None, 0)},
              "silent_clips": sum(1 for r in records if not r["labels"] and "negative" not in r)}
    if spec.style != "v1":
        report["negatives"] = dict(sorted(Counter(r["negative"] for r in records if "negative" in r).items()))
        if spec.negatives:
            report["speech"] = {"files": {split: [Path(f).name for f in files] for split, files in cat.speech.items()},
                                "missing": speech_missing}
    (out / "corpus.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "SOURCES.md").write_text(sources_text(report, cat), encoding="utf-8")
    return report


def sources_text(report: dict, cat: Catalogue) -> str:
    lines = ["# Sources of this corpus", "",
             f"Recipe digest {report['recipe_digest']}; {report['clips']} clips; spec: `{json.dumps(report['spec'])}`.",
             "", "## Packages (Debian), versions and licences", ""]
    for name, p in report["packages"].items():
        lines.append(f"- `{name}` {p['version']}: {p['licence']}" + (f" — {p['note']}" if p["note"] else ""))
    lines += ["", "Never used (kept for an independent evaluation): "
              + ", ".join(f"`{n}`" for n in __import__("mictag.corpus.packages", fromlist=["x"]).EVALUATION_ONLY) + ".",
              "", "## Sources by class and split", ""]
    by_label = defaultdict(list)
    for s in cat.sources:
        for lab in s.labels:
            by_label[lab].append(s)
    for lab in OPENMIC_LABELS:
        cells = []
        for split in SPLITS:
            ids = [f"{s.id}" + (f" notes {cat.splits[split][s.id][0]}-{cat.splits[split][s.id][1]}"
                                if cat.splits[split].get(s.id) else "")
                   for s in by_label[lab] if s.id in cat.splits[split]]
            cells.append(f"{split}: {', '.join(ids) or '—'}")
        lines.append(f"- **{lab}** ({sum(report['positives'][lab].values())} clips) — " + "; ".join(cells))
        if lab in I.PROVENANCE:
            lines.append(f"  - how real: {I.PROVENANCE[lab]}")
    lines += ["", "## Labels", "",
              f"`labels-full.csv` holds the truth. `labels.csv` is masked as OpenMIC is: "
              f"{report['known_labels']['unknown']:,} of "
              f"{sum(report['known_labels'].values()):,} labels unknown; known: "
              f"{report['known_labels']['positive']:,} positive, {report['known_labels']['negative']:,} negative; "
              f"every clip keeps at least one. The share of positives among the known labels "
              f"({report['spec']['known_positive_share']}) is an assumption: OpenMIC's exact proportion cannot be "
              f"read here (the data set is not on these machines).", ""]
    if report["spec"].get("style", "v1") == "produced":
        lines += _produced_text(report)
    return "\n".join(lines)


def _produced_text(report: dict) -> list[str]:
    lines = ["## Produced style", "",
             "The clips play the v1 notes as a band would: a tempo drift of up to 3% (a smooth time warp), each "
             "part 5-20 ms off the grid (normal spread), a crescendo, decrescendo or swell over the clip and each "
             "note's velocity up to 10 steps off it. The mix goes through a reverb (the v1 room, a hall with "
             "pre-delay, a bright plate, or none), a bus compressor (RMS, threshold -24..-10 dBFS of the mix at full "
             "scale, ratio 2-6) and a master limiter (0-10 dB of makeup gain, ceiling -1..-0.1 dBFS); then the clip "
             "is set to its peak level as in v1 (-12..-1 dBFS). No panning: the clips are mono.", ""]
    counts = report.get("negatives") or {}
    if not report["spec"].get("negatives"):
        return lines
    lines += ["## Negative clips", "",
              f"{sum(counts.values())} clips ({report['spec']['negatives']:.0%} asked) play no instrument and have "
              f"every label 0: " + (", ".join(f"{n} {kind}" for kind, n in counts.items()) or "none") + ". "
              "Kinds: digital silence (exact zeros); white, pink or brown noise at -50..-15 dBFS; synthetic applause "
              "(band-passed noise bursts, 20-80 claps a second, in a room); speech."]
    speech = report.get("speech", {})
    if speech.get("missing"):
        lines.append(f"No speech: {speech['missing']}.")
    else:
        lines.append("Speech: ALSA's spoken channel names (`alsa-utils`, one speaker), the files split like the "
                     "sources — " + "; ".join(f"{split}: {', '.join(files) or '—'}"
                                               for split, files in speech.get("files", {}).items()) + ".")
    return lines + [""]
