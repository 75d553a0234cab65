"""The shipped musicnn-openmic20 tagger: its packaged record and weights fit its system; built
against a musicnn (here a random one laid out as the original), it scans with all 20 labels and
its own thresholds, equals the PyTorch system, and `--zero-training` keeps the 8-label map."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mictag.cli import main
from mictag.labels import OPENMIC_LABELS
from mictag.catalog import shipped

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from musicnn_fixtures import fake_musicnn_tf, fake_musicnn_wheel, package_fake_tagger  # noqa: E402

NAME = "musicnn-openmic20"


def test_the_packaged_tagger_fits_its_system_with_20_labels_and_thresholds():
    from safetensors.numpy import load_file

    from mictag.digest import file_digest
    from mictag.model.system import SystemConfig, build_system
    from mictag.train.checkpoint import trained_state

    assert NAME in shipped.available()
    record = shipped.provenance(NAME)
    assert tuple(record["labels"]) == OPENMIC_LABELS and len(record["thresholds"]) == 20
    assert all(0.0 < t < 1.0 for t in record["thresholds"])
    weights = shipped.weights_path(NAME)
    assert file_digest(weights) == record["weights"]["sha256"] and weights.stat().st_size < 1_000_000
    assert record["backbone"]["kind"] == "musicnn" and len(record["backbone"]["sha256"]) == 64
    assert record["corpus"]["recipe_digest"] and record["recipe"]["seed"] == record["seed"]
    assert record["metrics"]["test"]["macro_f1"] > 0.5 and "mean_validation_macro_f1" in record["selection"]
    cfg = SystemConfig.from_dict(record["system"])
    assert cfg.labels == OPENMIC_LABELS and cfg.backbone == "musicnn"
    expected = trained_state(build_system(cfg))  # a random backbone of the recorded shape
    tensors = load_file(str(weights))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    # A mapper, not a backbone: under a fifth of the frozen musicnn's 790k weights (v2's mapper on
    # the pooled features has 100,760; v1's head on the dense layer had 4,420).
    assert sum(v.size for v in tensors.values()) < 150_000


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    """A shipped tagger trained (here: seeded at random) against the fake MTT_musicnn that a fake
    wheel installs, packaged into a folder that stands for the package's."""
    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home"))
    wheel = fake_musicnn_wheel(tmp_path / "musicnn-0.1.0-py3-none-any.whl", lambda i: fake_musicnn_tf(seed=i))
    folder = tmp_path / "taggers"
    model, thresholds = package_fake_tagger(NAME, wheel, folder)
    monkeypatch.setattr(shipped, "TAGGERS_DIR", folder)
    return wheel, model, thresholds


