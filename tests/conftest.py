"""Shared fixtures: a tiny random AST in Hugging Face layout and small real data sets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import mictag  # noqa: F401  first: its import turns off the telemetry of what the tests load after it

sys.path.insert(0, str(Path(__file__).parent))


def write_tiny_hf_ast(path: Path, seed: int) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 max_length=128, num_mel_bins=128, num_labels=527, layer_norm_eps=1e-6)
    transformers.ASTForAudioClassification(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def own_mictag_home(tmp_path_factory):
    """Caches the tests write (compiled OpenVINO models, attention-kernel timings, int8 verdicts)
    go to a folder of the session's, never the user's; a test may still set its own."""
    import os

    saved = os.environ.get("MICTAG_HOME")
    os.environ["MICTAG_HOME"] = str(tmp_path_factory.mktemp("mictag-home"))
    yield
    if saved is None:
        os.environ.pop("MICTAG_HOME", None)
    else:
        os.environ["MICTAG_HOME"] = saved


@pytest.fixture(scope="session")
def tiny_ast_dir(tmp_path_factory) -> Path:
    """A random 2-layer, 32-wide AST over 128 frames (1.28 s windows), as `save_pretrained` writes it."""
    return write_tiny_hf_ast(tmp_path_factory.mktemp("tiny-ast"), seed=0)


@pytest.fixture(scope="session")
def tiny_tagger(tiny_ast_dir, tmp_path_factory) -> Path:
    """The tiny AST's zero-training tagger (fbank input), with its calibrated int8 variant beside it."""
    from click.testing import CliRunner

    from mictag.cli import main

    out = tmp_path_factory.mktemp("tiny-tagger") / "f.onnx"
    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--fbank-out", str(out), "--precision", "int8"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_openmic(tmp_path_factory) -> Path:
    from datasets import make_openmic

    return make_openmic(tmp_path_factory.mktemp("openmic"))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    from datasets import make_folder

    return make_folder(tmp_path_factory.mktemp("folder"))
