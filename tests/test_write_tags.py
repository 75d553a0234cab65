"""`mictag write-tags` on real files of every format it writes (FLAC, Ogg Vorbis, Opus, MP3, M4A,
WAV, AIFF): the instruments read back with mutagen, decoded audio identical, other tags kept, a
second run a no-op, --dry-run inert, files changed since the scan left alone, rows leading out of
the library refused, the scan's rows kept true so a rescan skips the files (also across a kill -9),
and the command's summary, exit codes and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import mutagen
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from mutagen.id3 import ID3, TIT2, TPE1, TXXX
from mutagen.mp4 import MP4, MP4FreeForm

from library import signal as tone
from library import write_m4a
from mictag.cli import main
from mictag.filetags.command import write_tags as write_tags_command
from mictag.filetags.write import summary_line, write_tags
from mictag.labels import OPENMIC_LABELS
from mictag.output.lock import OutputLock
from mictag.output.formats import CsvWriter, JsonlWriter, read_rows, write_parquet
from mictag.output.rows import FileResult, same_file

LABELS = list(OPENMIC_LABELS)
MODEL_SHA = "ab" * 32
FREEFORM = "----:com.apple.iTunes:"

# The files the scan tagged and mictag writes: relative path -> the instruments in its row.
TAGGED = {
    "flac/song.flac": ["guitar", "piano"],
    "ogg/Ünïcode — vorbis.ogg": ["voice"],
    "opus/take.opus": ["drums", "bass"],
    "mp3/track.mp3": ["violin", "cello"],
    "m4a/aac.m4a": ["trumpet"],
    "wav/pcm16.wav": ["organ", "synthesizer"],
    "aiff/pcm24.aiff": [],  # nothing above threshold: the stale value goes and nothing replaces it
}
CHANGED = "flac/edited after the scan.flac"
CORRUPT = "mp3/not really.mp3"  # text posing as an MP3, whose row says ok
UNSUPPORTED = "au/sun.au"  # decodable, but no format mictag writes tags into
NOT_TAGGED = "wav/failed in the scan.wav"  # status error
LINK = "link to outside.flac"  # a symlink in the library to a file outside it


# -- a library and the scan output that describes it --------------------------------------------
def _write_audio(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = tone(1.0, 48000, 2, seed)
    suffix = path.suffix
    if suffix == ".m4a":
        write_m4a(path, x, 48000)
    elif suffix == ".wav":  # with a RIFF INFO title beside the ID3 chunk mictag writes
        with sf.SoundFile(path, "w", 48000, 2, subtype="PCM_16") as f:
            f.title = "Song"
            f.write(x)
    else:
        kind = {".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS"), ".opus": ("OGG", "OPUS"),
                ".mp3": ("MP3", "MPEG_LAYER_III"), ".aiff": ("AIFF", "PCM_24"), ".au": ("AU", "PCM_16")}[suffix]
        sf.write(path, x, 48000, format=kind[0], subtype=kind[1])


def _preexisting_tags(path: Path) -> None:
    """A title, an artist and a stale INSTRUMENTS value, in the file's own tag system."""
    f = mutagen.File(path)
    if f.tags is None:
        f.add_tags()
    if isinstance(f.tags, ID3):  # MP3, and WAV / AIFF through their ID3 chunk
        f.tags.add(TIT2(encoding=3, text=["Song"]))
        f.tags.add(TPE1(encoding=3, text=["Band"]))
        f.tags.add(TXXX(encoding=3, desc="INSTRUMENTS", text=["kazoo"]))
    elif isinstance(f, MP4):
        f.tags["\xa9nam"], f.tags["\xa9ART"] = ["Song"], ["Band"]
        f.tags[FREEFORM + "INSTRUMENTS"] = [MP4FreeForm(b"kazoo")]
    else:  # Vorbis comments
        f.tags["TITLE"], f.tags["ARTIST"], f.tags["INSTRUMENTS"] = ["Song"], ["Band"], ["kazoo"]
    f.save()


def _row(path: Path, rel: str, tags: list[str], status: str = "ok") -> FileResult:
    st = os.stat(path)
    scores = np.array([0.912 if label in tags else round(0.01 * i, 6) for i, label in enumerate(LABELS)])
    return FileResult(rel, st.st_size, st.st_mtime, 1.0, 1, status, "" if status == "ok" else "decode failed",
                      scores, list(tags))