def _library(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    sf.write(root / "a.flac", (0.2 * rng.standard_normal((16000 * 5, 2))).astype(np.float32), 16000)
    sf.write(root / "b.ogg", (0.2 * rng.standard_normal(22050 * 2)).astype(np.float32), 22050)
    (root / "broken.mp3").write_bytes(b"ID3" + bytes(300))
    return root


def test_pull_builds_it_and_scan_uses_it_with_20_labels(packaged, tmp_path):
    wheel, model, thresholds = packaged
    runner = CliRunner()
    result = runner.invoke(main, ["models", "pull", "musicnn", "--wheel", str(wheel), "--no-int8"])
    assert result.exit_code == 0 and f"{NAME} tagger ready" in result.output, result.output
    listed = runner.invoke(main, ["models", "list"]).output
    assert f"{NAME} tagger (musicnn default)" in listed and "corpus test macro F1" in listed
    assert "musicnn zero-training tagger, MTT_musicnn (--zero-training" in listed
    built = next((tmp_path / "home" / "models").glob(f"{NAME}-*.onnx"))
    stale = built.with_name(f"{NAME}-000000000000.onnx")  # an earlier mictag's weights, say
    stale.write_bytes(built.read_bytes())
    lines = runner.invoke(main, ["models", "list"]).output.splitlines()
    assert [ln for ln in lines if "older build" in ln and stale.name in ln]
    assert [ln for ln in lines if "(musicnn default)" in ln] == [ln for ln in lines if "(musicnn default)" in ln
                                                                 and built.name in ln] != []
    lib = _library(tmp_path / "lib")
    result = runner.invoke(main, ["scan", str(lib), "--backbone", "musicnn", "--out", str(tmp_path / "t.csv"),
                                  "--workers", "1", "--backend", "ort-cpu"])
    assert result.exit_code == 1, result.output  # the broken file fails, the rest are tagged
    with open(tmp_path / "t.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert list(rows["a.flac"])[7:-3] == list(OPENMIC_LABELS)
    for name in ("a.flac", "b.ogg"):
        probs = np.array([float(rows[name][label]) for label in OPENMIC_LABELS])
        tags = {t for t in rows[name]["tags"].split(";") if t}
        assert tags == {label for label, p, t in zip(OPENMIC_LABELS, probs, thresholds) if p >= t}  # its thresholds
    result = runner.invoke(main, ["scan", str(lib), "--backbone", "musicnn", "--zero-training", "--out",
                                  str(tmp_path / "z.csv"), "--workers", "1"])
    with open(tmp_path / "z.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[7:-3] == ["cello", "drums", "flute", "guitar", "piano", "synthesizer", "violin", "voice"]


def test_the_built_tagger_equals_the_pytorch_system(packaged):
    from mictag.metadata import read_metadata
    from mictag.model.fbank import FrameFinish
    from mictag.catalog import shipped_tagger

    _, model, thresholds = packaged
    path = shipped_tagger(NAME)
    meta = read_metadata(path)
    assert meta["labels"] == list(OPENMIC_LABELS) and np.allclose(meta["thresholds"], thresholds)
    assert meta["shipped"]["name"] == NAME and meta["metrics"]
    rng = np.random.default_rng(1)
    frames = (3 * rng.standard_normal((3, 187, 96)) + 1).astype(np.float32)
    valid = np.array([187, 187, 100], np.int64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"frames": frames, "valid_frames": valid})[0]
    finish = FrameFinish(model.cfg.fbank, normalize=model.cfg.normalize_input)
    with torch.inference_mode():
        want = torch.sigmoid(model.eval()(finish(torch.from_numpy(frames), torch.from_numpy(valid)))).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_another_musicnn_conversion_is_refused_and_zero_training_still_works(packaged, tmp_path):
    """The shipped weights were trained on one backbone: a musicnn with other weights must not be
    dressed in them."""
    (tmp_path / "other").mkdir()
    wheel = fake_musicnn_wheel(tmp_path / "other" / "musicnn-0.1.0-py3-none-any.whl",
                               lambda i: fake_musicnn_tf(seed=i + 10))
    runner = CliRunner()
    result = runner.invoke(main, ["models", "pull", "musicnn", "--wheel", str(wheel), "--no-int8"])
    assert result.exit_code == 0, result.output
    assert f"{NAME} not built" in result.output and "scan with --zero-training" in result.output


def test_without_the_ast_or_a_network_the_message_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip cannot fetch musicnn either
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    (tmp_path / "lib").mkdir()
    sf.write(tmp_path / "lib" / "a.wav", np.zeros(16000, np.float32), 16000)
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "lib"), "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    for way in ("`mictag models pull`", "--ast", "`mictag models pull musicnn`", "--wheel", "--model"):
        assert way in result.output, way


def test_the_summary_names_every_measured_test_set_and_skips_the_rest():
    record = {"version": 3, "system_name": "musicnn-BS", "labels": list(OPENMIC_LABELS), "trainable": 100760,
              "metrics": {"test": {"macro_f1": 0.72, "mAP": 0.591}, "cross_domain": {"macro_f1": 0.868, "mAP": 0.825},
                          "unseen_recordings": {"macro_f1": 0.802, "mAP": 0.564}}}
    line = shipped.summary(record)
    assert line.startswith("version 3, musicnn-BS, 20 labels, 100,760 trained parameters")
    assert "corpus test macro F1 0.720, mAP 0.591" in line and "real recordings macro F1 0.868, mAP 0.825" in line
    assert "recordings from unseen packages macro F1 0.802, mAP 0.564" in line
    assert "held-out" not in line  # not measured: not shown
