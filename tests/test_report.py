"""`mictag report`: aggregates checked against brute force, every input format the scan writes, bad
input as one line, escaping, a 100,000-row library within size and time bounds, and the page
itself in real headless Chromium (no console error, no request leaving the file, charts drawn,
a screenshot kept as an artifact)."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mictag.report import make_report
from mictag.report.command import report
from mictag.report.data import BINS, MAX_COLUMNS, QUANT, TIMELINE_CELLS, build, sample_timelines
from mictag.output.formats import CsvWriter, JsonlWriter, SegmentsWriter, write_parquet
from mictag.output.rows import FileResult, columns

LABELS = ["bass", "drums", "guitar", "piano", "voice"]
INJECTION = "</script><img src=x onerror=alert(1)>.wav"


def _cli():
    """The mictag group where `report` is registered; until then the group class it will get,
    so that errors are turned into one line exactly as `mictag report` will turn them."""
    from mictag.cli import _Group, main

    if "report" in main.commands:
        return main
    return _Group("mictag", commands={"report": report})


def _embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="mictag-data">(.*?)</script>', page, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def _results(seed: int = 0, n: int = 40) -> list[FileResult]:
    """Scan results of every status, with odd paths, as the scan produces them."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scores = rng.beta(0.6, 1.4, len(LABELS))
        r = FileResult(path=f"album {i % 4}/track {i:02d}.flac", size_bytes=1000 + i, mtime=1.7e9 + i,
                       duration_s=30.0 + i, windows=3, status="ok", scores=scores,
                       tags=[lab for lab, s in zip(LABELS, scores) if s >= 0.5])
        r.segments = [{"start": round(2.5 * w, 3), "end": round(2.5 * w + 10.24, 3),
                       "scores": [round(float(v), 6) for v in rng.random(len(LABELS))]} for w in range(3)]
        out.append(r)
    out[3].status, out[3].error = "partial", "decoding stopped at 12.00 s (Internal psf_fseek() failed)"
    out += [FileResult("broken/zero bytes.wav", 0, 1.7e9, None, 0, "error", "the file is empty"),
            FileResult("broken/no frames.wav", 44, 1.7e9, 0.0, 0, "empty", "no audio in the file"),
            FileResult(f"odd/{INJECTION}", 10, 1.7e9, None, 0, "error", '<b>bold</b> & "quoted" \u2028 message'),
            FileResult("odd/<script>alert(2)</script>.wav", 10, 1.7e9, 5.0, 1, "ok",
                       scores=np.full(len(LABELS), 0.9), tags=list(LABELS),
                       segments=[{"start": 0.0, "end": 5.0, "scores": [0.9] * len(LABELS)}]),
            FileResult("odd/comma, \"quote\"\nnewline.wav", 10, 1.7e9, 5.0, 1, "ok",
                       scores=np.full(len(LABELS), 0.1), tags=[])]
    return out


def _write_scan(folder: Path, results: list[FileResult], fmt: str = "csv",
                threshold: float | None = None) -> tuple[Path, Path]:
    """TAGS (through the scan's own writers), its sidecar and the segments file."""
    folder.mkdir(parents=True, exist_ok=True)
    tags = folder / f"tags.{fmt}"
    seg = folder / "seg.jsonl"
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
        journal = folder / "tags.parquet.jsonl-journal"
        writer = JsonlWriter(journal, LABELS, fresh=True)
    else:
        writer = (CsvWriter if fmt == "csv" else JsonlWriter)(tags, LABELS, fresh=True)
    segments = SegmentsWriter(seg, LABELS, fresh=True)
    for r in results:
        writer.write(r)
        segments.write(r)
    writer.close()
    segments.close()
    if fmt == "parquet":
        write_parquet(journal, tags, LABELS)
    sidecar = {"model_sha256": "ab" * 32, "hop_frames": 250, "aggregate": "max", "threshold": threshold,
               "labels": LABELS}
    tags.with_name(tags.name + ".mictag.json").write_text(json.dumps(sidecar))
    return tags, seg


# --- aggregation ------------------------------------------------------------------------------------------


