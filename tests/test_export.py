"""Export: one ONNX graph equal to PyTorch (ONNX Runtime CPU), self-describing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mictag import frontends as F
from mictag.cli import main
from mictag.errors import CheckpointError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def trained(tiny_openmic, tiny_ast_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    result = CliRunner().invoke(main, ["train", str(tiny_openmic), "--ast", str(tiny_ast_dir), "--reprogrammer", "unet",
                                       "--epochs", "1", "--out", str(out / "run"), "--cache-dir", str(out / "cache")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["export", str(out / "run" / "model.pt"), "--out", str(out / "m.onnx"),
                                       "--fbank-out", str(out / "m-fbank.onnx")])
    assert result.exit_code == 0, result.output
    return out


def _windows(fb, n_items, seed):
    rng = np.random.default_rng(seed)
    w = (0.3 * rng.standard_normal((n_items, fb.window_samples))).astype(np.float32)
    valid = np.full(n_items, fb.window_samples, np.int64)
    valid[1::2] = rng.integers(100, fb.window_samples, size=len(valid[1::2]))  # short (padded) windows
    for i, v in enumerate(valid):
        w[i, v:] = 0
    return w, valid


def test_onnx_equals_pytorch_for_full_and_short_windows_at_batch_1_3_8(trained):
    from mictag.train.checkpoint import load_model

    system, _ = load_model(trained / "run" / "model.pt")
    fb = system.cfg.fbank
    session = ort.InferenceSession(str(trained / "m.onnx"), providers=["CPUExecutionProvider"])
    w, valid = _windows(fb, 8, 0)
    from mictag.model.fbank import Fbank

    front = Fbank(fb, normalize=system.cfg.normalize_input)
    with torch.no_grad():
        ref = torch.sigmoid(system(front(torch.from_numpy(w), torch.from_numpy(valid)))).numpy()
    alone = []
    for batch in (1, 3, 8):
        got = np.concatenate([session.run(["probabilities"], {"windows": w[i:i + batch], "valid_samples": valid[i:i + batch]})[0]
                              for i in range(0, 8, batch)])
        assert np.abs(got - ref).max() <= 1e-4
        alone.append(got)
    np.testing.assert_allclose(alone[0], alone[2], atol=1e-5)  # an item's result does not depend on its batch


def test_fbank_variant_equals_waveform_variant(trained):
    wave = ort.InferenceSession(str(trained / "m.onnx"), providers=["CPUExecutionProvider"])
    fbank = ort.InferenceSession(str(trained / "m-fbank.onnx"), providers=["CPUExecutionProvider"])
    from mictag.export.onnx import read_metadata

    fb = F.FbankConfig.from_dict(read_metadata(trained / "m-fbank.onnx")["features"])
    w, valid = _windows(fb, 3, 1)
    frames = np.stack([F.pad_frames(F.log_mel(w[i, :valid[i]], fb), fb)[0] for i in range(3)])
    nframes = F.frame_count(valid, fb).astype(np.int64)
    a = wave.run(["probabilities"], {"windows": w, "valid_samples": valid})[0]
    b = fbank.run(["probabilities"], {"frames": frames, "valid_frames": nframes})[0]
    assert np.abs(a - b).max() <= 1e-4


def test_metadata_is_complete_and_missing_metadata_is_refused(trained, tmp_path):
    import onnx

    from mictag.export.onnx import read_metadata

    meta = read_metadata(trained / "m.onnx")
    assert meta["labels"][0] == "accordion" and len(meta["thresholds"]) == 20
    assert meta["sample_rate"] == 16000 and meta["window_samples"] == F.samples_for_frames(128, F.AST_FBANK)
    assert meta["backbone"]["sha256"] and meta["recipe"]["name"] == "paper" and meta["mapper"] == "head"
    assert meta["variant"] == "waveform" and meta["mictag_version"]
    bare = onnx.load(str(trained / "m.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(CheckpointError, match="no mictag metadata"):
        read_metadata(tmp_path / "bare.onnx")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "absent.onnx")


def _original_layout(hf_dir, path):
    """An original-layout checkpoint from an HF directory (the test-side inversion of the key table)."""
    from safetensors.torch import load_file
    from test_ast_checkpoints import hf_disk_to_original

    torch.save(hf_disk_to_original(load_file(str(hf_dir / "model.safetensors")), depth=2), path)
    return path


def test_zero_training_tagger_from_hf_dir_equals_max_over_audioset_sources(tiny_ast_dir, tmp_path):
    from transformers import ASTForAudioClassification

    from mictag.export.onnx import read_metadata
    from mictag.labels import OPENMIC_LABELS, openmic_audioset_map

    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--mapper", "many-to-one",
                                       "--out", str(tmp_path / "zt.onnx")])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "zt.onnx")
    assert meta["zero_training"] and meta["thresholds"] == [0.5] * 20
    fb = F.FbankConfig.from_dict(meta["features"])
    w, valid = _windows(fb, 2, 3)
    got = ort.InferenceSession(str(tmp_path / "zt.onnx"), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"windows": w, "valid_samples": valid})[0]
    # Independent reference: transformers' AST on our fbank, then max of the mapped AudioSet probabilities.
    hf = ASTForAudioClassification.from_pretrained(tiny_ast_dir).eval()
    x = torch.from_numpy(np.stack([F.model_input(w[i, :valid[i]], fb) for i in range(2)]))
    with torch.no_grad():
        probs = torch.sigmoid(hf(x).logits).numpy()
    table = openmic_audioset_map()
    expect = np.stack([probs[:, list(table[label])].max(axis=1) for label in OPENMIC_LABELS], axis=1)
    assert np.abs(got - expect).max() <= 1e-4


def test_zero_training_tagger_from_original_checkpoint_and_int8(tiny_ast_dir, tmp_path):
    pth = _original_layout(tiny_ast_dir, tmp_path / "audioset_10_10_0.4593.pth")
    # The original layout carries no config: a tiny one is refused with the key/shape listing.
    result = CliRunner().invoke(main, ["export", "--ast", str(pth), "--out", str(tmp_path / "o.onnx")])
    assert result.exit_code == 2 and "patch grid" in result.output and len(result.output.splitlines()) == 1



@pytest.mark.parametrize("precision, tolerance", [("fp16", 2e-2), ("int8-dynamic", 1e-1)])
def test_reduced_precision_variants_report_and_respect_their_deviation(tiny_ast_dir, tmp_path, precision, tolerance):
    import onnx
    import re

    from mictag.export.onnx import read_metadata
    from mictag.metadata import int8_path

    fp32, low = tmp_path / "fp32.onnx", tmp_path / f"{precision}.onnx"
    for path, p in ((fp32, "fp32"), (low, precision)):
        result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--precision", p, "--out", str(path)])
        assert result.exit_code == 0, result.output
    reported = float(re.search(rf"{precision} deviation from fp32: max \|dp\| = (\S+)", result.output)[1])
    assert read_metadata(low)["precision"] == precision
    types = {init.data_type for init in onnx.load(str(low)).graph.initializer}
    assert (onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.INT8) in types
    assert not int8_path(low).exists()  # written in place: only --precision int8 writes a sibling
    from mictag.runtime.engines.open import plan_engine

    assert plan_engine(low).precision == ("int8" if precision.startswith("int8") else precision)
    fb = F.FbankConfig.from_dict(read_metadata(low)["features"])
    w, valid = _windows(fb, 4, 5)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"windows": w, "valid_samples": valid})[0]
    deviation = np.abs(run(fp32) - run(low)).max()
    assert 0 < deviation <= tolerance and 0 < reported <= tolerance


@pytest.mark.parametrize("args, needle", [
    (["--ast", "/no/such.pth", "--out", "x.onnx"], "/no/such.pth not found"),
    (["--out", "x.onnx"], "give a trained MODEL, or --ast"),
    (["/no/model.pt", "--out", "x.onnx"], "does not exist"),
])
def test_export_refusals_are_one_line(args, needle, tmp_path):
    result = CliRunner().invoke(main, ["export", *args])
    assert result.exit_code == 2 and needle in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_torch_artifact_equals_onnx_and_runs_in_bf16(trained, tmp_path):
    from mictag.export.onnx import read_metadata
    from mictag.model.artifact import load_torch_artifact

    result = CliRunner().invoke(main, ["export", str(trained / "run" / "model.pt"), "--torch-out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    module, meta = load_torch_artifact(tmp_path / "m.pt")
    assert meta == read_metadata(trained / "m.onnx")  # the same metadata as the ONNX export
    fb = F.FbankConfig.from_dict(meta["features"])
    w, valid = _windows(fb, 3, 7)
    onnx_p = ort.InferenceSession(str(trained / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"windows": w, "valid_samples": valid})[0]
    with torch.inference_mode():
        p32 = module(torch.from_numpy(w), torch.from_numpy(valid))[0].numpy()
        bf16, _ = load_torch_artifact(tmp_path / "m.pt", precision="bf16")
        p16 = bf16(torch.from_numpy(w), torch.from_numpy(valid))[0].numpy()
    assert np.abs(p32 - onnx_p).max() <= 1e-4
    assert np.abs(p16 - onnx_p).max() <= 5e-2


def test_tensorrt_without_tensorrt_is_one_clear_sentence(trained, tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        if hasattr(tensorrt, "Builder"):
            pytest.skip("TensorRT is installed here: the engine test covers it")
    except Exception:
        pass
    result = CliRunner().invoke(main, ["export", str(trained / "m.onnx"), "--engine", str(tmp_path / "m.engine")])
    assert result.exit_code == 2 and "needs TensorRT and an NVIDIA GPU" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_equals_onnx_within_fp16(trained, tmp_path):
    trt = pytest.importorskip("tensorrt")
    if not hasattr(trt, "Builder") or not torch.cuda.is_available():
        pytest.skip("needs TensorRT and a CUDA GPU")
    from mictag.export.onnx import read_metadata
    from mictag.runtime.engines.tensorrt import metadata_path
    from mictag.runtime.engines.tensorrt import EngineRunner, load_engine

    engine = tmp_path / "m.engine"
    result = CliRunner().invoke(main, ["export", str(trained / "m.onnx"), "--engine", str(engine),
                                       "--engine-batch", "1", "4", "8"])
    assert result.exit_code == 0, result.output
    meta = read_metadata(trained / "m.onnx")
    assert json_load(metadata_path(engine))["labels"] == meta["labels"]
    fb = F.FbankConfig.from_dict(meta["features"])
    w, valid = _windows(fb, 3, 9)
    ref = ort.InferenceSession(str(trained / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"windows": w, "valid_samples": valid})[0]
    got = EngineRunner(load_engine(engine), outputs=None).run({"windows": w, "valid_samples": valid})["probabilities"]
    assert np.abs(got - ref).max() <= 2e-2


def json_load(path):
    import json

    return json.loads(path.read_text())
