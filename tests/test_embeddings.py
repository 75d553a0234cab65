"""`mictag scan --embeddings`: one vector per file from the same pass as the tags, equal to an
independent reference (transformers' AST pooler output, averaged over the window rule's windows,
L2-normalised), the same through the Python API and every CPU engine, and resumable like the tags
(kill -9, then a rerun: every file exactly once in both outputs, the vectors of an uninterrupted
scan)."""

from __future__ import annotations

import os
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

from library import make_library
from library import signal as tone_signal
from mictag import frontends as F
from mictag.cli import main
from mictag.digest import file_digest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("pyarrow")

CFG = F.FbankConfig(target_frames=128)  # the tiny AST's window


def mictag(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def models(tiny_ast_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models")
    result = mictag("export", "--ast", tiny_ast_dir, "--fbank-out", out / "tagger-fbank.onnx")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    root = tmp_path_factory.mktemp("lib") / "music"
    make_library(root)
    return root


@pytest.fixture(scope="module")
def scanned(lib, models, tmp_path_factory):
    base = tmp_path_factory.mktemp("scan")
    result = mictag("scan", lib, "--out", base / "tags.csv", "--embeddings", base / "emb.parquet",
                    "--model", models / "tagger-fbank.onnx", "--workers", 2, "--precision", "fp32")
    assert result.exit_code == 1, result.output  # the library's broken files
    return base / "tags.csv", base / "emb.parquet"


def tags_rows(path: Path) -> dict[str, dict]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def reference_vector(hf_ast, path: Path) -> np.ndarray:
    """transformers' AST pooler output ((cls + distillation) / 2 after the final LayerNorm) per
    window of the window rule, averaged, L2-normalised."""
    import torch

    from mictag.audio import load

    audio = load(path)
    starts = F.window_starts(F.frame_count(audio.size, CFG), CFG.target_frames, CFG.target_frames)
    x = np.stack([F.model_input(audio[s * CFG.frame_shift : s * CFG.frame_shift + CFG.window_samples], CFG)
                  for s in starts])
    with torch.no_grad():
        pooled = hf_ast(input_values=torch.from_numpy(x)).pooler_output.double().numpy()
    mean = pooled.mean(axis=0)
    return mean / np.linalg.norm(mean)


def test_one_vector_per_scored_file_equal_to_a_transformers_reference(scanned, lib, models, tiny_ast_dir):
    transformers = pytest.importorskip("transformers")
    from mictag.output.embeddings import read_table

    tags_path, emb_path = scanned
    rows = tags_rows(tags_path)
    table = read_table(emb_path)
    with_windows = {p for p, r in rows.items() if int(r["windows"] or 0) > 0}
    assert len(with_windows) >= 14
    assert set(table.index) == with_windows and len(table) == len(with_windows)  # every one once, no error rows
    assert table.model_sha256 == file_digest(models / "tagger-fbank.onnx")
    assert table.dim == 32  # the tiny AST's hidden size
    np.testing.assert_allclose(np.linalg.norm(table.vectors, axis=1), 1.0, atol=1e-5)
    for r in table.rows:  # the same identity as the tags row
        t = rows[r["path"]]
        assert (r["size_bytes"], r["mtime"], r["content_sha256"]) == (int(t["size_bytes"]), float(t["mtime"]),
                                                                      t["content_sha256"])
    hf = transformers.ASTModel.from_pretrained(tiny_ast_dir).eval()
    for path in sorted(with_windows):
        want = reference_vector(hf, lib / path)
        got = table.vectors[table.index[path]]
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=0, err_msg=path)


def test_the_api_and_the_other_cpu_engines_give_the_same_vectors(scanned, lib, models):
    from mictag import Tagger
    from mictag.output.embeddings import read_table

    table = read_table(scanned[1])
    paths = ["flac/stereo 22k.flac", "wav/pcm16 stereo 44k.wav", "mp3/song stereo 44k.mp3"]
    for backend in ("ort-cpu", "openvino"):
        if backend == "openvino":
            pytest.importorskip("openvino")
        tagger = Tagger(models / "tagger-fbank.onnx", backend=backend, precision="fp32", embeddings=True)
        for path in paths:
            got = tagger.tag(lib / path).embedding
            np.testing.assert_allclose(got, table.vectors[table.index[path]], atol=1e-4, err_msg=f"{backend} {path}")
        samples, rate = sf.read(lib / paths[0], dtype="float32")
        from_array = tagger.tag_array(samples, rate).embedding
        np.testing.assert_allclose(from_array, table.vectors[table.index[paths[0]]], atol=1e-4)
    assert Tagger(models / "tagger-fbank.onnx", precision="fp32").tag(lib / paths[0]).embedding is None  # not asked


def test_the_torch_artifact_gives_the_same_vectors(scanned, lib, tiny_ast_dir, tmp_path):
    pytest.importorskip("torch")
    from mictag import Tagger
    from mictag.output.embeddings import read_table

    result = mictag("export", "--ast", tiny_ast_dir, "--torch-out", tmp_path / "t.pt")
    assert result.exit_code == 0, result.output
    table = read_table(scanned[1])
    tagger = Tagger(tmp_path / "t.pt", backend="torch", precision="fp32", embeddings=True)
    for path in ("flac/stereo 22k.flac", "ogg/vorbis stereo 44k.ogg"):
        np.testing.assert_allclose(tagger.tag(lib / path).embedding, table.vectors[table.index[path]], atol=1e-4,
                                   err_msg=path)


def test_a_checked_fast_path_gives_vectors_close_to_fp32(scanned, lib, models, tmp_path):
    from mictag.output.embeddings import read_table

    out = tmp_path / "tags.csv"
    result = mictag("scan", lib, "--out", out, "--embeddings", tmp_path / "emb.parquet",
                    "--model", models / "tagger-fbank.onnx", "--workers", 1)  # auto: whatever is fastest here
    assert result.exit_code == 1, result.output
    fast, exact = read_table(tmp_path / "emb.parquet"), read_table(scanned[1])
    assert set(fast.index) == set(exact.index)
    cos = [float(fast.vectors[fast.index[p]] @ exact.vectors[i]) for p, i in exact.index.items()]
    assert min(cos) > 0.99, cos


@pytest.fixture(scope="module")
def twelve(models, tmp_path_factory):
    """12 files of 20 s, and an uninterrupted scan of them with embeddings."""
    base = tmp_path_factory.mktemp("twelve")
    root = base / "lib"
    root.mkdir()
    x = tone_signal(20.0, 44100, 2, 0)
    for i in range(12):
        sf.write(root / f"track {i:02d}.wav", np.roll(x, 997 * i, axis=0) * (0.3 + 0.02 * i), 44100,
                 subtype="PCM_16")
    result = mictag("scan", root, "--out", base / "ref.csv", "--embeddings", base / "ref.parquet", "--model",
                    models / "tagger-fbank.onnx", "--workers", 1, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    return root, base / "ref.parquet"


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_kill_9_then_rerun_every_file_once_in_both_outputs(twelve, models, tmp_path):
    from mictag.output.embeddings import journal_path, read_table

    root, ref = twelve
    out, emb = tmp_path / "tags.csv", tmp_path / "emb.parquet"
    cmd = [sys.executable, "-m", "mictag", "scan", str(root), "--out", str(out), "--embeddings", str(emb),
           "--model", str(models / "tagger-fbank.onnx"), "--workers", "1", "--batch-size", "1", "--precision", "fp32"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _lines(journal_path(emb)) < 3:
            assert proc.poll() is None, "the scan ended before it could be killed"
            assert time.monotonic() < deadline, "no vectors after 120 s"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert 3 <= _lines(journal_path(emb)) < 12
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "already done" in done.stderr and not done.stderr.count("0 already done")
    got, want = read_table(emb), read_table(ref)
    assert len(got) == 12 and set(got.index) == set(want.index)
    for path, i in want.index.items():
        np.testing.assert_allclose(got.vectors[got.index[path]], want.vectors[i], atol=1e-6, err_msg=path)
    assert len(tags_rows(out)) == 12


def test_adding_embeddings_to_a_finished_scan_scores_the_files_again(twelve, models, tmp_path):
    from mictag.output.embeddings import read_table

    root, ref = twelve
    out, emb = tmp_path / "tags.csv", tmp_path / "emb.parquet"
    common = ["--model", models / "tagger-fbank.onnx", "--workers", 1, "--precision", "fp32"]
    assert mictag("scan", root, "--out", out, *common).exit_code == 0
    before = out.read_text("utf-8")
    result = mictag("scan", root, "--out", out, "--embeddings", emb, *common)
    assert result.exit_code == 0, result.output
    assert "0 already done" in result.output  # no vector for any of them yet
    assert len(read_table(emb)) == 12 and len(tags_rows(out)) == 12
    assert sorted(before.splitlines()) == sorted(out.read_text("utf-8").splitlines())  # the same rows
    again = mictag("scan", root, "--out", out, "--embeddings", emb, *common)  # now nothing to do
    assert again.exit_code == 0 and "12 already done" in again.output


def test_a_renamed_copy_gets_the_vector_of_its_bytes(twelve, models, tmp_path):
    from mictag.output.embeddings import read_table

    root, ref = twelve
    lib = tmp_path / "lib"
    shutil.copytree(root, lib)
    out, emb = tmp_path / "tags.csv", tmp_path / "emb.parquet"
    common = ["--embeddings", emb, "--model", models / "tagger-fbank.onnx", "--workers", 1, "--precision", "fp32"]
    assert mictag("scan", lib, "--out", out, *common).exit_code == 0
    shutil.copy2(lib / "track 03.wav", lib / "copy of three.wav")
    (lib / "track 04.wav").rename(lib / "four renamed.wav")
    result = mictag("scan", lib, "--out", out, *common)
    assert result.exit_code == 0 and "2 reused" in result.output, result.output
    table = read_table(emb)
    assert len(table) == 12 + 1 and "track 04.wav" not in table.index
    for copy, source in (("copy of three.wav", "track 03.wav"), ("four renamed.wav", "track 03.wav")):
        assert copy in table.index
    np.testing.assert_array_equal(table.vectors[table.index["copy of three.wav"]],
                                  table.vectors[table.index["track 03.wav"]])
    want = read_table(ref)
    np.testing.assert_allclose(table.vectors[table.index["four renamed.wav"]],
                               want.vectors[want.index["track 04.wav"]], atol=1e-6)


def test_mistakes_are_one_line(lib, models, tmp_path):
    out = tmp_path / "tags.csv"
    result = mictag("scan", lib, "--out", out, "--embeddings", out, "--model", models / "tagger-fbank.onnx")
    assert result.exit_code == 2 and "the tags output itself" in result.output
    assert "Traceback" not in result.output
