"""A moved, renamed or duplicate file is not scored again: rows are keyed by the bytes' sha256 too
(mictag.runtime.scan.content), on real files through the real scan."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import soundfile as sf


sys.path.insert(0, str(Path(__file__).parent))
from library import read_table, signal as tone  # noqa: E402


@pytest.fixture(scope="module")
def model(tiny_tagger) -> Path:
    return tiny_tagger


def _library(root: Path) -> Path:
    (root / "inbox").mkdir(parents=True)
    for i in range(6):
        sf.write(root / "inbox" / f"take {i}.flac", tone(2.0 + 0.3 * i, 16000, 1, seed=i)[:, 0], 16000)
    return root


def _scan(lib, out, model, workers=1, **kw):
    from mictag.runtime.scan.pipeline import ScanOptions
    from mictag.runtime.scan.run import ScanRequest, run_scan

    say = kw.pop("on_message", None)
    return run_scan(ScanRequest(lib, out, model, **{"backend": "ort-cpu", **kw}, options=ScanOptions(workers=workers)),
                    on_message=say)


def _scores(row: dict) -> list[str]:
    return [v for k, v in row.items() if k not in ("path", "size_bytes", "mtime", "reused_from")]


@pytest.mark.parametrize("workers", [0, 2])
def test_moved_renamed_and_duplicated_files_get_their_rows_without_decoding(model, tmp_path, workers):
    lib = _library(tmp_path / "lib")
    out = tmp_path / "tags.csv"
    _scan(lib, out, model, workers, segments=tmp_path / "seg.jsonl")
    before = read_table(out)
    first_timelines = _timelines(tmp_path / "seg.jsonl")
    for rel, row in before.items():
        assert row["content_sha256"] == hashlib.sha256((lib / rel).read_bytes()).hexdigest()
        assert row["reused_from"] == ""
    # beets moves files on import; a compilation duplicates a track
    (lib / "Artist" / "Album").mkdir(parents=True)
    os.rename(lib / "inbox" / "take 0.flac", lib / "Artist" / "Album" / "01 Take Zero.flac")
    os.rename(lib / "inbox" / "take 1.flac", lib / "inbox" / "renamed.flac")
    shutil.copy2(lib / "inbox" / "take 2.flac", lib / "Artist" / "Album" / "02 Take Two (compilation).flac")
    sf.write(lib / "inbox" / "new.flac", tone(2.5, 16000, 1, seed=99)[:, 0], 16000)
    second = _scan(lib, out, model, workers, segments=tmp_path / "seg.jsonl")
    after = read_table(out)
    assert set(after) == {"Artist/Album/01 Take Zero.flac", "inbox/renamed.flac",
                          "Artist/Album/02 Take Two (compilation).flac", "inbox/new.flac",
                          *(f"inbox/take {i}.flac" for i in range(2, 6))}
    assert second.reused == 3 and second.skipped == 4
    assert second.windows == int(after["inbox/new.flac"]["windows"])  # only the new file was scored
    for new, old in (("Artist/Album/01 Take Zero.flac", "inbox/take 0.flac"), ("inbox/renamed.flac", "inbox/take 1.flac"),
                     ("Artist/Album/02 Take Two (compilation).flac", "inbox/take 2.flac")):
        assert after[new]["reused_from"] == old
        assert _scores(after[new]) == _scores(before[old])  # the same scores, tags and digest
    timelines = _timelines(tmp_path / "seg.jsonl")
    assert set(timelines) == set(after)  # reused files have their timelines too
    assert timelines["inbox/renamed.flac"]["segments"] == first_timelines["inbox/take 1.flac"]["segments"]
    from mictag.runtime.scan.run import summary_line

    assert "3 reused" in summary_line(second)


def _timelines(path: Path) -> dict[str, dict]:
    return {json.loads(l)["path"]: json.loads(l) for l in path.read_text().splitlines()}


def test_duplicates_within_one_scan_are_scored_once_and_same_size_files_are_not_confused(model, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    x = tone(3.0, 16000, 1, seed=1)[:, 0]
    sf.write(lib / "a.wav", x, 16000, subtype="PCM_16")
    shutil.copy2(lib / "a.wav", lib / "a copy.wav")
    sf.write(lib / "b.wav", x[::-1].copy(), 16000, subtype="PCM_16")  # same size, other bytes
    summary = _scan(lib, tmp_path / "t.csv", model, 1)
    rows = read_table(tmp_path / "t.csv")
    assert summary.reused == 1 and (lib / "b.wav").stat().st_size == (lib / "a.wav").stat().st_size
    copy = "a copy.wav" if rows["a copy.wav"]["reused_from"] else "a.wav"
    other = "a.wav" if copy == "a copy.wav" else "a copy.wav"
    assert rows[copy]["reused_from"] == other and _scores(rows[copy]) == _scores(rows[other])
    assert rows["b.wav"]["reused_from"] == "" and rows["b.wav"]["content_sha256"] != rows["a.wav"]["content_sha256"]
    assert summary.windows == 2 * int(rows["b.wav"]["windows"])  # a.wav's bytes once, b.wav once


def test_a_table_written_before_content_keys_is_resumed_and_gains_the_columns(model, tmp_path):
    from mictag.output.rows import columns

    lib = _library(tmp_path / "lib")
    out = tmp_path / "t.csv"
    _scan(lib, out, model, 1)
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    old_columns = [c for c in rows[0] if c not in ("content_sha256", "reused_from")]
    with out.open("w", newline="") as f:  # as an earlier mictag wrote it
        w = csv.DictWriter(f, fieldnames=old_columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows[:4])
    summary = _scan(lib, out, model, 1)
    assert summary.skipped == 4 and summary.files == 6
    with out.open(newline="") as f:
        assert next(csv.reader(f)) == columns(old_columns[7:-1])
    assert len(read_table(out)) == 6


def test_a_file_changed_after_listing_gets_no_digest(tmp_path):
    from mictag.runtime.scan.content import file_sha256

    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    st = f.stat()
    assert file_sha256(str(f), st.st_size, st.st_mtime) == hashlib.sha256(b"abc").hexdigest()
    f.write_bytes(b"abcd")
    assert file_sha256(str(f), st.st_size, st.st_mtime) is None
    assert file_sha256(str(tmp_path / "gone"), 3, 0.0) is None


def test_both_output_layouts_are_read_and_nothing_else():
    from mictag.output.rows import columns, labels_of

    labels = ["drums", "guitar"]
    assert labels_of(columns(labels)) == labels
    assert labels_of(columns(labels)[:-2]) == labels  # written before rows had content keys
    assert labels_of(["path", "x"]) is None and labels_of(columns(labels)[:-1]) is None
