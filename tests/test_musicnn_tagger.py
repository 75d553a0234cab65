"""musicnn as the whole product: the exported zero-training tagger equals PyTorch (both graph
variants, so the in-graph front end equals the streamed numpy one), `mictag scan --backbone
musicnn` over real files, the offline message without weights, and training every reprogrammer."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from mictag import frontends
from mictag.cli import main
from mictag.labels import openmic_mtt_map
from mictag.frontends import MUSICNN_MEL
from musicnn_fixtures import fake_musicnn_tf, fake_musicnn_wheel

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
EXPRESSIBLE = ["cello", "drums", "flute", "guitar", "piano", "synthesizer", "violin", "voice"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("musicnn") / "fake-mtt.safetensors"
    save_file(fake_musicnn_tf(seed=5, adam=False), str(path))
    return path


def _run(args: list[str]):
    result = CliRunner().invoke(main, args)
    return result


def test_map_has_the_expressible_labels_only():
    assert list(openmic_mtt_map()) == EXPRESSIBLE  # OpenMIC order; the other twelve stay absent


def test_exported_musicnn_tagger_equals_pytorch(weights, tmp_path):
    from mictag.export.onnx import read_metadata
    from mictag.export.zero_training import zero_training_tagger
    from mictag.model.fbank import Fbank, FrameFinish
    from mictag.runtime.scan.windows import frame_windows, sample_windows

    result = _run(["export", "--backbone", "musicnn", "--musicnn", str(weights), "--mapper", "many-to-one",
                   "--out", str(tmp_path / "w.onnx"), "--fbank-out", str(tmp_path / "f.onnx")])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "w.onnx")
    assert meta["labels"] == EXPRESSIBLE and meta["window_samples"] == 48128
    assert meta["window_seconds"] == pytest.approx(2.992) and meta["features"]["kind"] == "librosa-mel"
    assert meta["backbone"]["kind"] == "musicnn" and meta["system"]["backbone"] == "musicnn"

    rng = np.random.default_rng(0)
    t = np.arange(int(7.3 * 16000)) / 16000
    y = (0.1 * np.sin(2 * np.pi * (80 + 700 * t) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    chunks = [y[i : i + 7000] for i in range(0, y.size, 7000)]
    fw = list(frame_windows(iter(chunks), MUSICNN_MEL, 187))
    sw = list(sample_windows(iter(chunks), MUSICNN_MEL, 187))
    assert len(fw) == len(sw) == 3 and fw[-1].valid < 187  # the last window is partial
    frames, fvalid = np.stack([w.data for w in fw]), np.array([w.valid for w in fw], np.int64)
    waves, svalid = np.stack([w.data for w in sw]), np.array([w.valid for w in sw], np.int64)

    system, _ = zero_training_tagger(str(weights), backbone="musicnn")
    with torch.no_grad():
        ref = system(FrameFinish(MUSICNN_MEL, normalize=False)(torch.from_numpy(frames), torch.from_numpy(fvalid)))
        ref_wave = system(Fbank(MUSICNN_MEL, normalize=False)(torch.from_numpy(waves), torch.from_numpy(svalid)))
    ref, ref_wave = ref.numpy(), ref_wave.numpy()
    assert np.ptp(ref) > 0.1  # the comparison is not between constants
    np.testing.assert_allclose(ref_wave, ref, atol=1e-4)  # torch front end == streamed numpy front end
    wave = ort.InferenceSession(str(tmp_path / "w.onnx"), providers=["CPUExecutionProvider"])
    fbank = ort.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        p_w, l_w, _ = wave.run(None, {"windows": waves[:batch], "valid_samples": svalid[:batch]})
        p_f, l_f, _ = fbank.run(None, {"frames": frames[:batch], "valid_frames": fvalid[:batch]})
        np.testing.assert_allclose(l_w, ref[:batch], atol=1e-4)  # in-graph front end
        np.testing.assert_allclose(l_f, ref[:batch], atol=1e-4)
        np.testing.assert_allclose(p_w, 1 / (1 + np.exp(-ref[:batch])), atol=1e-5)


def test_musicnn_weights_that_are_not_mtt_are_refused(weights, tmp_path):
    from safetensors.numpy import save_file

    bad = {k: v for k, v in fake_musicnn_tf(adam=False).items() if not k.startswith("dense_1")}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    result = _run(["export", "--backbone", "musicnn", "--musicnn", str(tmp_path / "bad.safetensors"),
                   "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "dense_1/kernel" in result.output
    result = _run(["export", "--backbone", "musicnn", "--musicnn", "MTT_nope", "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "unknown musicnn model" in result.output


def test_scan_with_musicnn_over_real_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home"))
    lib = tmp_path / "lib"
    lib.mkdir()
    rng = np.random.default_rng(1)
    durations = {"long.flac": (44100, 2, 7.5), "short.ogg": (22050, 1, 2.0), "tiny.wav": (16000, 1, 0.1)}
    for name, (rate, channels, seconds) in durations.items():
        x = (0.2 * rng.standard_normal((int(rate * seconds), channels))).astype(np.float32)
        sf.write(lib / name, x, rate)
    (lib / "broken.mp3").write_bytes(b"ID3" + bytes(500))
    wheel = fake_musicnn_wheel(tmp_path / "musicnn-0.1.0-py3-none-any.whl", lambda i: fake_musicnn_tf(seed=i))
    result = _run(["models", "pull", "musicnn", "--wheel", str(wheel)])
    assert result.exit_code == 0 and "musicnn zero-training tagger ready" in result.output, result.output
    result = _run(["scan", str(lib), "--backbone", "musicnn", "--zero-training", "--out", str(tmp_path / "tags.csv"),
                   "--workers", "1"])
    assert result.exit_code == 1, result.output  # one file failed, the rest are tagged
    with open(tmp_path / "tags.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert list(next(iter(rows.values())))[7:-3] == EXPRESSIBLE
    assert rows["broken.mp3"]["status"] == "error" and rows["broken.mp3"]["error"]
    for name, (_, _, seconds) in durations.items():
        samples = int(round(seconds * 16000))
        expected = len(frontends.window_starts(1 + samples // 256, 187, 187))
        assert rows[name]["status"] == "ok" and int(rows[name]["windows"]) == expected, name
        assert float(rows[name]["duration_s"]) == pytest.approx(seconds, abs=1e-3)
        assert all(0.0 <= float(rows[name][label]) <= 1.0 for label in EXPRESSIBLE)
    assert int(rows["long.flac"]["windows"]) == 3
    # another MTT model has its own tagger; MSD models (genre and mood tags) have no instrument map
    result = _run(["scan", str(lib), "--backbone", "musicnn", "--musicnn", "MTT_vgg", "--out",
                   str(tmp_path / "vgg.csv"), "--workers", "1"])
    taggers = [p for p in (tmp_path / "home" / "models").glob("musicnn-zero-training-*") if ".int8." not in p.name]
    assert result.exit_code == 1 and len(taggers) == 2  # each model its own tagger (and, on int8 CPUs, variant)
    listed = _run(["models", "list"]).output
    assert "musicnn zero-training tagger, MTT_vgg" in listed and "musicnn zero-training tagger, MTT_musicnn" in listed
    result = _run(["scan", str(lib), "--backbone", "musicnn", "--musicnn", "MSD_musicnn", "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and "Million Song Dataset" in result.output
    from mictag.backbones.musicnn_weights import weights_path

    result = _run(["export", "--backbone", "musicnn", "--musicnn", str(weights_path("MSD_vgg")), "--out",
                   str(tmp_path / "x.onnx")])  # a converted file says where it came from
    assert result.exit_code == 2 and "Million Song Dataset" in result.output


def test_scan_with_musicnn_and_no_weights_says_how_to_get_them(tmp_path, monkeypatch):
    """The weights are fetched with pip on first use; where pip cannot get them, the error says how."""
    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    (tmp_path / "lib").mkdir()
    sf.write(tmp_path / "lib" / "a.wav", np.zeros(16000, np.float32), 16000)
    result = _run(["scan", str(tmp_path / "lib"), "--backbone", "musicnn", "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 2
    assert "mictag models pull musicnn" in result.output and "--wheel" in result.output
    assert "Traceback" not in result.output and "cannot download musicnn==0.1.0 with pip" in result.output
    assert not (tmp_path / "t.csv").exists()


def test_train_musicnn_every_reprogrammer_then_export(weights, tmp_path):
    from datasets import make_folder

    from mictag.export.onnx import read_metadata
    from mictag.model.system import parameter_table
    from mictag.train.checkpoint import load_model

    data = make_folder(tmp_path / "data", labels=("drums", "guitar", "piano"), n=12, seconds=1.0)
    common = ["--backbone", "musicnn", "--musicnn", str(weights), "--epochs", "1", "--batch-size", "4",
              "--lr", "1e-3", "--cache-dir", str(tmp_path / "cache")]
    counts = dict(parameter_table(backbone="musicnn"))
    expected = {"none": "musicnn-BS", "noise": "musicnn-NRP", "cnn": "musicnn-CNNRP", "unet": "musicnn-URP"}
    for reprogrammer, mapper in [("none", "head"), ("noise", "head"), ("cnn", "head"), ("unet", "head"),
                                 ("unet", "fc"), ("none", "many-to-one")]:
        out = tmp_path / f"{reprogrammer}-{mapper}"
        result = _run(["train", str(data), "--reprogrammer", reprogrammer, "--mapper", mapper, "--out", str(out),
                       *common])
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert 0.0 <= metrics["test"]["macro_f1"] <= 1.0
        model, payload = load_model(out / "model.pt")
        assert model.cfg.backbone == "musicnn" and payload["backbone"]["kind"] == "musicnn"
        if mapper == "head":  # Table 1 counts with 20 labels; the head scales with the label count
            per_label = 201  # Linear(200 -> 1)
            assert model.num_trainable() == counts[expected[reprogrammer]] - 17 * per_label
    result = _run(["export", str(tmp_path / "unet-head" / "model.pt"), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "m.onnx")
    model, _ = load_model(tmp_path / "unet-head" / "model.pt")
    y = (0.1 * np.random.default_rng(2).standard_normal((2, MUSICNN_MEL.window_samples))).astype(np.float32)
    valid = np.array([MUSICNN_MEL.window_samples, 20000], np.int64)
    y[1, 20000:] = 0
    from mictag.model.fbank import Fbank

    with torch.no_grad():
        ref = model(Fbank(MUSICNN_MEL, normalize=False)(torch.from_numpy(y), torch.from_numpy(valid))).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"windows": y, "valid_samples": valid})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert meta["labels"] == ["drums", "guitar", "piano"] and meta["system"]["reprogrammer"] == "unet"


def test_vgg_variant_is_a_backbone_too(tmp_path):
    """musicnn's VGG (MTT_vgg) loads by its layer names, tags with the same MTT map, and exports."""
    from safetensors.numpy import save_file

    from mictag.export.onnx import read_metadata
    from mictag.export.zero_training import zero_training_tagger
    from mictag.model.fbank import Fbank
    from musicnn_fixtures import fake_vgg_tf

    save_file(fake_vgg_tf(), str(tmp_path / "vgg.safetensors"))
    result = _run(["export", "--backbone", "musicnn", "--musicnn", str(tmp_path / "vgg.safetensors"),
                   "--out", str(tmp_path / "v.onnx")])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "v.onnx")
    assert meta["system"]["musicnn"]["architecture"] == "vgg" and meta["labels"] == EXPRESSIBLE
    system, _ = zero_training_tagger(str(tmp_path / "vgg.safetensors"), backbone="musicnn")
    assert system.backbone.hidden_size == 256
    y = (0.1 * np.random.default_rng(4).standard_normal((2, MUSICNN_MEL.window_samples))).astype(np.float32)
    valid = np.full(2, MUSICNN_MEL.window_samples, np.int64)
    with torch.no_grad():
        ref = system(Fbank(MUSICNN_MEL, normalize=False)(torch.from_numpy(y), torch.from_numpy(valid))).numpy()
    got = ort.InferenceSession(str(tmp_path / "v.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"windows": y, "valid_samples": valid})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