def test_aggregates_match_brute_force(tmp_path):
    results = _results()
    tags, seg = _write_scan(tmp_path, results)
    run = CliRunner().invoke(_cli(), ["report", str(tags), "--segments", str(seg), "--out", str(tmp_path / "r.html")])
    assert run.exit_code == 0, run.output
    assert "wrote" in run.output and "45 files" in run.output
    d = _embedded((tmp_path / "r.html").read_text("utf-8"))
    assert d["labels"] == LABELS
    scored = [r for r in results if r.scores is not None]
    s = d["summary"]
    assert s["files"] == len(results) and s["scored"] == len(scored)
    assert s["statuses"] == {"ok": 41, "partial": 1, "empty": 1, "error": 2}
    assert math.isclose(s["seconds"], sum(r.duration_s or 0 for r in results), abs_tol=1e-6)
    assert s["bytes"] == sum(r.size_bytes for r in results if r.size_bytes > 0)
    for i, a in enumerate(LABELS):
        assert d["files_per_label"][i] == sum(a in r.tags for r in results)
        for j, b in enumerate(LABELS):
            assert d["cooccurrence"][i][j] == sum(a in r.tags and b in r.tags for r in results)
        tagged, untagged = d["hist"]["tagged"][i], d["hist"]["untagged"][i]
        assert sum(tagged) == d["files_per_label"][i] and sum(tagged) + sum(untagged) == len(scored)
        # Each file in its bin: the score rounded as the row stores it, binned by hand.
        expect = [0] * BINS
        for r in scored:
            expect[min(BINS - 1, int(round(float(r.scores[i]), 6) * BINS))] += 1
        assert [t + u for t, u in zip(tagged, untagged)] == expect
        # The model's own thresholds are not recorded: bracketed from the rows (scores >= 0.5 tagged here).
        on = [round(float(r.scores[i]), 6) for r in scored if a in r.tags]
        assert d["hist"]["threshold"][i] == round(min(on), 4) and d["hist"]["threshold"][i] >= 0.5
    assert d["hist"]["threshold_kind"] == "inferred"
    assert d["tags_per_file"] == [sum(len(r.tags) == k for r in scored) for k in range(len(LABELS) + 1)]
    p = d["problems"]
    folders = [p["dirs"][k] + "/" if p["dirs"][k] else "" for k in p["dir"]]
    listed = {folder + name: p["messages"][k] for folder, name, k in zip(folders, p["name"], p["msg"])}
    assert listed == {r.path: r.error for r in results if r.error}
    assert p["statuses"][p["status"][0]] == "error"  # failures first
    assert d["model"]["sha256"] == "ab" * 32 and d["model"]["hop_frames"] == 250


def test_timelines_decode_to_the_segments_written(tmp_path):
    results = _results()
    tags, seg = _write_scan(tmp_path, results)
    d = build(tags, seg)
    tl = d["timelines"]
    with_segments = [r for r in results if r.segments]
    assert tl["total"] == tl["sampled"] == len(with_segments) and tl["unmatched"] == 0
    by_path = {r.path: r for r in with_segments}
    for f in tl["files"]:
        r = by_path[f["path"]]
        q = np.frombuffer(base64.b64decode(f["q"]), np.uint8).reshape(len(LABELS), f["cols"])
        want = np.array([s["scores"] for s in r.segments]).T
        assert np.abs(q / QUANT - want).max() <= 0.5 / QUANT + 1e-9
        starts = f.get("starts") or [f["t0"] + c * f["dt"] for c in range(f["cols"])]
        assert np.allclose(starts, [s["start"] for s in r.segments]) and f["end"] == r.segments[-1]["end"]
        assert f["tags"] == r.tags and f["status"] == r.status


