"""Every fast CPU path, bounded against fp32 on real files in real formats: OpenVINO bf16, the torch
backend in bf16 with either attention kernel, and the static (calibrated) int8 variant. Each skips
where this CPU lacks the feature. Also: what auto picks shows in the summary, a scan on the ONNX
path imports no torch, and OpenVINO's telemetry stays off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mictag.cli import main
from mictag.cpu import cpu_info

BOUND = 0.03  # max |probability - fp32|, the bound auto holds every fast path to
HAS_BF16 = cpu_info().bf16 is not None
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16 (amx_bf16 / avx512_bf16)")
needs_openvino = pytest.mark.skipif(__import__("importlib").util.find_spec("openvino") is None,
                                    reason="OpenVINO is not installed")


@pytest.fixture(scope="module")
def models(tiny_ast_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fast")
    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--fbank-out", str(out / "f.onnx"),
                                       "--out", str(out / "w.onnx"), "--torch-out", str(out / "t.pt"),
                                       "--precision", "int8"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from library import make_library

    root = tmp_path_factory.mktemp("fast-lib") / "lib"
    expected = make_library(root)
    return root, [p for p, s in expected.items() if s == "ok"]


def _scores(model, root, rels, **kw) -> np.ndarray:
    from mictag import Tagger

    tagger = Tagger(model, **kw)
    return np.stack([tagger.tag(root / rel).scores for rel in rels]), tagger


@needs_openvino
@needs_bf16
@pytest.mark.parametrize("variant", ["f.onnx", "w.onnx"])
def test_openvino_bf16_is_within_the_bound_of_fp32(models, library, variant):
    root, rels = library
    fp32, _ = _scores(models / variant, root, rels, backend="ort-cpu")
    bf16, tagger = _scores(models / variant, root, rels, backend="openvino", precision="bf16")
    assert tagger.backend.runs_in.lower() == "bf16"  # OpenVINO did not quietly fall back to f32
    deviation = np.abs(bf16 - fp32).max()
    assert 0 < deviation <= BOUND, deviation


@needs_openvino
def test_openvino_fp32_equals_onnx_runtime(models, library):
    root, rels = library
    a, _ = _scores(models / "f.onnx", root, rels, backend="ort-cpu")
    b, _ = _scores(models / "f.onnx", root, rels, backend="openvino", precision="fp32")
    np.testing.assert_allclose(a, b, atol=1e-5)


@needs_bf16
@pytest.mark.parametrize("kernel", ["sdpa", "blocked"])
def test_torch_bf16_is_within_the_bound_of_fp32(models, library, kernel):
    from mictag.backbones.attention import set_kernel

    root, rels = library
    fp32, _ = _scores(models / "t.pt", root, rels, precision="fp32")
    from mictag import Tagger

    tagger = Tagger(models / "t.pt", precision="bf16")
    assert set_kernel(tagger.backend.module, kernel) == 2  # both blocks of the tiny AST
    bf16 = np.stack([tagger.tag(root / rel).scores for rel in rels])
    deviation = np.abs(bf16 - fp32).max()
    assert 0 < deviation <= BOUND, deviation


@pytest.mark.parametrize("dtype, atol", [("float32", 2e-6), ("bfloat16", 2e-2)])
def test_blocked_attention_equals_sdpa(dtype, atol):
    import torch

    from mictag.backbones.attention import blocked_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 203, 16, generator=g).to(getattr(torch, dtype)) for _ in range(3))
    for block in (1, 64, 203, 512):
        got = blocked_attention(q, k, v, 0.25, block)
        want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.25)
        assert (got.float() - want).abs().max() <= atol, block


def test_the_attention_kernel_is_measured_once_and_remembered(tmp_path):
    import torch

    from mictag.backbones.attention import KERNELS, fastest_kernel

    cache = tmp_path / "kernels.json"
    kernel, seconds = fastest_kernel(2, 70, 16, torch.float32, cache)
    assert kernel in KERNELS and set(seconds) == set(KERNELS) and kernel == min(seconds, key=seconds.get)
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["kernel"] == kernel
    entry["kernel"] = other = next(k for k in KERNELS if k != kernel)  # a remembered answer is used as it is
    cache.write_text(json.dumps({next(iter(json.loads(cache.read_text()))): entry}))
    assert fastest_kernel(2, 70, 16, torch.float32, cache)[0] == other


def test_static_int8_variant_is_calibrated_bounded_and_leaves_the_front_end_in_fp32(models, library):
    import onnx

    from mictag.metadata import int8_path, read_metadata

    for name in ("f.onnx", "w.onnx"):
        variant = int8_path(models / name)
        meta = read_metadata(variant)
        record = meta["int8"]
        assert meta["precision"] == "int8" and read_metadata(models / name)["precision"] == "fp32"
        assert "synthetic" in record["calibration"] and record["windows"] == 16
        assert 0 < record["max_abs_dp"] <= BOUND and 0 <= record["tag_changes"] <= 1
        graph = onnx.load(str(variant)).graph
        consumers = {}
        for node in graph.node:
            for i in node.input:
                consumers.setdefault(i, []).append(node)
        dequantized = [c for n in graph.node if n.op_type == "DequantizeLinear" for c in consumers.get(n.output[0], [])]
        # only the products read dequantised values (Shape reads no value); nothing else is requantised
        assert dequantized and {c.op_type for c in dequantized} - {"Shape"} <= {"MatMul", "Gemm", "Conv"}
        assert not any(c.name.startswith(("/fbank/", "/finish/")) for c in dequantized)
        assert any(n.op_type == "LayerNormalization" or n.op_type == "Softmax" for n in graph.node)
    root, rels = library
    fp32, _ = _scores(models / "f.onnx", root, rels, backend="ort-cpu")
    int8, tagger = _scores(models / "f.onnx", root, rels, backend="ort-cpu", precision="int8")
    assert tagger.backend.plan.model == int8_path(models / "f.onnx")
    assert 0 < np.abs(int8 - fp32).max() <= BOUND


@needs_openvino
def test_int8_on_openvino_is_within_the_bound_of_fp32(models, library):
    """The int8 variant on OpenVINO, with bf16 for the rest where the CPU has it (auto's path on
    CPUs with int8 dot products)."""
    root, rels = library
    fp32, _ = _scores(models / "f.onnx", root, rels, backend="ort-cpu")
    fast, tagger = _scores(models / "f.onnx", root, rels, backend="openvino", precision="int8")
    assert tagger.backend.plan.rest == ("bf16" if HAS_BF16 else "")
    assert tagger.backend.runs_in.lower() == ("bf16" if HAS_BF16 else "f32")
    assert 0 < np.abs(fast - fp32).max() <= BOUND


def test_a_stale_int8_variant_is_not_taken(models, tmp_path):
    import shutil

    from mictag.metadata import int8_path
    from mictag.runtime.engines.open import int8_variant

    assert int8_variant(models / "f.onnx") is not None
    shutil.copy(models / "w.onnx", tmp_path / "f.onnx")  # another model under the same name
    shutil.copy(int8_path(models / "f.onnx"), int8_path(tmp_path / "f.onnx"))
    assert int8_variant(tmp_path / "f.onnx") is None


def _scan_in_subprocess(models, lib, out, home, flags: str | None = None, extra=()):
    env = {**os.environ, "HOME": str(home), "MICTAG_HOME": str(home / "mictag")}
    if flags is not None:
        env["MICTAG_CPU_FLAGS"] = flags
    code = (
        "import sys\n"
        "from mictag.cli import main\n"
        f"args = ['scan', {str(lib)!r}, '--out', {str(out)!r}, '--model', {str(models / 'f.onnx')!r}, '--workers', '1', *{list(extra)!r}]\n"
        "try:\n    main(args)\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('modules:', 'torch' in sys.modules, 'openvino_telemetry' in sys.modules)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)


@pytest.mark.parametrize("flags, expect", [
    (None, None),  # this machine, as it is
    ("avx2 fma avx512f avx512_vnni", "openvino int8 (avx512_vnni; calibrated int8 within"),  # Cascade Lake
    ("avx2 fma", "ort-cpu fp32 (no native bf16 or int8)"),  # an AVX2-only EPYC
])
def test_the_choice_shows_in_the_summary_and_the_onnx_path_imports_no_torch(models, tmp_path, flags, expect,
                                                                            monkeypatch):
    from mictag.runtime.engines.open import plan_engine

    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home" / "mictag"))  # the scan's: no int8 verdict yet

    lib = tmp_path / "lib"
    lib.mkdir()
    sf.write(lib / "a.wav", 0.2 * np.random.default_rng(0).standard_normal(30000), 16000)
    done = _scan_in_subprocess(models, lib, tmp_path / "t.csv", tmp_path / "home", flags)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "modules: False False"  # no torch, no telemetry package
    summary = done.stderr.strip().splitlines()[-1]
    expect = expect or f"on {plan_engine(models / 'f.onnx').describe()}"
    assert expect in summary, summary
    assert not (tmp_path / "home" / "intel").exists()  # OpenVINO's telemetry wrote no client id


@needs_openvino
def test_openvino_is_imported_with_its_telemetry_off(tmp_path):
    code = ("import sys\nfrom mictag.runtime.engines.openvino import import_openvino\nov = import_openvino()\n"
            "import openvino.tools.ovc.telemetry_utils as t\n"
            "print('openvino_telemetry' in sys.modules, t.tm.__name__)\n"
            "import openvino_telemetry\nprint('importable afterwards')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "False openvino.tools.ovc.telemetry_stub"  # the tools' no-op stub took its place
    assert lines[1] == "importable afterwards"  # hidden only while mictag imported OpenVINO
    assert not (tmp_path / "intel").exists()


def _long_file(lib, seconds: float = 30.0):
    lib.mkdir(exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(1).standard_normal(t.size)).astype(np.float32)
    sf.write(lib / "long.flac", x, 16000)
    return lib / "long.flac"


def test_an_int8_variant_is_checked_as_it_runs_and_its_evidence_kept(models, tmp_path, monkeypatch):
    """A CPU with int8 units and no bf16 (faked): every Tagger checks the int8 variant against fp32
    as it goes; what the checks found is kept per library (here the Python API's)."""
    from mictag import Tagger, cpu
    from mictag.runtime.engines.trust import API_SCOPE, TrustedBackend, Verdicts, verdict_key
    from mictag.metadata import int8_path

    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MICTAG_CPU_FLAGS", "avx2 fma avx512f avx512_vnni")
    cpu.cpu_info.cache_clear()
    try:
        path = _long_file(tmp_path / "lib")
        first = Tagger(models / "f.onnx")
        assert isinstance(first.backend, TrustedBackend) and first.backend.plan.precision == "int8"
        checked = first.tag(path)
        assert checked.windows > 4 and first.backend.stats.checked >= 1
        exact = Tagger(models / "f.onnx", precision="fp32", backend="ort-cpu").tag(path)
        assert np.abs(checked.scores - exact.scores).max() <= BOUND and checked.tags == exact.tags
        key = verdict_key(int8_path(models / "f.onnx"), "openvino", "int8")
        entry = Verdicts().get(key, API_SCOPE)
        assert entry["windows_checked"] >= 1 and entry["max_abs_dp"] <= BOUND and not entry["refused"]
        assert isinstance(Tagger(models / "f.onnx").backend, TrustedBackend)  # never trusted unchecked
    finally:
        cpu.cpu_info.cache_clear()


def test_an_int8_variant_that_deviates_on_real_windows_is_left_and_refused_on_that_library(models, tmp_path,
                                                                                          monkeypatch):
    from mictag import Tagger, cpu
    from mictag.runtime.engines import trust

    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MICTAG_CPU_FLAGS", "avx2 fma avx512f avx512_vnni")
    monkeypatch.setattr(trust, "CHECK_LIMIT", 1e-7)  # nothing int8 stays this close
    cpu.cpu_info.cache_clear()
    try:
        path = _long_file(tmp_path / "lib")
        said = []
        got = Tagger(models / "f.onnx", on_message=said.append, library=tmp_path / "lib").tag(path).scores
        exact = Tagger(models / "f.onnx", precision="fp32").tag(path).scores
        np.testing.assert_allclose(got, exact, atol=1e-6)  # every window scored on the fp32 path in the end
        assert any("failed a check" in m and "the rest runs on openvino fp32" in m for m in said), said
        later = Tagger(models / "f.onnx", library=tmp_path / "lib")
        assert later.backend.plan.precision == "fp32" and "int8 refused on this library" in later.backend.description
        assert Tagger(models / "f.onnx", library=tmp_path / "other").backend.plan.precision == "int8"
    finally:
        cpu.cpu_info.cache_clear()
