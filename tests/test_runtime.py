"""Runtime units: streamed windows, bounded memory, the Tagger API, backends, the model cache."""

from __future__ import annotations

import os

import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mictag import frontends as F
from mictag.audio import AudioError
from mictag.cli import main
from mictag.errors import ModelError
from mictag.runtime.engines.open import open_backend
from mictag.runtime.scan.windows import frame_windows, sample_windows
from test_ast_checkpoints import _populate_hub_cache, offline_hub  # noqa: F401  (fixture)

CFG = F.FbankConfig(target_frames=128)


def _chunks(x: np.ndarray, size: int):
    for i in range(0, len(x), size):
        yield x[i : i + size]


@pytest.mark.parametrize("hop", [128, 50, 200])
@pytest.mark.parametrize("chunk", [1000, 16000, 99999])
def test_streamed_windows_equal_one_shot_frames_for_every_window(hop, chunk):
    rng = np.random.default_rng(hop + chunk)
    w = (0.3 * rng.standard_normal(7 * 16000 + 123)).astype(np.float32)
    frames = F.log_mel(w, CFG)
    starts = F.window_starts(frames.shape[0], hop, CFG.target_frames)
    got = list(frame_windows(_chunks(w, chunk), CFG, hop))
    assert [g.start_frame for g in got] == starts and [g.index for g in got] == list(range(len(starts)))
    for g in got:
        expect = frames[g.start_frame : g.start_frame + CFG.target_frames]
        assert g.valid == expect.shape[0]
        np.testing.assert_allclose(g.data[: g.valid], expect, atol=1e-4, rtol=0)
        assert not g.data[g.valid :].any()  # padded with zeros in the fbank domain
    samples = list(sample_windows(_chunks(w, chunk), CFG, hop))
    assert [s.start_frame for s in samples] == starts
    for s, g in zip(samples, got):
        assert F.frame_count(s.valid, CFG) == g.valid
        np.testing.assert_allclose(F.log_mel(s.data[: s.valid], CFG), g.data[: g.valid], atol=1e-4, rtol=0)


def test_short_and_empty_streams_give_one_padded_window():
    (one,) = frame_windows([np.zeros(300, np.float32)], CFG, 128)
    assert one.valid == 0 and one.data.shape == (128, 128)
    (short,) = frame_windows([np.ones(5000, np.float32)], CFG, 128)
    assert short.valid == F.frame_count(5000, CFG)


def test_streaming_an_hour_keeps_memory_bounded():
    """An hour of audio through the frame-window stream: memory holds about one window plus one
    chunk, never the file (an hour of frames alone would be 184 MB)."""
    cfg = F.AST_FBANK
    block = (0.1 * np.random.default_rng(0).standard_normal(30 * 16000)).astype(np.float32)
    tracemalloc.start()
    n = 0
    for _ in frame_windows((block for _ in range(120)), cfg, cfg.target_frames):
        n += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == len(F.window_starts(F.frame_count(3600 * 16000, cfg), 1024, 1024))
    assert peak < 40e6, f"peak {peak / 1e6:.1f} MB"


@pytest.fixture(scope="module")
def tagger_models(tiny_ast_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tagger")
    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--out", str(out / "w.onnx"),
                                       "--fbank-out", str(out / "f.onnx")])
    assert result.exit_code == 0, result.output
    return out


def test_tagger_array_equals_file_and_both_variants_agree(tagger_models, tmp_path):
    from mictag import Tagger

    rng = np.random.default_rng(4)
    t = np.arange(int(3.3 * 44100)) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 330 * t), 0.1 * rng.standard_normal(t.size)], axis=1).astype(np.float32)
    sf.write(tmp_path / "clip.wav", stereo, 44100, subtype="FLOAT")
    fbank_tagger = Tagger(tagger_models / "f.onnx", precision="fp32")
    wave_tagger = Tagger(tagger_models / "w.onnx", precision="fp32")
    from_file = fbank_tagger.tag(tmp_path / "clip.wav")
    from_array = fbank_tagger.tag_array(stereo, 44100)
    assert from_file.windows == from_array.windows == 3 and from_file.status == "ok"
    assert from_file.duration_s == pytest.approx(3.3, abs=1e-3)
    np.testing.assert_allclose(from_array.scores, from_file.scores, atol=1e-5)
    np.testing.assert_allclose(wave_tagger.tag(tmp_path / "clip.wav").scores, from_file.scores, atol=1e-4)
    assert from_file.tags == [l for l, s in zip(fbank_tagger.labels, from_file.scores) if s >= 0.5]
    results = list(fbank_tagger.tag_paths([tmp_path / "clip.wav", tmp_path / "missing.wav"], workers=0))
    assert sorted(r.status for r in results) == ["error", "ok"]


