"""`mictag scan` end to end on a library of real audio files: every file exactly once with the
right status, scores equal to the Tagger API and to a PyTorch reference, resume after kill -9 and
torn lines, resume rules, segments, filters, thresholds and the user's mistakes."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from library import DANGLING, DURATIONS, LONG, M4A, SILENT, TRUNCATED, make_library
from library import signal as tone_signal
from mictag import frontends as F
from mictag.cli import main
from mictag.labels import OPENMIC_LABELS
from mictag.output.rows import columns

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

LABELS = list(OPENMIC_LABELS)
CFG = F.FbankConfig(target_frames=128)  # the tiny AST's window: 128 frames, 1.28 s


# -- helpers -----------------------------------------------------------------------------------
def mictag(*args):
    """`mictag ...` in this process (click's runner keeps stdout and stderr apart). A scan runs in
    fp32 unless told: these tests compare scores across variants and paths at 1e-4 and below, where
    bf16 (within 1e-3, tested in test_fast_paths.py) would not hold."""
    args = [str(a) for a in args]
    if args[0] == "scan" and "--precision" not in args and "--backend" not in args:
        args += ["--precision", "fp32"]
    return CliRunner().invoke(main, args)


def summary_counts(stderr: str) -> tuple[int, int]:
    """(files, already done) from the summary line."""
    m = re.search(r"^(\d+) files \(.*; (\d+) already done\)", stderr, re.M)
    assert m, stderr
    return int(m[1]), int(m[2])


def _num(v):
    return None if v in (None, "") else float(v)


def normalized(row: dict) -> dict:
    """A row from any output format with typed values."""
    return {"path": row["path"], "size_bytes": int(row["size_bytes"]), "mtime": float(row["mtime"]),
            "duration_s": _num(row["duration_s"]), "windows": int(row["windows"]), "status": row["status"],
            "error": row["error"] or "", "scores": [_num(row[l]) for l in LABELS], "tags": row["tags"] or ""}


def read_rows(path: Path, fmt: str = "csv") -> list[dict]:
    if fmt == "csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == columns(LABELS)
            return [normalized(r) for r in reader]
    if fmt == "jsonl":
        return [normalized(json.loads(line)) for line in path.read_text("utf-8").splitlines()]
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.column_names == columns(LABELS)
    return [normalized(r) for r in table.to_pylist()]


def by_path(rows: list[dict]) -> dict[str, dict]:
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), f"duplicate rows: {sorted(p for p in paths if paths.count(p) > 1)}"
    return {r["path"]: r for r in rows}


def comparable(rows: list[dict], decimals: int = 5) -> set:
    return {(r["path"], r["status"], tuple(None if s is None else round(s, decimals) for s in r["scores"]))
            for r in rows}


def data_rows(path: Path) -> int:
    """Complete data lines in a CSV being written (header excluded)."""
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tiny_ast_dir, tmp_path_factory) -> Path:
    """The zero-training tagger of the tiny AST, both variants, built through the CLI."""
    out = tmp_path_factory.mktemp("models")
    result = mictag("export", "--ast", tiny_ast_dir, "--out", out / "tagger.onnx",
                    "--fbank-out", out / "tagger-fbank.onnx")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    root = tmp_path_factory.mktemp("lib") / "music"
    expected = make_library(root)
    return root, expected, dict(DURATIONS)


@pytest.fixture(scope="module")
def scanned(lib, models, tmp_path_factory):
    """The mixed library scanned once to CSV with two decode workers."""
    root, _, _ = lib
    out = tmp_path_factory.mktemp("scan") / "tags.csv"
    result = mictag("scan", root, "--out", out, "--model", models / "tagger-fbank.onnx", "--workers", 2)
    return result, out


# -- a. the mixed library ----------------------------------------------------------------------
def test_mixed_library_every_file_once_with_its_status(lib, scanned):
    root, expected, durations = lib
    result, out = scanned
    assert result.exit_code == 1, result.output  # some files failed
    assert isinstance(result.exception, SystemExit)  # the exit code, not a crash
    rows = by_path(read_rows(out))
    # every audio file exactly once; the symlink loop, notes.txt, cover.jpg and readme.md add nothing
    assert set(rows) == set(expected)
    assert not any(p.endswith((".txt", ".jpg", ".md")) or "/up/" in p for p in rows)
    assert {p: r["status"] for p, r in rows.items()} == expected
    n_err = sum(s == "error" for s in expected.values())
    assert summary_counts(result.stderr) == (len(expected), 0)
    assert f"{n_err} error" in result.stderr
    for path, r in rows.items():
        if r["status"] == "error":
            assert r["error"].strip() and "\n" not in r["error"] and "Traceback" not in r["error"], path
            assert r["windows"] == 0 and r["duration_s"] is None and r["scores"] == [None] * 20 and r["tags"] == ""
        elif r["status"] == "empty":
            assert r["windows"] == 0 and r["duration_s"] == 0.0 and r["scores"] == [None] * 20
        else:  # ok and partial rows are scored
            assert r["windows"] >= 1, path
            assert all(0.0 <= s <= 1.0 for s in r["scores"]), path
            expected = "" if path == SILENT else ";".join(l for l, s in zip(LABELS, r["scores"]) if s >= 0.5)
            assert r["tags"] == expected, path  # silence is scored but plays no instrument
        if r["status"] == "ok":
            assert r["duration_s"] == pytest.approx(durations[path], abs=0.05), path
            frames = F.frame_count(round(durations[path] * 16000), CFG)
            assert r["windows"] == len(F.window_starts(frames, CFG.target_frames, CFG.target_frames)), path
            assert r["error"] == ("digital silence" if path == SILENT else ""), path
    assert rows[LONG]["windows"] == 118  # 150 s in 1.28 s windows
    assert "cannot read" in rows[DANGLING]["error"]
    assert "empty" in rows["broken/zero bytes.wav"]["error"]
    # the truncated FLAC keeps the first part it decoded and says where it stopped
    cut = rows[TRUNCATED]
    assert 1.0 < cut["duration_s"] < 6.0 and cut["error"].startswith("decoding stopped at")
    if M4A in expected:  # PyAV wrote AAC (skipped only where its FFmpeg cannot encode it): FFmpeg decodes it
        assert rows[M4A]["status"] == "ok" and rows[M4A]["error"] == ""


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_hold_the_same_rows(lib, models, scanned, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    root, _, _ = lib
    out = tmp_path / f"tags.{fmt}"
    result = mictag("scan", root, "--out", out, "--format", fmt, "--model", models / "tagger-fbank.onnx",
                    "--workers", 2, "--quiet")
    assert result.exit_code == 1, result.output
    assert result.stderr == ""  # --quiet
    csv_rows = by_path(read_rows(scanned[1]))
    rows = by_path(read_rows(out, fmt))
    assert set(rows) == set(csv_rows)
    for path, r in rows.items():
        c = csv_rows[path]
        assert {k: v for k, v in r.items() if k != "scores"} == {k: v for k, v in c.items() if k != "scores"}, path
        assert r["scores"] == c["scores"], path  # both rounded to 6 decimals from the same model


# -- b. scores: the Tagger API and a PyTorch reference ---------------------------------------
def torch_reference(ast, path: Path) -> np.ndarray:
    """Decode, cut windows by the window rule, AST logits -> sigmoid -> max over each OpenMIC
    label's AudioSet classes -> max over windows."""
    import torch

    from mictag.audio import load
    from mictag.labels import openmic_audioset_map

    audio = load(path)
    starts = F.window_starts(F.frame_count(audio.size, CFG), CFG.target_frames, CFG.target_frames)
    x = np.stack([F.model_input(audio[s * CFG.frame_shift : s * CFG.frame_shift + CFG.window_samples], CFG)
                  for s in starts])
    with torch.no_grad():
        probs = torch.sigmoid(ast(torch.from_numpy(x))).numpy()
    table = openmic_audioset_map()
    per_label = np.stack([probs[:, list(table[label])].max(axis=1) for label in LABELS], axis=1)
    return per_label.max(axis=0)


def test_scores_equal_the_tagger_api_and_a_pytorch_reference(lib, models, scanned, tiny_ast_dir):
    from mictag import Tagger
    from mictag.backbones.ast_checkpoints import load_ast

    root, _, _ = lib
    rows = by_path(read_rows(scanned[1]))
    tagger = Tagger(models / "tagger-fbank.onnx", precision="fp32")
    ast = load_ast(tiny_ast_dir).eval()
    scored = [p for p, r in rows.items() if r["status"] in ("ok", "partial")]
    assert len(scored) >= 14
    for path in scored:
        got = np.asarray(rows[path]["scores"])
        api = tagger.tag(root / path)
        assert api.status == rows[path]["status"] and api.windows == rows[path]["windows"], path
        np.testing.assert_allclose(got, api.scores, atol=1e-5, rtol=0, err_msg=path)
        np.testing.assert_allclose(got, torch_reference(ast, root / path), atol=1e-4, rtol=0, err_msg=path)


# -- c. kill -9, torn lines ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def thirty(models, tmp_path_factory):
    """30 files of 20 s, and the rows of an uninterrupted scan of them."""
    base = tmp_path_factory.mktemp("thirty")
    root = base / "lib"
    root.mkdir()
    x = tone_signal(20.0, 44100, 2, 0)  # 44.1 kHz stereo: resampling makes the scan take a few seconds
    for i in range(30):
        sf.write(root / f"track {i:02d}.wav", np.roll(x, 997 * i, axis=0) * (0.3 + 0.02 * i), 44100,
                 subtype="PCM_16")
    ref = base / "reference.csv"
    result = mictag("scan", root, "--out", ref, "--model", models / "tagger-fbank.onnx", "--workers", 1,
                    "--batch-size", 1)
    assert result.exit_code == 0, result.output
    rows = read_rows(ref)
    assert len(rows) == 30 and {r["status"] for r in rows} == {"ok"} and {r["windows"] for r in rows} == {16}
    return root, ref, rows


def test_kill_9_then_rerun_gives_the_uninterrupted_table(thirty, models, tmp_path):
    root, _, reference = thirty
    out = tmp_path / "tags.csv"
    cmd = [sys.executable, "-m", "mictag", "scan", str(root), "--out", str(out), "--model",
           str(models / "tagger-fbank.onnx"), "--workers", "1", "--batch-size", "1", "--precision", "fp32"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while data_rows(out) < 3:
            assert proc.poll() is None, "the scan ended before it could be killed"
            assert time.monotonic() < deadline, "no rows after 120 s"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the scan and its decode worker
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    left = data_rows(out)
    assert 3 <= left < 30, f"{left} rows when killed"

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files, skipped = summary_counts(done.stderr)
    assert files == 30 and skipped >= 3  # resumed, not restarted
    rows = read_rows(out)
    assert len(rows) == 30
    by_path(rows)  # no duplicates
    assert comparable(rows) == comparable(reference)


def test_a_torn_last_line_is_repaired(thirty, models, tmp_path):
    root, ref, reference = thirty
    model = models / "tagger-fbank.onnx"
    out = tmp_path / "tags.csv"
    shutil.copy(ref, out)
    shutil.copy(ref.with_name(ref.name + ".mictag.json"), out.with_name(out.name + ".mictag.json"))
    finished = out.read_bytes()
    lines = finished.decode("utf-8").splitlines(keepends=True)

    # 1. killed while writing its last row: half that row, no newline -> cut and redone
    last = lines[-1]
    torn_path = next(csv.reader([last]))[0]
    out.write_text("".join(lines[:-1]) + last[: len(last) // 2], encoding="utf-8")
    result = mictag("scan", root, "--out", out, "--model", model, "--workers", 1, "--batch-size", 1)
    assert result.exit_code == 0, result.output
    assert summary_counts(result.stderr) == (30, 29)
    rows = read_rows(out)
    assert [r["path"] for r in rows].count(torn_path) == 1 and len(rows) == 30
    assert comparable(rows) == comparable(reference)

    # 2. half of a row appended to a finished table -> cut; nothing redone, every file once
    repaired = out.read_bytes()
    first = lines[1]
    with out.open("a", encoding="utf-8", newline="") as f:
        f.write(first[: len(first) // 2])
    result = mictag("scan", root, "--out", out, "--model", model, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert summary_counts(result.stderr) == (30, 30)
    assert out.read_bytes() == repaired
    rows = read_rows(out)
    assert [r["path"] for r in rows].count(next(csv.reader([first]))[0]) == 1 and len(rows) == 30


# -- d. resume rules ---------------------------------------------------------------------------
def _lines_by_path(text: str) -> dict[str, str]:
    return {next(csv.reader([line]))[0]: line for line in text.splitlines()[1:]}


def test_resume_rules(lib, models, scanned, tmp_path):
    src_root, expected, _ = lib
    root = tmp_path / "music"
    shutil.copytree(src_root, root, symlinks=True)  # same names, sizes and mtimes
    out = tmp_path / "tags.csv"
    shutil.copy(scanned[1], out)
    shutil.copy(scanned[1].with_name("tags.csv.mictag.json"), tmp_path / "tags.csv.mictag.json")
    fbank, wave = models / "tagger-fbank.onnx", models / "tagger.onnx"
    n, errors = len(expected), sorted(p for p, s in expected.items() if s == "error")

    # a rerun skips everything and leaves the table byte for byte as it was
    before = out.read_bytes()
    result = mictag("scan", root, "--out", out, "--model", fbank, "--workers", 2)
    assert result.exit_code == 1, result.output
    assert summary_counts(result.stderr) == (n, n)
    assert f"{len(errors)} error" in result.stderr  # the kept rows still count
    assert out.read_bytes() == before

    # a touched file (mtime) and a rewritten one (size and mtime) are redone, nothing else
    touched, rewritten = root / "wav/u8 mono 8k.wav", root / "a/b/middle.wav"
    st = touched.stat()
    os.utime(touched, (st.st_atime, st.st_mtime + 100))
    sf.write(rewritten, tone_signal(2.0, 16000, 2, 99), 16000, subtype="PCM_16")
    old = _lines_by_path(before.decode("utf-8"))
    result = mictag("scan", root, "--out", out, "--model", fbank, "--workers", 2)
    assert summary_counts(result.stderr) == (n, n - 2)
    text = out.read_text("utf-8")
    new = _lines_by_path(text)
    redone = {"wav/u8 mono 8k.wav", "a/b/middle.wav"}
    assert set(new) == set(old) and {p for p in new if new[p] != old[p]} == redone
    assert {next(csv.reader([l]))[0] for l in text.splitlines()[-2:]} == redone  # appended at the end
    rows = by_path(read_rows(out))
    assert rows["a/b/middle.wav"]["duration_s"] == 2.0 and rows["a/b/middle.wav"]["windows"] == 2
    assert rows["wav/u8 mono 8k.wav"]["mtime"] == pytest.approx(st.st_mtime + 100, abs=1e-3)

    # --retry-failed redoes the error rows only (partial and empty rows are kept)
    before = out.read_text("utf-8")
    result = mictag("scan", root, "--out", out, "--model", fbank, "--workers", 2, "--retry-failed")
    assert result.exit_code == 1
    assert summary_counts(result.stderr) == (n, n - len(errors))
    text = out.read_text("utf-8")
    kept = [l for l in before.splitlines() if next(csv.reader([l]))[0] not in errors]
    assert text.splitlines()[: len(kept)] == kept  # the others untouched, in order
    assert sorted(next(csv.reader([l]))[0] for l in text.splitlines()[len(kept):]) == errors
    assert {p: r["status"] for p, r in by_path(read_rows(out)).items()} == expected

    # --overwrite starts afresh even with the same model and options
    result = mictag("scan", root, "--out", out, "--model", fbank, "--workers", 2, "--overwrite")
    assert summary_counts(result.stderr) == (n, 0)
    fbank_rows = by_path(read_rows(out))
    assert set(fbank_rows) == set(expected)

    # another model (the waveform variant) starts afresh too, with the same scores within 1e-4
    result = mictag("scan", root, "--out", out, "--model", wave, "--workers", 2)
    assert result.exit_code == 1
    assert "starting it afresh" in result.stderr and summary_counts(result.stderr) == (n, 0)
    wave_rows = by_path(read_rows(out))
    assert set(wave_rows) == set(fbank_rows)
    for path, w in wave_rows.items():
        f = fbank_rows[path]
        assert (w["status"], w["windows"], w["duration_s"]) == (f["status"], f["windows"], f["duration_s"]), path
        if f["scores"][0] is not None:
            np.testing.assert_allclose(w["scores"], f["scores"], atol=1e-4, rtol=0, err_msg=path)


# -- e. segments ---------------------------------------------------------------------------------
def test_segments_with_a_hop_and_both_aggregates(lib, models, tmp_path):
    root, _, _ = lib
    tables = {}
    for aggregate in ("max", "mean"):
        out, seg = tmp_path / f"{aggregate}.csv", tmp_path / f"{aggregate}.jsonl"
        result = mictag("scan", root, "--out", out, "--model", models / "tagger-fbank.onnx", "--workers", 2,
                        "--segments", seg, "--hop", 0.64, "--aggregate", aggregate)
        assert result.exit_code == 1, result.output
        rows = by_path(read_rows(out))
        lines = [json.loads(l) for l in seg.read_text("utf-8").splitlines()]
        assert len(lines) == len({l["path"] for l in lines})  # one line per file
        assert {l["path"] for l in lines} == {p for p, r in rows.items() if r["windows"] > 0}
        for line in lines:
            r = rows[line["path"]]
            segs = line["segments"]
            assert line["labels"] == LABELS and len(segs) == r["windows"]
            frames = F.frame_count(round(r["duration_s"] * 16000), CFG)
            assert len(segs) == len(F.window_starts(frames, 64, 128)), line["path"]
            starts = [s["start"] for s in segs]
            assert starts[0] == 0.0
            np.testing.assert_allclose(np.diff(starts), 0.64, atol=1e-6)
            for s in segs:
                assert 0.0 < s["end"] - s["start"] <= CFG.window_samples / 16000 + 1e-6  # 1.295 s of samples
                assert len(s["scores"]) == 20
                assert all(0.0 <= v <= 1.0 for v in s["scores"])
            assert segs[-1]["end"] == pytest.approx(r["duration_s"], abs=0.02)
            scores = np.asarray([s["scores"] for s in segs])
            agg = scores.max(axis=0) if aggregate == "max" else scores.mean(axis=0)
            np.testing.assert_allclose(r["scores"], agg, atol=2e-6, rtol=0, err_msg=line["path"])
        tables[aggregate] = rows
    assert tables["max"][LONG]["windows"] == 234  # 150 s, 1.28 s windows every 0.64 s
    # the mean never exceeds the max, and differs where the windows differ
    mx, mn = np.asarray(tables["max"][LONG]["scores"]), np.asarray(tables["mean"][LONG]["scores"])
    assert np.all(mn <= mx + 1e-6) and np.any(mn < mx - 1e-4)


# -- f. filters and thresholds -------------------------------------------------------------------
def test_include_exclude_and_thresholds(lib, models, tmp_path):
    root, expected, _ = lib
    model = models / "tagger-fbank.onnx"
    out = tmp_path / "flac.csv"
    result = mictag("scan", root, "--out", out, "--model", model, "--workers", 2, "--include", "*.flac",
                    "--exclude", "long/*", "--threshold", 0)
    rows = by_path(read_rows(out))
    assert set(rows) == {p for p in expected if p.endswith(".flac") and not p.startswith("long/")}
    assert result.exit_code == 0, result.output  # the truncated FLAC is partial, not an error
    for r in rows.values():  # threshold 0: every label on every scored file
        assert r["tags"] == ";".join(LABELS)

    out = tmp_path / "clean.csv"
    result = mictag("scan", root, "--out", out, "--model", model, "--workers", 2, "--exclude", "broken/*",
                    "--exclude", "long/*", "--exclude", "*.ogg", "--threshold", 1)
    rows = by_path(read_rows(out))
    assert set(rows) == {p for p in expected if not p.startswith(("broken/", "long/")) and not p.endswith(".ogg")}
    assert result.exit_code == 0, result.output  # no errors left: exit 0
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert all(r["tags"] == "" for r in rows.values())  # threshold 1: no label


# -- g, h. mistakes and a missing model ------------------------------------------------------------
def _one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("mictag: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_user_mistakes_are_one_line_and_exit_2(lib, models, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    root, _, _ = lib
    fbank = models / "tagger-fbank.onnx"
    out = tmp_path / "t.csv"
    _one_error_line(mictag("scan", tmp_path / "no such dir", "--out", out, "--model", fbank), "does not exist")
    _one_error_line(mictag("scan", root, "--out", out, "--model", tmp_path / "missing.onnx"),
                    "missing.onnx", "does not exist")
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n")
    _one_error_line(mictag("scan", root, "--out", out, "--model", text), "text.onnx", "not a readable ONNX model")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    bare = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    bare.ir_version = 8
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    _one_error_line(mictag("scan", root, "--out", out, "--model", tmp_path / "bare.onnx"), "no mictag metadata")
    _one_error_line(mictag("scan", root, "--out", out, "--model", fbank, "--backend", "tensorrt"),
                    "tensorrt", "engine")
    _one_error_line(mictag("scan", root, "--out", out, "--model", fbank, "--threshold", 1.5), "--threshold")
    _one_error_line(mictag("scan", root, "--out", out, "--model", fbank, "--hop", 0.333), "hop")
    assert not out.exists()  # nothing was scanned