def write_scan(out: Path, fmt: str, results: list[FileResult], sidecar: bool = True) -> None:
    """The output as `mictag scan` writes it, through its own writers, with its sidecar."""
    if fmt == "parquet":
        journal = out.with_name(out.name + ".jsonl-journal")
        writer = JsonlWriter(journal, LABELS, True)
    else:
        writer = (CsvWriter if fmt == "csv" else JsonlWriter)(out, LABELS, True)
    for result in results:
        writer.write(result)
    writer.close()
    if fmt == "parquet":
        write_parquet(journal, out, LABELS)
    if sidecar:
        state = {"model_sha256": MODEL_SHA, "hop_frames": 1024, "aggregate": "max", "threshold": None,
                 "labels": LABELS}
        out.with_name(out.name + ".mictag.json").write_text(json.dumps(state), "utf-8")


def make_library(root: Path, fmt: str = "csv", escapes: bool = True) -> tuple[Path, Path, Path]:
    """(library, scan output, the file outside the library). With ``escapes``, the output also has
    a file changed since its row, a corrupt one, an unsupported one, a failed one and three rows
    leading outside the library."""
    lib, outside = root / "lib", root / "outside.flac"
    results = []
    for seed, (rel, tags) in enumerate(TAGGED.items()):
        _write_audio(lib / rel, seed)
        _preexisting_tags(lib / rel)
        results.append(_row(lib / rel, rel, tags))
    if escapes:
        for seed, rel in enumerate((CHANGED, UNSUPPORTED, NOT_TAGGED), start=20):
            _write_audio(lib / rel, seed)
        (lib / CORRUPT).write_text("This is a shopping list, not an MP3.\n" * 20, encoding="utf-8")
        _write_audio(outside, 30)
        os.symlink(outside, lib / LINK)
        results += [_row(lib / CHANGED, CHANGED, ["accordion"]), _row(lib / CORRUPT, CORRUPT, ["banjo"]),
                    _row(lib / UNSUPPORTED, UNSUPPORTED, ["ukulele"]),
                    _row(lib / NOT_TAGGED, NOT_TAGGED, [], status="error"),
                    _row(outside, "../outside.flac", ["guitar"]), _row(outside, str(outside), ["guitar"]),
                    _row(lib / LINK, LINK, ["guitar"])]
    out = root / f"tags.{fmt}"
    write_scan(out, fmt, results)
    if escapes:  # edited after the scan: its row no longer describes it
        f = mutagen.File(lib / CHANGED)
        f.tags["TITLE"] = ["Edited"]
        f.save()
        st = os.stat(lib / CHANGED)
        os.utime(lib / CHANGED, (st.st_atime, st.st_mtime + 5))
    return lib, out, outside


# -- reading back, independently of mictag.filetags -------------------------------------------
def field(path: Path, name: str) -> list[str]:
    f = mutagen.File(path)
    if isinstance(f.tags, ID3):
        return [str(t) for frame in f.tags.getall(f"TXXX:{name}") for t in frame.text]
    if isinstance(f, MP4):
        return [bytes(v).decode("utf-8") for v in f.tags.get(FREEFORM + name, [])]
    return list(f.tags.get(name, []))


def title_artist(path: Path) -> tuple[str, str]:
    f = mutagen.File(path)
    if isinstance(f.tags, ID3):
        return str(f.tags["TIT2"]), str(f.tags["TPE1"])
    if isinstance(f, MP4):
        return f.tags["\xa9nam"][0], f.tags["\xa9ART"][0]
    return f.tags["TITLE"][0], f.tags["ARTIST"][0]


def decoded(path: Path) -> np.ndarray:
    """The samples: PyAV's FFmpeg for M4A, libsndfile for the rest."""
    if path.suffix == ".m4a":
        import av

        with av.open(str(path)) as container:
            return np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    return sf.read(path, dtype="float32", always_2d=True)[0]


def fingerprints(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime (ns) of every regular file under ``root`` (symlinks not followed), but the
    output's lock, which every holder rewrites with its pid."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".mictag.lock"):
            out[path.relative_to(root).as_posix()] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                      path.stat().st_mtime_ns)
    return out


def rows_of(out: Path) -> dict[str, dict]:
    fmt = out.suffix.lstrip(".")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    else:
        rows = read_rows(out, fmt)
    return {row["path"]: row for row in rows}


def run(out: Path, lib: Path, **kw):
    lines: list[str] = []
    summary = write_tags(out, lib, on_message=lines.append, **kw)
    return summary, lines