def test_formats_give_the_same_report(tmp_path):
    results = _results(seed=3)
    for r in results:  # results.read_rows (behind write_parquet) splits JSONL at U+2028: not this test's subject
        r.error = r.error.replace("\u2028", " ")
    built = {}
    for fmt in ("csv", "jsonl", "parquet"):
        tags, seg = _write_scan(tmp_path / fmt, results, fmt)
        d = build(tags, seg)
        for volatile in ("source", "generated", "build_seconds", "title"):
            d.pop(volatile)
        d["timelines"].pop("source")
        built[fmt] = d
    assert built["csv"] == built["jsonl"] == built["parquet"]
    # Without the suffix the format is sniffed from the first bytes.
    plain = tmp_path / "jsonl" / "tags-no-suffix"
    shutil.copy(tmp_path / "jsonl" / "tags.jsonl", plain)
    assert build(plain)["summary"] == built["jsonl"]["summary"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_chunked_reading_changes_nothing(tmp_path, monkeypatch, fmt):
    from mictag.report import data

    tags, _ = _write_scan(tmp_path, _results(), fmt)
    with tags.open("a") as f:
        f.write("album 9/torn.flac,12,1.7e9,3.0" if fmt == "csv" else '{"path": "album 9/torn.flac", "size_')
    whole = data.read_table(tags)
    monkeypatch.setattr(data, "CHUNK", 4)
    chunked = data.read_table(tags)
    assert whole.malformed == chunked.malformed == 1 and len(whole.path) == len(_results())
    for name in ("path", "status", "error"):
        assert getattr(whole, name) == getattr(chunked, name)
    for name in ("size", "duration", "windows", "scores", "tagged"):
        assert np.array_equal(getattr(whole, name), getattr(chunked, name), equal_nan=True)


def test_one_threshold_from_the_sidecar(tmp_path):
    tags, _ = _write_scan(tmp_path, _results(), threshold=0.5)
    h = build(tags)["hist"]
    assert h["threshold_kind"] == "option" and h["threshold"] == [0.5] * len(LABELS)


def test_no_sidecar_and_no_segments_still_report(tmp_path):
    tags, _ = _write_scan(tmp_path, _results())
    tags.with_name(tags.name + ".mictag.json").unlink()
    size = make_report(tags, tmp_path / "r.html").bytes
    page = (tmp_path / "r.html").read_text("utf-8")
    assert size == len(page.encode()) and "has no sidecar" in page and "none: give the scan --segments" in page


def test_torn_last_line_is_skipped_and_tags_left_untouched(tmp_path):
    tags, _ = _write_scan(tmp_path, _results())
    whole = tags.read_bytes()
    torn = whole + b"album 9/half written.flac,12,1.7e9,3.0,1,ok,,0.1,0."
    tags.write_bytes(torn)
    d = build(tags)
    assert d["summary"]["files"] == len(_results()) and d["summary"]["malformed"] == 1
    assert tags.read_bytes() == torn  # a report reads; repairing is the scan's business
    make_report(tags, tmp_path / "r.html")
    assert "1 line(s) of TAGS skipped" in (tmp_path / "r.html").read_text("utf-8")


def test_an_empty_scan_reports_zero_files(tmp_path):
    tags = tmp_path / "tags.csv"
    tags.write_text(",".join(columns(LABELS)) + "\n")
    d = build(tags)
    assert d["summary"]["files"] == 0 and d["files_per_label"] == [0] * len(LABELS)
    make_report(tags, tmp_path / "r.html")


# --- bad input ----------------------------------------------------------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    good, seg = _write_scan(tmp / "good", _results())
    (tmp / "folder").mkdir()
    (tmp / "empty.csv").write_bytes(b"")
    (tmp / "audio.csv").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\xff\xfe\x80")
    (tmp / "other.csv").write_text("name,age\nann,3\n")
    (tmp / "notrows.jsonl").write_text('["a", "list"]\n')
    (tmp / "words.csv").write_text(",".join(columns(LABELS)) + "\nx.wav,1,2,3,1,ok,,0.1,high,0.3,0.4,0.5,bass,,\n")
    (tmp / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    (tmp / "seg.txt").write_text("hello\n")
    out = ["--out", str(tmp / "r.html")]
    return {
        "missing": ([str(tmp / "nope.csv"), *out], "does not exist"),
        "folder": ([str(tmp / "folder"), *out], "is a folder"),
        "empty": ([str(tmp / "empty.csv"), *out], "is empty"),
        "binary": ([str(tmp / "audio.csv"), *out], "not UTF-8 text"),
        "other csv": ([str(tmp / "other.csv"), *out], "is not a mictag scan output: its columns should start"),
        "json not rows": ([str(tmp / "notrows.jsonl"), *out], "no line of it is a JSON row"),
        "word in scores": ([str(tmp / "words.csv"), *out], "column drums holds 'high', not a number"),
        "bad parquet": ([str(tmp / "bad.parquet"), *out], "is not a readable Parquet file"),
        "segments missing": ([str(good), "--segments", str(tmp / "nope.jsonl"), *out], "does not exist"),
        "segments wrong": ([str(good), "--segments", str(tmp / "seg.txt"), *out], "is not a mictag segments file"),
        "out unwritable": ([str(good), "--out", str(tmp / "empty.csv" / "r.html")], "cannot write"),
    }


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "binary", "other csv", "json not rows",
                                  "word in scores", "bad parquet", "segments missing", "segments wrong",
                                  "out unwritable"])