def test_tagger_typed_errors(tagger_models, tmp_path):
    from mictag import Tagger

    tagger = Tagger(tagger_models / "f.onnx")
    with pytest.raises(AudioError, match="missing.wav"):
        tagger.tag(tmp_path / "missing.wav")
    (tmp_path / "text.mp3").write_text("not audio")
    with pytest.raises(AudioError, match="text.mp3"):
        tagger.tag(tmp_path / "text.mp3")
    with pytest.raises(AudioError, match="NaN"):
        tagger.tag_array(np.full(1000, np.nan, np.float32), 16000)
    with pytest.raises(AudioError, match="shape"):
        tagger.tag_array(np.zeros((2, 2, 2), np.float32), 16000)
    with pytest.raises(AudioError, match="sample_rate"):
        tagger.tag_array(np.zeros(100, np.float32), 0)


def test_backend_choice_and_refusals(tagger_models, tmp_path):
    from mictag.runtime.engines.open import plan_engine

    engine = open_backend(tagger_models / "f.onnx")
    assert engine.name == plan_engine(tagger_models / "f.onnx").backend and engine.plan is not None
    assert open_backend(tagger_models / "f.onnx", "ort-cpu").description == "ort-cpu fp32 (the backend's precision)"
    with pytest.raises(ModelError, match="does not exist"):
        open_backend(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="needs a engine model|needs a torch model"):
        open_backend(tagger_models / "f.onnx", "torch")
    (tmp_path / "m.xyz").write_text("x")
    with pytest.raises(ModelError, match="unknown model type"):
        open_backend(tmp_path / "m.xyz")


def test_models_pull_builds_the_default_tagger_offline_and_scan_uses_it(offline_hub, tiny_ast_dir, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    from mictag.catalog import DEFAULT_HUB_ID

    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home"))
    _populate_hub_cache(offline_hub, DEFAULT_HUB_ID, {"config.json": tiny_ast_dir / "config.json",
                                                      "model.safetensors": tiny_ast_dir / "model.safetensors"})
    result = CliRunner().invoke(main, ["models", "pull"])
    assert result.exit_code == 0, result.output
    assert "default tagger ready" in result.output
    listed = CliRunner().invoke(main, ["models", "list"])
    assert "zero-training tagger" in listed.output and DEFAULT_HUB_ID in listed.output
    lib = tmp_path / "lib"
    lib.mkdir()
    sf.write(lib / "a.wav", 0.2 * np.random.default_rng(0).standard_normal(20000), 16000)
    scanned = CliRunner().invoke(main, ["scan", str(lib), "--out", str(tmp_path / "t.csv"), "--workers", "0"])
    assert scanned.exit_code == 0, scanned.output
    assert "a.wav" in (tmp_path / "t.csv").read_text()


def test_a_damaged_hub_download_is_refused(offline_hub, tiny_ast_dir, tmp_path, monkeypatch):  # noqa: F811
    from mictag.catalog import DEFAULT_HUB_ID

    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home"))
    _populate_hub_cache(offline_hub, DEFAULT_HUB_ID, {"config.json": tiny_ast_dir / "config.json",
                                                      "model.safetensors": tiny_ast_dir / "model.safetensors"})
    blobs = offline_hub / ("models--" + DEFAULT_HUB_ID.replace("/", "--")) / "blobs"
    for b in blobs.glob("*"):
        if b.stat().st_size > 10_000:  # the weights
            data = bytearray(b.read_bytes())
            data[-1] ^= 0xFF
            b.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["models", "pull"])
    assert result.exit_code == 2 and "is damaged" in result.output