# -- the tests --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_every_format_gets_its_instruments_keeps_its_audio_and_other_tags(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    lib, out, outside = make_library(tmp_path, fmt)
    audio = {rel: decoded(lib / rel) for rel in TAGGED}
    rows_before = rows_of(out)
    untouched = {rel: v for rel, v in fingerprints(tmp_path).items()
                 if rel.startswith("lib/") and rel[4:] not in TAGGED or rel == "outside.flac"}

    summary, lines = run(out, lib, scores=True)

    assert summary.counts == {"written": len(TAGGED), "up to date": 0, "changed since the scan": 1, "refused": 3,
                              "skipped": 2, "failed": 1}
    assert summary.skipped_by == {"format": 1, "scan status": 1}
    assert summary.exit_code == 1
    for rel, instruments in TAGGED.items():
        path = lib / rel
        assert field(path, "INSTRUMENTS") == instruments, rel  # one value each; the stale "kazoo" gone
        assert title_artist(path) == ("Song", "Band"), rel
        assert np.array_equal(decoded(path), audio[rel]), f"{rel}: the audio changed"
        for label in LABELS:
            assert field(path, f"MICTAG_{label.upper()}") == ["0.912" if label in instruments
                                                            else f"{0.01 * LABELS.index(label):.3f}"]
        assert field(path, "MICTAG_MODEL") == [f"sha256:{MODEL_SHA}"]
    assert sf.SoundFile(lib / "wav/pcm16.wav").title == "Song"  # the RIFF INFO chunk survives the ID3 chunk
    assert ID3(lib / "mp3/track.mp3").version == (2, 4, 0)
    # every file not written is byte for byte and mtime as it was: the outside one above all
    now = fingerprints(tmp_path)
    assert {rel: now[rel] for rel in untouched} == untouched

    # the rows of the written files now describe them, so a rescan skips them; the others are as they were
    rows = rows_of(out)
    for rel in TAGGED:
        st = os.stat(lib / rel)
        # writing did change the file (exactly: same_file allows rel_tol 1e-9 of an mtime, ~1.8 s)
        assert (int(rows_before[rel]["size_bytes"]), float(rows_before[rel]["mtime"])) != (st.st_size, st.st_mtime)
        assert same_file(rows[rel], st.st_size, st.st_mtime), rel
        assert {k: v for k, v in rows[rel].items() if k not in ("size_bytes", "mtime")} == \
               {k: v for k, v in rows_before[rel].items() if k not in ("size_bytes", "mtime")}
    assert {rel: rows[rel] for rel in rows if rel not in TAGGED} == \
           {rel: rows_before[rel] for rel in rows_before if rel not in TAGGED}
    if fmt == "parquet":  # what a Parquet scan resumes from
        journal = {r["path"]: r for r in read_rows(out.with_name(out.name + ".jsonl-journal"), "jsonl")}
        for rel in TAGGED:
            st = os.stat(lib / rel)
            assert same_file(journal[rel], st.st_size, st.st_mtime)
    assert not out.with_name(out.name + ".write-tags-journal").exists()

    text = "\n".join(lines)
    assert f"changed since the scan, not touched: {CHANGED}: " in text
    assert re.search(rf"failed {re.escape(CORRUPT)}: cannot read its tags: .+", text)
    assert f"skipped {UNSUPPORTED}: its format (.au) is not one mictag writes tags into" in text
    assert f"skipped {NOT_TAGGED}: the scan did not tag it (status error)" in text
    assert "refused '../outside.flac': its '..' leads outside the library" in text
    assert f"refused {str(outside)!r}: it is an absolute path" in text
    assert f"refused {LINK!r}: it leads through a symlink to {outside.resolve()}, outside the library" in text
    assert "wrote flac/song.flac: INSTRUMENTS = guitar; piano (was kazoo), 21 MICTAG_ fields set" in text
    assert "wrote aiff/pcm24.aiff: INSTRUMENTS removed (was kazoo), 21 MICTAG_ fields set" in text


def test_a_second_run_writes_nothing_and_changes_no_byte(tmp_path):
    lib, out, _ = make_library(tmp_path)
    run(out, lib, scores=True)
    before = fingerprints(tmp_path)

    summary, lines = run(out, lib, scores=True)

    assert summary.counts["written"] == 0 and summary.counts["up to date"] == len(TAGGED)
    assert summary.rows_updated == 0
    assert fingerprints(tmp_path) == before  # the audio files and the scan output alike
    assert not any(line.startswith("wrote") for line in lines)
    assert summary_line(summary).startswith(f"written 0, up to date {len(TAGGED)}, changed since the scan 1, "
                                            f"refused 3, skipped 2 (1 format, 1 scan status), failed 1")