def test_bad_input_is_one_line_naming_the_file(tmp_path, case):
    if case == "bad parquet":
        pytest.importorskip("pyarrow")
    args, problem = _bad_inputs(tmp_path)[case]
    run = CliRunner().invoke(_cli(), ["report", *args])
    assert run.exit_code == 2, run.output
    lines = run.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mictag: error: "), run.output
    assert problem in lines[0], lines[0]
    named = [a for a in args if a.startswith(str(tmp_path))]
    assert any(Path(a).name in lines[0] for a in named), lines[0]
    assert not (tmp_path / "r.html").exists()


# --- escaping -----------------------------------------------------------------------------------------------


def test_paths_and_messages_cannot_inject_markup(tmp_path):
    tags, seg = _write_scan(tmp_path, _results())
    make_report(tags, tmp_path / "r.html", seg)
    page = (tmp_path / "r.html").read_text("utf-8")
    for raw in ("<img src=x", "<script>alert(2)", "</script><img", "<b>bold</b>"):
        assert raw not in page, raw
    # The page has exactly its own two scripts, and the data round-trips to the exact strings.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    d = _embedded(page)
    p = d["problems"]
    assert f"odd/{INJECTION}" in [p["dirs"][p["dir"][k]] + "/" + p["name"][k] for k in range(len(p["name"]))]
    assert '<b>bold</b> & "quoted" \u2028 message' in p["messages"]
    assert "odd/<script>alert(2)</script>.wav" in [f["path"] for f in d["timelines"]["files"]]


# --- sampling and pooling ---------------------------------------------------------------------------------------