def test_a_silently_truncated_mp3_is_flagged_partial(tmp_path):
    """libsndfile stops early on a cut MP3 without an error: the header's length catches it."""
    from mictag.audio import AudioStream

    x = (0.2 * np.random.default_rng(1).standard_normal(6 * 44100)).astype(np.float32)
    sf.write(tmp_path / "full.mp3", x, 44100)
    data = (tmp_path / "full.mp3").read_bytes()
    (tmp_path / "half.mp3").write_bytes(data[: len(data) // 2])
    full, half = AudioStream(tmp_path / "full.mp3"), AudioStream(tmp_path / "half.mp3")
    assert sum(c.size for c in full) == pytest.approx(6 * 16000, abs=2000) and full.partial is None
    kept = sum(c.size for c in half)
    assert 0 < kept < 4 * 16000 and "the header promises" in half.partial


def test_scanning_with_an_onnx_model_never_imports_torch(tagger_models, tmp_path):
    import subprocess
    import sys

    lib = tmp_path / "lib"
    lib.mkdir()
    sf.write(lib / "a.wav", 0.2 * np.random.default_rng(0).standard_normal(30000), 16000)
    code = (
        "import sys\n"
        "from mictag.cli import main\n"
        f"args = ['scan', {str(lib)!r}, '--out', {str(tmp_path / 't.csv')!r}, '--model', {str(tagger_models / 'f.onnx')!r}, '--workers', '1', '-q']\n"
        "try:\n    main(args)\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert "a.wav" in (tmp_path / "t.csv").read_text()


@pytest.mark.parametrize("command", [["models", "list"], ["scan", "LIB", "--out", "OUT"]])
def test_the_model_listing_and_the_no_model_message_never_import_torch(command, tmp_path):
    """`models list` looks for the AST in the hub cache, and a scan with no model says how to get
    one: both without importing torch (the scan's exit 2 is its "no model" message). `mictag info`
    imports it on purpose, to name torch's devices."""
    import subprocess
    import sys

    lib = tmp_path / "lib"
    lib.mkdir()
    sf.write(lib / "a.wav", np.zeros(16000, np.float32), 16000)
    args = [str(lib) if a == "LIB" else str(tmp_path / "t.csv") if a == "OUT" else a for a in command]
    code = ("import sys\nfrom mictag.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    env = {**os.environ, "MICTAG_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)}  # nothing to fetch either
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.stdout.strip().splitlines()[-1] == "torch imported: False", done.stdout + done.stderr
    if command[0] == "scan":
        assert "exit 2" in done.stdout and "mictag models pull" in done.stdout + done.stderr


def test_torch_backend_scores_like_onnx_runtime(tiny_ast_dir, tmp_path):
    from mictag import Tagger

    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--out", str(tmp_path / "m.onnx"),
                                       "--torch-out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    x = (0.2 * np.random.default_rng(3).standard_normal(50000)).astype(np.float32)
    torch_tagger = Tagger(tmp_path / "m.pt", precision="fp32")
    assert torch_tagger.backend.name == "torch"
    np.testing.assert_allclose(torch_tagger.tag_array(x, 16000).scores,
                               Tagger(tmp_path / "m.onnx", backend="ort-cpu").tag_array(x, 16000).scores, atol=1e-4)


def test_wav_with_a_codec_ffmpeg_cannot_decode_is_a_clear_error(tmp_path):
    """A RIFF/WAVE header around an unsupported codec (as some LMMS samples ship): one clear error
    naming the file, not an internal AttributeError."""
    import struct

    from mictag import audio

    pytest.importorskip("av")
    data = bytes(2000)
    fmt = struct.pack("<HHIIHH", 0x6750, 1, 44100, 88200, 2, 16)  # an Ogg-in-WAV format tag
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path = tmp_path / "odd.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(AudioError, match=r"odd\.wav.*codec is not supported"):
        list(audio.stream(path))