def test_dry_run_prints_the_changes_and_touches_nothing(tmp_path):
    lib, out, _ = make_library(tmp_path)
    before = fingerprints(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())

    summary, lines = run(out, lib, dry_run=True)

    assert fingerprints(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no lock, no journal
    assert sorted(line.split(":")[0] for line in lines if line.startswith("would write")) == \
           sorted(f"would write {rel}" for rel in TAGGED)
    assert "would write mp3/track.mp3: INSTRUMENTS = violin; cello (was kazoo)" in lines
    assert summary_line(summary).startswith(f"dry run: would write {len(TAGGED)}, up to date 0")
    assert summary_line(summary).endswith("; no file was touched")
    # and it was not just silent: the real run then does what it said
    real, _ = run(out, lib)
    assert real.counts["written"] == len(TAGGED)


def test_without_scores_the_field_is_replaced_and_mictag_fields_removed(tmp_path):
    lib, out, _ = make_library(tmp_path, escapes=False)
    run(out, lib, scores=True)
    summary, _ = run(out, lib, field="INSTRUMENTS_V2")
    assert summary.counts["written"] == len(TAGGED)
    for rel, instruments in TAGGED.items():
        path = lib / rel
        assert field(path, "INSTRUMENTS_V2") == instruments
        assert field(path, "INSTRUMENTS") == instruments  # another field: not mictag's to remove
        assert field(path, "MICTAG_GUITAR") == [] and field(path, "MICTAG_MODEL") == []
        assert title_artist(path) == ("Song", "Band")


def test_no_sidecar_no_model_field_and_it_says_so(tmp_path):
    lib, out, _ = make_library(tmp_path, escapes=False)
    out.with_name(out.name + ".mictag.json").unlink()
    summary, lines = run(out, lib, scores=True)
    assert summary.counts["written"] == len(TAGGED)
    assert any("MICTAG_MODEL is not written" in line for line in lines)
    assert field(lib / "flac/song.flac", "MICTAG_MODEL") == []
    assert field(lib / "flac/song.flac", "MICTAG_GUITAR") == ["0.912"]


def test_a_stop_request_finishes_the_file_and_records_it(tmp_path):
    lib, out, _ = make_library(tmp_path, escapes=False)
    before = fingerprints(tmp_path)
    wrote: list[str] = []

    summary = write_tags(out, lib, on_message=wrote.append, should_stop=lambda: len(wrote) >= 2)

    assert summary.interrupted and summary.counts["written"] == 2
    assert summary_line(summary).startswith("interrupted: written 2,")
    rows, now = rows_of(out), fingerprints(tmp_path)
    first_two = list(TAGGED)[:2]
    for rel in TAGGED:
        st = os.stat(lib / rel)
        if rel in first_two:
            assert same_file(rows[rel], st.st_size, st.st_mtime)
        else:
            assert now[f"lib/{rel}"] == before[f"lib/{rel}"]
    assert not out.with_name(out.name + ".write-tags-journal").exists()


KILL_AT_FIRST_WRITE = """
import os, signal, sys
from mictag.filetags.write import write_tags

def say(line):
    if line.startswith("wrote "):  # the first file is saved and journaled: die without cleaning up
        os.kill(os.getpid(), signal.SIGKILL)

write_tags(sys.argv[1], sys.argv[2], on_message=say)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs kill -9")
@pytest.mark.parametrize("killed", ["after its journal lines", "between its save and its second journal line"])
def test_kill_9_then_rerun_loses_no_row(tmp_path, killed):
    lib, out, _ = make_library(tmp_path, escapes=False)
    output_before = out.read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_WRITE, str(out), str(lib)], capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    first = next(iter(TAGGED))
    assert field(lib / first, "INSTRUMENTS") == TAGGED[first]  # written...
    assert out.read_bytes() == output_before  # ...but the output not yet told
    journal = out.with_name(out.name + ".write-tags-journal")
    lines = journal.read_text("utf-8").splitlines()
    assert len(lines) == 2 and "after" in json.loads(lines[1])
    if killed.startswith("between"):
        journal.write_text(lines[0] + "\n", "utf-8")

    summary, _ = run(out, lib)

    assert summary.counts["written"] == len(TAGGED) - 1 and summary.counts["up to date"] == 1
    assert summary.counts["changed since the scan"] == 0
    rows = rows_of(out)
    for rel in TAGGED:
        st = os.stat(lib / rel)
        assert same_file(rows[rel], st.st_size, st.st_mtime), rel
    assert not journal.exists()


# -- the command ------------------------------------------------------------------------------
@pytest.fixture
def mictag():
    """`mictag ...` through the real group (which turns MictagError into one line and exit 2)."""
    added = "write-tags" not in main.commands
    if added:
        main.add_command(write_tags_command)
    yield lambda *args: CliRunner().invoke(main, [str(a) for a in args])
    if added:
        del main.commands["write-tags"]


def test_cli_summary_and_exit_codes(tmp_path, mictag):
    lib, out, _ = make_library(tmp_path / "clean", escapes=False)
    result = mictag("write-tags", out, "--library", lib)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith(
        f"written {len(TAGGED)}, up to date 0, changed since the scan 0, refused 0, skipped 0, failed 0; "
        f"{len(TAGGED)} rows of {out} now hold")
    again = mictag("write-tags", out, "--library", lib)
    assert again.exit_code == 0 and again.stdout.startswith(f"written 0, up to date {len(TAGGED)}")

    lib, out, _ = make_library(tmp_path / "nasty")
    result = mictag("write-tags", out, "--library", lib, "--scores")
    assert result.exit_code == 1, result.output  # refused and failed files
    assert "refused 3, skipped 2 (1 format, 1 scan status), failed 1" in result.stdout.splitlines()[-1]
    assert "Traceback" not in result.output


def _one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mictag: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_cli_mistakes_are_one_line_and_exit_2(tmp_path, mictag):
    lib, out, _ = make_library(tmp_path, escapes=False)
    before = fingerprints(lib), out.read_bytes()
    _one_error_line(mictag("write-tags", tmp_path / "nope.csv", "--library", lib), "nope.csv", "does not exist")
    _one_error_line(mictag("write-tags", out, "--library", tmp_path / "no such dir"), "no such dir", "does not exist")
    _one_error_line(mictag("write-tags", out, "--library", out), str(out), "is not a folder")
    _one_error_line(mictag("write-tags", lib, "--library", lib), str(lib), "is not a file")
    junk = tmp_path / "notes.csv"
    junk.write_text("name,comment\nx,y\n", "utf-8")
    _one_error_line(mictag("write-tags", junk, "--library", lib), "notes.csv", "is not an output of `mictag scan`",
                    "path")
    binary = tmp_path / "song.csv"
    binary.write_bytes((lib / "mp3/track.mp3").read_bytes())
    _one_error_line(mictag("write-tags", binary, "--library", lib), "song.csv", "not text")
    other = tmp_path / "another library"
    other.mkdir()
    _one_error_line(mictag("write-tags", out, "--library", other), "none of the 7 files", "another library")
    _one_error_line(mictag("write-tags", out, "--library", lib, "--field", "BAD=NAME"), "--field", "BAD=NAME")
    with OutputLock(out):  # a scan writing it
        _one_error_line(mictag("write-tags", out, "--library", lib), str(out), "is being written by", "--wait")
    assert (fingerprints(lib), out.read_bytes()) == before  # none of them touched a file


def test_runtime_never_imports_torch():
    code = ("import sys; import mictag.filetags.command, mictag.filetags.write, mictag.filetags.formats; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- end to end: a real scan, write-tags, a rescan that skips every file ----------------------------
def test_a_rescan_after_write_tags_skips_every_file(tmp_path, tiny_ast_dir, mictag):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    lib = tmp_path / "lib"
    for seed, rel in enumerate(TAGGED):
        _write_audio(lib / rel, seed)
    audio = {rel: decoded(lib / rel) for rel in TAGGED}
    model = tmp_path / "tagger-fbank.onnx"
    assert mictag("export", "--ast", tiny_ast_dir, "--fbank-out", model).exit_code == 0
    out = tmp_path / "tags.csv"
    scan = ["scan", lib, "--out", out, "--model", model, "--workers", 1, "--precision", "fp32", "--threshold", 0]
    first = mictag(*scan)
    assert first.exit_code == 0, first.output

    result = mictag("write-tags", out, "--library", lib, "--scores")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith(f"written {len(TAGGED)},")
    for rel in TAGGED:
        assert field(lib / rel, "INSTRUMENTS") == LABELS  # threshold 0: every label
        assert np.array_equal(decoded(lib / rel), audio[rel])

    rescan = mictag(*scan)
    assert rescan.exit_code == 0, rescan.output
    m = re.search(r"^(\d+) files \(.*; (\d+) already done\)", rescan.stderr, re.M)
    assert m and int(m[1]) == int(m[2]) == len(TAGGED), rescan.stderr