def test_timeline_sample_is_uniform_and_seeded(tmp_path):
    seg = tmp_path / "seg.jsonl"
    n, k = 1000, 100
    seg.write_text("".join(json.dumps({"path": f"f{i:04d}", "labels": ["a"], "segments": [
        {"start": 0, "end": 1, "scores": [0.5]}]}) + "\n" for i in range(n)))
    first = [t.path for t in sample_timelines(seg, k, seed=0).timelines]
    assert first == [t.path for t in sample_timelines(seg, k, seed=0).timelines] and len(first) == k
    assert first != [t.path for t in sample_timelines(seg, k, seed=1).timelines]
    hits = np.zeros(10)
    runs = 200
    for seed in range(runs):
        for t in sample_timelines(seg, k, seed=seed).timelines:
            hits[int(t.path[1:]) // 100] += 1
    share = hits / (runs * k)
    # Uniform: each tenth of the file holds 10% of the sample (binomial sd ~0.2 points here).
    assert np.abs(share - 0.1).max() < 0.012, share


def test_long_timelines_are_max_pooled_within_bounds(tmp_path):
    seg = tmp_path / "seg.jsonl"
    windows = 5000
    scores = np.zeros((windows, 2))
    scores[4321, 1] = 0.97  # one loud window must survive pooling
    seg.write_text(json.dumps({"path": "long.flac", "labels": ["a", "b"], "segments": [
        {"start": w * 1.0, "end": w * 1.0 + 10.24, "scores": scores[w].tolist()} for w in range(windows)]}) + "\n")
    tags = tmp_path / "tags.csv"
    tags.write_text("path,size_bytes,mtime,duration_s,windows,status,error,a,b,tags\n"
                    f"long.flac,1,1,{windows + 9.24},{windows},ok,,0,0.97,b\n")
    f = build(tags, seg)["timelines"]["files"][0]
    assert f["cols"] <= MAX_COLUMNS and f["pool"] == math.ceil(windows / MAX_COLUMNS)
    q = np.frombuffer(base64.b64decode(f["q"]), np.uint8).reshape(2, f["cols"])
    assert q[1].max() == round(0.97 * QUANT) and q[1].argmax() == 4321 // f["pool"] and q[0].max() == 0
    assert f["t0"] == 0 and f["dt"] == f["pool"] and f["end"] == windows - 1 + 10.24
    # Many long files: the columns shrink until all cells fit the budget.
    from mictag.report.data import _column_cap

    cap = _column_cap([300] * 2000, [20] * 2000)
    assert cap == TIMELINE_CELLS // (2000 * 20) and 2000 * 20 * cap <= TIMELINE_CELLS


# --- a large library -------------------------------------------------------------------------------------------


def _synthetic_library(folder: Path, n: int, labels: list[str], seed: int = 0) -> tuple[Path, Path]:
    """n rows as a scan writes them (numpy-generated), 5% errors, 1% partial, plus a segments file."""
    rng = np.random.default_rng(seed)
    L = len(labels)
    presence = rng.random(L) * 0.3
    scores = np.where(rng.random((n, L)) < presence, rng.beta(5, 2, (n, L)), rng.beta(1, 8, (n, L)))
    tagged = scores >= 0.5
    status = np.where(rng.random(n) < 0.05, "error", np.where(rng.random(n) < 0.01, "partial", "ok"))
    durations = rng.gamma(4, 60, n)
    messages = ["not a decodable audio file (Invalid data found when processing input)", "the file is empty",
                "cannot read (Permission denied)"]
    tags = folder / "tags.csv"
    header = ",".join(columns(labels)) + "\n"
    lines = [header]
    score_fmt = ",".join(["%.6f"] * L)
    for i in range(n):
        path = f"artist {i % 977}/album {i % 31}/{i:06d} track.flac"
        if status[i] == "error":
            lines.append(f"{path},{1000 + i},1.7e9,,0,error,{messages[i % 3]},{',' * (L - 1)},,,\n")
            continue
        note = "decoding stopped at 10.00 s (Internal psf_fseek() failed)" if status[i] == "partial" else ""
        row_tags = ";".join(lab for lab, t in zip(labels, tagged[i]) if t)
        lines.append(f"{path},{1000 + i},1.7e9,{durations[i]:.3f},{int(durations[i] / 10.24) + 1},{status[i]},"
                     f"{note},{score_fmt % tuple(scores[i])},{row_tags},{i:064x},\n")
    tags.write_text("".join(lines))
    seg = folder / "seg.jsonl"
    label_json = json.dumps(labels)
    # A few window patterns reused: what the timelines show does not matter here, their volume does.
    patterns = [json.dumps([{"start": round(w * 10.24, 3), "end": round((w + 1) * 10.24, 3),
                             "scores": np.round(rng.random(L), 2).tolist()} for w in range(4)]) for _ in range(16)]
    with seg.open("w") as f:
        for i in np.flatnonzero(status != "error"):
            f.write(f'{{"path": "artist {i % 977}/album {i % 31}/{i:06d} track.flac", "labels": {label_json}, '
                    f'"segments": {patterns[i % 16]}}}\n')
    return tags, seg


def test_100k_rows_stay_small_and_quick(tmp_path):
    labels = [f"instrument_{k:02d}" for k in range(20)]
    t0 = time.perf_counter()
    tags, seg = _synthetic_library(tmp_path, 100_000, labels)
    made = time.perf_counter() - t0
    done = make_report(tags, tmp_path / "r.html", seg)
    page = (tmp_path / "r.html").read_text("utf-8")
    d = _embedded(page)
    print(f"\n100k rows: generated in {made:.1f} s; report {done.bytes / 1e6:.2f} MB in {done.seconds:.2f} s "
          f"(aggregation {d['build_seconds']:.2f} s); {d['timelines']['total']:,} timelines, "
          f"{len(d['problems']['name']):,} problems")
    assert done.files == 100_000
    # Not a speed measurement (a loaded CI machine varies 10x): a bound that only a quadratic
    # blow-up breaks. About 2 s on an idle 2-core machine.
    assert done.seconds < 90, done.seconds
    assert done.bytes < 4_000_000, done.bytes
    tl = d["timelines"]
    assert tl["sampled"] == 2000 and tl["total"] == sum(1 for _ in seg.open())
    assert sum(f["cols"] for f in tl["files"]) * len(labels) <= TIMELINE_CELLS
    assert f"2,000 of {tl['total']:,} files" in page
    n_err = sum(1 for line in tags.read_text().splitlines()[1:] if ",error," in line or ",partial," in line)
    assert len(d["problems"]["name"]) == n_err  # every problem row, not a sample
    assert sum(d["summary"]["statuses"].values()) == 100_000


# --- lean runtime -----------------------------------------------------------------------------------------------


def test_the_command_imports_cheaply():
    """`mictag --help` imports the command: numpy and the report's own modules wait for its use."""
    code = ("import sys\nfrom mictag.report.command import report\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy' or m.startswith('mictag.report.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['mictag.report.command']"


def test_report_imports_nothing_heavy(tmp_path):
    tags, seg = _write_scan(tmp_path, _results())
    code = ("import sys\nfrom mictag.report.command import report\nfrom mictag.report import make_report\n"
            f"make_report({str(tags)!r}, {str(tmp_path / 'r.html')!r}, {str(seg)!r})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'onnxruntime', 'pandas', 'matplotlib', 'plotly', 'openvino', 'pyarrow')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- the page in a real browser -------------------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "chrome-headless-shell")


def _chromium_binary() -> str | None:
    env = os.environ.get("MICTAG_CHROMIUM")
    if env:
        return env
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


_TRAMPOLINE = """import fcntl, os, sys
cmd, evt = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3])  # out of the way of 3 and 4
os.dup2(cmd, 3)
os.dup2(evt, 4)
for fd in {cmd, evt, int(sys.argv[1]), int(sys.argv[2])} - {3, 4}:
    os.close(fd)
os.execvp(sys.argv[3], sys.argv[3:])
"""


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    JSON messages separated by NUL on file descriptors 3 and 4), so no port, no websocket client
    and no dependency beyond the standard library. Records, per page, every exception, console
    error, log error, dialog (an injected alert) and request."""

    def __init__(self, binary: str, profile: Path, log: Path):
        cmd_r, cmd_w = os.pipe()
        evt_r, evt_w = os.pipe()
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", "--window-size=1280,2000", "about:blank"]
        self.log = log
        # The browser expects the pipe on fds 3 and 4: a small trampoline puts it there, whatever numbers
        # os.pipe gave (sh cannot redirect fds above 9; a preexec_fn is unsafe next to threads).
        with log.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", _TRAMPOLINE, str(cmd_r), str(evt_w), *args],
                                         pass_fds=(cmd_r, evt_w), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        os.close(cmd_r)
        os.close(evt_w)
        self._w, self._r, self._buf, self._id = cmd_w, evt_r, b"", 0
        self.events: list[dict] = []

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._r], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"Chromium did not answer in time; its log: {self.log_tail()}")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited; its log: {self.log_tail()}")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        event = json.loads(msg)
        if event.get("method") == "Page.javascriptDialogOpening":  # else the page blocks forever
            self._send("Page.handleJavaScriptDialog", {"accept": True}, event.get("sessionId"))
        return event

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        want = self._send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def open(self, url: str, timeout: float = 30) -> "Page":
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session=session)
        start = len(self.events)
        self.call("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session
                      for e in self.events[start:]):
            self.events.append(self._recv(deadline))
        return Page(self, target, session)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        try:
            self._send("Browser.close")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._w)
            os.close(self._r)


class Page:
    def __init__(self, browser: Chromium, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session

    def evaluate(self, expression: str, timeout: float = 30):
        result = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, self.session, timeout)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _events(self) -> list[dict]:
        return [e for e in self.browser.events if e.get("sessionId") == self.session]

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors and assertions, error log entries (failed loads), dialogs."""
        self.evaluate("0")  # a round trip: events the page sent before it have arrived
        out = []
        for e in self._events():
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                   for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Page.javascriptDialogOpening":
                out.append(f"dialog: {p.get('message')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self._events() if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, width: int = 1280, height: int = 2000) -> bytes:
        self.browser.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                                 "deviceScaleFactor": 1, "mobile": False}, self.session)
        png = base64.b64decode(self.browser.call("Page.captureScreenshot", {"format": "png"}, self.session)["data"])
        path.write_bytes(png)
        return png

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    binary = _chromium_binary()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install --no-install-recommends chromium, or set MICTAG_CHROMIUM)")
    folder = tmp_path_factory.mktemp("chromium")
    browser = Chromium(binary, folder / "profile", folder / "chromium.log")
    try:
        browser.call("Browser.getVersion", timeout=60)
        yield browser
    finally:
        browser.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """MICTAG_TEST_ARTIFACTS if set (kept after the run, e.g. by CI), else the test's tmp_path."""
    folder = Path(os.environ["MICTAG_TEST_ARTIFACTS"]) if os.environ.get("MICTAG_TEST_ARTIFACTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height of a structurally valid PNG: signature, every chunk's CRC, IHDR first, IEND
    last, and IDAT inflating to exactly one filter byte plus one scanline per row."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, body = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    stride = 1 + (width * channels * depth + 7) // 8
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * stride and max(raw[::stride]) <= 4
    return width, height


_PIXELS = """(async () => {
  const img = new Image(); img.src = "data:image/png;base64,%s"; await img.decode();
  const c = document.createElement("canvas"); c.width = img.width; c.height = img.height;
  const ctx = c.getContext("2d"); ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, c.width, c.height).data, seen = new Map();
  for (let k = 0; k < px.length; k += 4 * 7) {
    const key = (px[k] << 16) | (px[k + 1] << 8) | px[k + 2]; seen.set(key, (seen.get(key) || 0) + 1);
  }
  const counts = [...seen.values()], total = counts.reduce((a, b) => a + b, 0);
  return {colours: seen.size, background: Math.max(...counts) / total};
})()"""


def _pixels(browser: Chromium, png: bytes) -> dict:
    """Colours in the PNG as decoded by the browser's image decoder (not the page it came from)."""
    page = browser.open("about:blank")
    try:
        return page.evaluate(_PIXELS % base64.b64encode(png).decode())
    finally:
        page.close()


def test_browser_helper_catches_what_it_should(chromium, tmp_path):
    """The checks below would pass vacuously if the helper saw nothing: broken pages prove it does."""
    pages = {
        "throws.html": "<!doctype html><p>x</p><script>undefinedFunction();</script>",
        "console.html": "<!doctype html><script>console.error('drawn badly');</script>",
        "fetches.html": '<!doctype html><script src="http://127.0.0.1:9/lib.js"></script>',
        "alerts.html": "<!doctype html><img src=x onerror=alert(1)>",
        "blank.html": "<!doctype html><body style='background:#fff'></body>",
    }
    for name, text in pages.items():
        (tmp_path / name).write_text(text)
    seen = {}
    for name in pages:
        page = chromium.open((tmp_path / name).as_uri())
        seen[name] = (page.problems(), page.requests())
        if name == "blank.html":
            png = page.screenshot(tmp_path / "blank.png")
            assert _png_size(png) == (1280, 2000)
            blank = _pixels(chromium, png)
            assert blank["colours"] == 1 and blank["background"] == 1.0, blank
        page.close()
    assert any("undefinedFunction" in p for p in seen["throws.html"][0]), seen["throws.html"]
    assert any("drawn badly" in p for p in seen["console.html"][0]), seen["console.html"]
    assert any(u.startswith("http://127.0.0.1:9/") for u in seen["fetches.html"][1]), seen["fetches.html"]
    assert any(p.startswith("dialog:") for p in seen["alerts.html"][0]), seen["alerts.html"]
    assert seen["blank.html"] == ([], [(tmp_path / "blank.html").as_uri()])
    # A real report whose data lacks a field: the chart's guard must say so, not swallow it.
    tags, seg = _write_scan(tmp_path / "scan", _results())
    make_report(tags, tmp_path / "r.html", seg)
    broken = tmp_path / "broken.html"
    broken.write_text((tmp_path / "r.html").read_text("utf-8").replace('"cooccurrence":', '"renamed":'), "utf-8")
    page = chromium.open(broken.as_uri())
    found = page.problems()
    page.close()
    assert any(p.startswith("console.error: mictag report: instruments: TypeError") for p in found), found


def test_report_renders_in_chromium(chromium, tmp_path, artifacts):
    results = _results()
    tags, seg = _write_scan(tmp_path, results)
    out = tmp_path / "report.html"
    make_report(tags, out, seg)
    page = chromium.open(out.as_uri())
    try:
        assert page.evaluate("document.documentElement.getAttribute('data-ready')") == "1"
        counts = page.evaluate("""({
          bars: document.querySelectorAll('#bars rect').length,
          cells: document.querySelectorAll('#cooc rect.cell').length,
          hists: document.querySelectorAll('#hists svg').length,
          histBars: document.querySelectorAll('#hists rect').length,
          problems: document.querySelectorAll('#ptable tbody tr').length,
          options: document.querySelectorAll('#tselect option').length,
          tiles: document.querySelectorAll('#summary .tile').length})""")
        n_problems = sum(1 for r in results if r.error)
        assert counts == {**counts, "bars": len(LABELS), "cells": len(LABELS) ** 2, "hists": len(LABELS),
                          "problems": n_problems, "options": sum(1 for r in results if r.segments), "tiles": 7}
        assert counts["histBars"] >= len(LABELS)
        # The injected names arrive as text, never as markup.
        cells = page.evaluate("[...document.querySelectorAll('#ptable td')].map(td => td.textContent)")
        assert f"odd/{INJECTION}" in cells and '<b>bold</b> & "quoted" \u2028 message' in cells
        assert page.evaluate("document.querySelectorAll('#ptable img, #ptable b, #tinfo img').length") == 0
        # The problem filter narrows the table; the timeline list finds a file and draws it.
        assert page.evaluate("""(() => { const f = document.getElementById('pfilter'); f.value = 'zero bytes';
          f.dispatchEvent(new Event('input')); return new Promise(r => setTimeout(() =>
          r(document.querySelectorAll('#ptable tbody tr').length), 50)); })()""") == 1
        drawn = page.evaluate("""(() => { const f = document.getElementById('tfilter'); f.value = 'track 07';
          f.dispatchEvent(new Event('input'));
          const c = document.getElementById('tcanvas');
          const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let dark = 0; for (let k = 0; k < px.length; k += 4) if (px[k] < 200) dark++;
          return {options: document.querySelectorAll('#tselect option').length,
                  info: document.getElementById('tinfo').textContent,
                  rows: document.querySelectorAll('#tlabels div').length, dark: dark, w: c.width, h: c.height}; })()""")
        assert drawn["options"] == 1 and drawn["rows"] == len(LABELS)
        assert drawn["info"].startswith("album 3/track 07.flac")
        assert drawn["dark"] > 0.05 * drawn["w"] * drawn["h"], drawn  # scores drawn, not an empty canvas
        assert page.problems() == []
        assert all(u.startswith("file:") for u in page.requests()), page.requests()
        png = page.screenshot(artifacts / "report.png")
    finally:
        page.close()
    assert _png_size(png) == (1280, 2000)
    pixels = _pixels(chromium, png)
    assert pixels["colours"] >= 50 and pixels["background"] < 0.95, pixels


def test_a_large_report_renders_in_chromium(chromium, tmp_path):
    """Many files, every bin filled (float edge cases in the charts), timelines pooled to the budget."""
    labels = [f"instrument_{k:02d}" for k in range(20)]
    tags, seg = _synthetic_library(tmp_path, 20_000, labels, seed=1)
    make_report(tags, tmp_path / "r.html", seg)
    t0 = time.perf_counter()
    page = chromium.open((tmp_path / "r.html").as_uri())
    try:
        assert page.evaluate("document.documentElement.getAttribute('data-ready')") == "1"
        opened = time.perf_counter() - t0
        assert opened < 10, opened
        assert page.evaluate("document.querySelectorAll('#ptable tbody tr').length") == 500  # the first page of them
        assert page.evaluate("document.getElementById('pcount').textContent").startswith("showing the first 500 of ")
        n_problems = page.evaluate("""(() => { document.getElementById('pall').click();
          return document.querySelectorAll('#ptable tbody tr').length; })()""")
        assert n_problems == len(build(tags)["problems"]["name"]) > 500
        assert page.problems() == []
        assert all(u.startswith("file:") for u in page.requests())
    finally:
        page.close()
