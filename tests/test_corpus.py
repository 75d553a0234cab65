"""The corpus builder, on a tiny corpus from TimGM6mb (the SoundFont CI installs): clips with their
labels, masked as OpenMIC is, split so that no source (or register) is heard in two splits, the
same files with any number of workers, and a corpus `mictag train` trains on, exports and scans."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mictag.cli import main
from mictag.labels import OPENMIC_LABELS

TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
pytestmark = pytest.mark.skipif(not TIMGM.is_file(), reason="timgm6mb-soundfont is not installed")


def _roots(tmp: Path) -> dict[str, Path]:
    """An unpacked-package layout around the installed SoundFont (no download in the tests)."""
    root = tmp / "timgm6mb-soundfont_1.3-5_all"
    (root / "usr/share/sounds/sf2").mkdir(parents=True)
    (root / "usr/share/sounds/sf2/TimGM6mb.sf2").symlink_to(TIMGM)
    return {"timgm6mb-soundfont": root}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mictag.corpus.build import CorpusSpec, build
    from mictag.corpus.synth import SynthError

    base = tmp_path_factory.mktemp("corpus")
    spec = CorpusSpec(clips=24, seconds=3.0, packages=("timgm6mb-soundfont",))
    try:
        report = build(base / "c", spec, roots=_roots(base), workers=1)
    except SynthError as exc:
        pytest.skip(str(exc))
    return base, spec, report


def _csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_clip_is_written_with_its_truth_and_masked_labels(tiny):
    import soundfile as sf

    base, spec, report = tiny
    out = base / "c"
    full, masked = _csv(out / "labels-full.csv"), _csv(out / "labels.csv")
    records = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
    assert len(full) == len(masked) == len(records) == spec.clips == report["clips"]
    for f, m, r in zip(full, masked, records):
        assert f["file"] == m["file"] == r["file"] and f["split"] == m["split"] == r["split"]
        info = sf.info(out / f["file"])
        assert info.samplerate == 16000 and info.channels == 1 and abs(info.duration - 3.0) < 1e-3
        assert (out / "midi" / (Path(f["file"]).stem + ".mid")).is_file()
        assert [lab for lab in OPENMIC_LABELS if f[lab] == "1"] == r["labels"] and r["labels"]  # nothing silent
        known = {lab: m[lab] for lab in OPENMIC_LABELS if m[lab] != ""}
        assert known and all(known[lab] == f[lab] for lab in known)  # masked labels are the truth, where known
        assert {p["source"] for p in r["parts"]} and len(r["parts"]) <= 4
    cells = len(records) * len(OPENMIC_LABELS)
    kl = report["known_labels"]
    assert kl["positive"] + kl["negative"] + kl["unknown"] == cells
    assert abs((kl["positive"] + kl["negative"]) / cells - spec.known_fraction) < 0.03
    sources = (out / "SOURCES.md").read_text()
    assert "timgm6mb-soundfont" in sources and "fluid-soundfont-gm" in sources  # named as never used
    assert report["recipe_digest"] == spec.digest()


def test_no_source_or_register_is_heard_in_two_splits(tiny):
    base, _, report = tiny
    records = [json.loads(line) for line in (base / "c" / "clips.jsonl").read_text().splitlines()]
    splits = report["sources"]
    for a in splits:
        for b in splits:
            if a < b:
                shared = set(splits[a]) & set(splits[b])
                for source in shared:  # only register-split presets, with disjoint registers
                    ranges = {s: [p["pitches"] for r in records if r["split"] == s for p in r["parts"]
                                  if p["source"] == source and p["pitches"]] for s in (a, b)}
                    for lo_a, hi_a in ranges[a]:
                        for lo_b, hi_b in ranges[b]:
                            assert hi_a < lo_b or hi_b < lo_a, (source, a, b)
    for r in records:
        for p in r["parts"]:
            assert p["source"] in splits[r["split"]]


def test_the_same_spec_gives_the_same_files_with_any_number_of_workers(tiny, tmp_path):
    from mictag.corpus.build import build

    base, spec, _ = tiny
    build(tmp_path / "again", spec, roots=_roots(tmp_path), workers=2)
    digest = lambda root: {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                           for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".flac", ".mid", ".csv")}
    assert digest(base / "c") == digest(tmp_path / "again")


def test_the_corpus_is_a_folder_data_set_that_trains_exports_and_scans(tiny, tiny_ast_dir, tmp_path):
    base, _, _ = tiny
    data = base / "c"
    run = CliRunner().invoke(main, ["train", str(data), "--ast", str(tiny_ast_dir), "--reprogrammer", "none",
                                    "--mapper", "head", "--epochs", "1", "--cache-dir", str(tmp_path / "cache"),
                                    "--out", str(tmp_path / "run")])
    assert run.exit_code == 0, run.output
    model = next((tmp_path / "run").rglob("model.pt"))
    exported = CliRunner().invoke(main, ["export", str(model), "--ast", str(tiny_ast_dir),
                                         "--fbank-out", str(tmp_path / "m.onnx")])
    assert exported.exit_code == 0, exported.output
    scanned = CliRunner().invoke(main, ["scan", str(data / "audio" / "test"), "--out", str(tmp_path / "t.csv"),
                                        "--model", str(tmp_path / "m.onnx"), "--workers", "0"])
    assert scanned.exit_code == 0, scanned.output
    rows = _csv(tmp_path / "t.csv")
    assert rows and all(r["status"] == "ok" for r in rows)


def test_evaluation_only_packages_never_reach_the_catalogue(tmp_path):
    from mictag.corpus.build import catalogue
    from mictag.corpus.packages import FetchError

    with pytest.raises(FetchError, match="independent evaluation"):
        catalogue({"fluid-soundfont-gm": tmp_path, **_roots(tmp_path)}, seed=0)


def test_recordings_join_the_catalogue_and_copies_of_a_take_share_a_split(tmp_path):
    import numpy as np
    import soundfile as sf

    from mictag.corpus.build import CorpusSpec, build, catalogue

    roots = _roots(tmp_path)
    samples = tmp_path / "lmms-common_1.2.2_all" / "usr/share/lmms/samples"
    (samples / "instruments").mkdir(parents=True)
    (samples / "drums").mkdir()
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 330 * t) * np.exp(-3 * t)).astype(np.float32)
    for name in ("steel_guitar01", "steel_guitar_heavy_distorted01", "steel_guitar02", "steel_guitar03"):
        sf.write(samples / "instruments" / f"{name}.ogg", tone, 16000)
    for name in ("kick01", "snare01", "tom01"):
        sf.write(samples / "drums" / f"{name}.ogg", tone[:4000], 16000)
    roots["lmms-common"] = samples.parents[3]
    cat = catalogue(roots, seed=0)
    recordings = [s for s in cat.sources if s.kind == "recording"]
    assert {s.labels for s in recordings} == {("guitar",), ("drums",)} and len(recordings) == 7
    split_of = {s.id: next(sp for sp in cat.splits if s.id in cat.splits[sp]) for s in recordings}
    copy, original = (f"lmms-common/lmms/samples/instruments/{n}.ogg" for n in
                      ("steel_guitar_heavy_distorted01", "steel_guitar01"))
    assert split_of[copy] == split_of[original]
    report = build(tmp_path / "c", CorpusSpec(clips=30, seconds=2.0, packages=("timgm6mb-soundfont", "lmms-common")),
                   roots=roots, workers=1)
    records = [json.loads(line) for line in (tmp_path / "c" / "clips.jsonl").read_text().splitlines()]
    played = {p["source"] for r in records for p in r["parts"]}
    assert played & {s.id for s in recordings}  # recordings are played into clips
    assert not report["silent_clips"]
