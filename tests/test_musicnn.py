"""musicnn: the TensorFlow checkpoint reader (exact round trips, the real file), the offline weight
install, and the PyTorch port against the original network."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from mictag.backbones.tf_bundle import read_bundle, read_index, write_bundle
from mictag.errors import CheckpointError
from musicnn_fixtures import fake_musicnn_tf, fake_musicnn_wheel


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv2d/kernel": rng.standard_normal((7, 38, 1, 204)).astype(np.float32),  # HWIO, as musicnn's
        "conv2d/bias": rng.standard_normal(204).astype(np.float32),
        "batch_normalization/moving_variance": rng.random(1).astype(np.float32),
        "dense/kernel": rng.standard_normal((500, 50)).astype(np.float64),
        "scalar": np.array(3.5, np.float32),
        "counts": rng.integers(-2**40, 2**40, size=(3, 4), dtype=np.int64),
        "half": rng.standard_normal(17).astype(np.float16),
        "mask": rng.random((2, 3)) > 0.5,
        "bytes": rng.integers(0, 255, size=9, dtype=np.uint8),
        "empty": np.zeros((0, 5), np.float32),
        "conv2d/kernel/Adam": rng.standard_normal((7, 38, 1, 204)).astype(np.float32),
        "conv2d/kernel/Adam_1": rng.standard_normal((7, 38, 1, 204)).astype(np.float32),
        "beta1_power": np.array(0.9, np.float32),
        "global_step": np.array(12345, np.int64),
    }


def test_round_trip_is_exact(tmp_path):
    tensors = _tensors()
    write_bundle(tmp_path / "model", tensors)
    back = read_bundle(tmp_path / "model", skip_optimizer=False)
    assert back.keys() == tensors.keys()
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape, name
        np.testing.assert_array_equal(back[name], array, err_msg=name)


def test_optimizer_state_is_skipped_by_default(tmp_path):
    write_bundle(tmp_path / "model", _tensors())
    names = set(read_bundle(tmp_path / "model"))
    assert "conv2d/kernel" in names and "counts" in names
    assert not {n for n in names if "Adam" in n or n in ("beta1_power", "global_step")}


def test_index_offsets_tile_the_data_file(tmp_path):
    tensors = _tensors()
    write_bundle(tmp_path / "m", tensors)
    spans = sorted((e["offset"], e["size"]) for e in read_index(tmp_path / "m.index").values())
    assert spans[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
    assert spans[-1][0] + spans[-1][1] == (tmp_path / "m.data-00000-of-00001").stat().st_size


def test_damaged_checkpoints_are_refused_clearly(tmp_path):
    write_bundle(tmp_path / "m", {"w": np.ones((4, 4), np.float32)})
    with pytest.raises(CheckpointError, match="does not exist"):
        read_bundle(tmp_path / "absent")
    data = tmp_path / "m.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:10])  # truncated data
    with pytest.raises(CheckpointError, match="do not hold"):
        read_bundle(tmp_path / "m")
    data.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        read_bundle(tmp_path / "m")
    (tmp_path / "x.index").write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="bad table magic"):
        read_index(tmp_path / "x.index")


@pytest.mark.slow
def test_reads_the_real_musicnn_checkpoint(tmp_path):
    """Downloads the musicnn 0.1.0 wheel from the package registry (29 MB; never installs it)."""
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "musicnn==0.1.0", "-d",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    if done.returncode:
        pytest.skip(f"cannot download musicnn: {done.stderr[-300:]}")
    wheel = next(tmp_path.glob("musicnn-0.1.0-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "w", [n for n in z.namelist() if n.startswith("musicnn/MTT_musicnn/")])
    prefix = tmp_path / "w" / "musicnn" / "MTT_musicnn" / ""
    index = read_index(str(prefix) + "/.index")
    spans = sorted((e["offset"], e["size"]) for e in index.values())
    assert spans[-1][0] + spans[-1][1] == (tmp_path / "w/musicnn/MTT_musicnn/.data-00000-of-00001").stat().st_size
    weights = read_bundle(str(prefix) + "/")
    assert len(index) == 150 and len(weights) == 64  # two thirds of the entries are Adam state
    assert weights["conv2d/kernel"].shape == (7, 38, 1, 204)
    assert all(np.all(v > 0) for k, v in weights.items() if k.endswith("moving_variance"))


def test_models_pull_musicnn_converts_a_wheel_and_verifies_it(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mictag.backbones import musicnn_weights
    from mictag.cli import main

    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home"))
    tensors = fake_musicnn_tf()
    wheel = fake_musicnn_wheel(tmp_path / "musicnn-0.1.0-py3-none-any.whl", lambda i: tensors)
    monkeypatch.setattr(musicnn_weights, "download_wheel", lambda dest, progress=False: wheel)  # the registry, offline
    result = CliRunner().invoke(main, ["models", "pull", "musicnn"])
    assert result.exit_code == 0, result.output
    assert "CC BY-NC-SA" in result.output and "MTT_musicnn: 64 tensors" in result.output
    assert "musicnn zero-training tagger ready" in result.output
    weights = musicnn_weights.load_weights("MTT_musicnn")
    for name, array in tensors.items():
        if "Adam" in name or name in ("beta1_power", "global_step"):
            assert name not in weights
        else:
            np.testing.assert_array_equal(weights[name], array)
    assert "tensorflow" not in sys.modules
    target = musicnn_weights.weights_path("MTT_musicnn")
    target.write_bytes(target.read_bytes()[:-1] + b"\0")  # damaged on disk
    with pytest.raises(Exception, match="recorded sha256"):
        musicnn_weights.load_weights("MTT_musicnn")


def test_missing_musicnn_weights_say_how_to_get_them(tmp_path, monkeypatch):
    from mictag.backbones import musicnn_weights
    from mictag.errors import ModelNotFoundError

    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="mictag models pull musicnn"):
        musicnn_weights.load_weights()


@pytest.fixture(scope="module")
def real_musicnn_weights(tmp_path_factory):
    """The real converted checkpoints: `mictag models pull musicnn` once (downloads the 29 MB wheel)."""
    from mictag.backbones import musicnn_weights

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MICTAG_HOME", str(tmp_path_factory.mktemp("home")))
        try:
            musicnn_weights.pull()
        except Exception as exc:  # offline
            pytest.skip(f"cannot fetch musicnn: {exc}")
        yield {model: musicnn_weights.load_weights(model) for model in ("MTT_musicnn", "MTT_vgg")}


@pytest.mark.slow
def test_pytorch_musicnn_reproduces_the_original_tensorflow_network(real_musicnn_weights):
    """Golden outputs of the original musicnn graph (TensorFlow, its own models.py, the real
    MTT_musicnn checkpoint; see experiments/musicnn_tf_golden.py) vs our port on the same
    weights, converted without TensorFlow. Downloads the 29 MB wheel."""
    from pathlib import Path

    import torch

    from mictag.backbones.musicnn import load_musicnn

    model = load_musicnn(real_musicnn_weights["MTT_musicnn"])
    golden = np.load(Path(__file__).parent / "data" / "musicnn_mtt_golden.npz")
    with torch.no_grad():
        x = torch.from_numpy(golden["x"])
        logits, penultimate = model(x).numpy(), model.forward_features(x).numpy()
    np.testing.assert_allclose(logits, golden["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(penultimate, golden["penultimate"], atol=1e-4, rtol=0)
    assert np.abs(golden["logits"]).max() > 1  # not a degenerate output


@pytest.mark.slow
def test_pytorch_vgg_reproduces_the_original_tensorflow_network(real_musicnn_weights):
    """The same for the package's MTT_vgg (golden logits and flattened last pooled map)."""
    from pathlib import Path

    import torch

    from mictag.backbones.musicnn import MusicnnVGG, load_musicnn

    model = load_musicnn(real_musicnn_weights["MTT_vgg"])
    assert isinstance(model, MusicnnVGG) and model.hidden_size == 256
    data = Path(__file__).parent / "data"
    x = np.load(data / "musicnn_mtt_golden.npz")["x"]
    golden = np.load(data / "musicnn_mtt_vgg_golden.npz")
    with torch.no_grad():
        logits, features = model(torch.from_numpy(x)).numpy(), model.forward_features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, golden["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(features, golden["features"], atol=1e-4, rtol=0)
    assert np.abs(golden["logits"]).max() > 1


def test_the_weights_digest_is_of_the_tensors_not_of_the_file(tmp_path):
    """safetensors writes its header's metadata in a varying order: two conversions of one wheel
    differ as files. The digest a trained model records must not."""
    import json
    import struct

    from mictag.backbones.musicnn_weights import tensor_digest
    from mictag.digest import file_digest
    from safetensors.numpy import save_file

    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(4, np.float32)}
    first = tmp_path / "first.safetensors"
    save_file(tensors, str(first), metadata={"source": "x", "licence": "y"})
    raw = first.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))  # the other order
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    second = tmp_path / "second.safetensors"
    second.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])
    assert file_digest(first) != file_digest(second)
    assert tensor_digest(first) == tensor_digest(second)
    changed = dict(tensors, a=np.full(4, 2.0, np.float32))
    save_file(changed, str(tmp_path / "changed.safetensors"))
    assert tensor_digest(tmp_path / "changed.safetensors") != tensor_digest(first)
    # The zero-training tagger is named by that digest too: a second `models pull musicnn` (the
    # same wheel converted again) finds the tagger it built, instead of building and naming another.
    from mictag.catalog import zero_training_path

    assert zero_training_path("musicnn", first) == zero_training_path("musicnn", second)
    assert zero_training_path("musicnn", first) != zero_training_path("musicnn", tmp_path / "changed.safetensors")
