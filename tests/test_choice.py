"""The engine and precision chosen from the CPU's features (faked here), the engines installed and
the model; the CPU feature reader; and the refusals of impossible overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mictag.cpu import CpuInfo, _linux_cpuinfo, parse_flags
from mictag.runtime.engines.choice import INT8_BOUND, ChoiceError, Engines, Int8Variant, choose_engine

MODEL = Path("/models/tagger.onnx")
INT8 = Int8Variant(Path("/models/tagger.int8.onnx"), 0.012)
ORT = ("CPUExecutionProvider",)
ALL = Engines(openvino=True, ort_providers=ORT, torch=True)
NO_OPENVINO = Engines(openvino=False, ort_providers=ORT, torch=True)

# Flag sets of the CPUs mictag meets (as /proc/cpuinfo names them).
SAPPHIRE_RAPIDS = "avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8"
ZEN4 = "avx2 fma avx512f avx512_vnni avx512_bf16 avx_vnni"
CASCADE_LAKE = "avx2 fma avx512f avx512_vnni"
ALDER_LAKE = "avx2 fma avx_vnni"
ZEN3 = "avx2 fma"
GRAVITON3 = "fp asimd asimddp bf16 i8mm sve"


def cpu(flags: str) -> CpuInfo:
    return CpuInfo("test CPU", "x86_64", parse_flags(flags), 2)


def plan(flags: str, engines: Engines = ALL, kind: str = "onnx", int8: Int8Variant | None = None, **kw):
    return choose_engine(MODEL, kind, kw.pop("model_precision", "fp32"), cpu(flags), engines, int8=int8, **kw)


@pytest.mark.parametrize("flags, feature", [(SAPPHIRE_RAPIDS, "amx_bf16"), (ZEN4, "avx512_bf16"), (GRAVITON3, "bf16")])
def test_native_bf16_runs_openvino_in_bf16(flags, feature):
    p = plan(flags)
    assert (p.backend, p.precision, p.reason, p.model) == ("openvino", "bf16", feature, MODEL)
    assert p.describe() == f"openvino bf16 ({feature})" and not p.warnings and p.advice is None
    assert p.check  # a fast path mictag chose: checked against fp32 as the scan goes
    assert not plan(flags, precision="bf16").check  # asked for: runs as asked


@pytest.mark.parametrize("flags, units", [(SAPPHIRE_RAPIDS, "amx_int8, amx_bf16"), (ZEN4, "avx512_vnni, avx512_bf16"),
                                          (GRAVITON3, "i8mm, bf16")])
def test_int8_and_bf16_units_run_the_int8_variant_with_bf16_elsewhere(flags, units):
    p = plan(flags, int8=INT8)
    assert (p.backend, p.precision, p.rest, p.model) == ("openvino", "int8", "bf16", INT8.path)
    assert p.describe() == f"openvino int8+bf16 ({units}; calibrated int8 within 0.012 of fp32 on synthetic windows)"
    assert p.check  # checked against fp32 as the scan goes, every scan
    assert plan(flags, int8=Int8Variant(INT8.path, INT8_BOUND * 2)).precision == "bf16"  # out of bound at export


def test_a_fast_path_refused_on_a_library_is_passed_over_for_the_next():
    """int8 refused there: bf16; bf16 refused too: fp32; each says why. Other libraries are not affected."""
    refusals = {}

    def refused(model, backend, precision, rest):
        return refusals.get(precision)

    assert plan(ZEN4, int8=INT8, refused=refused).precision == "int8"
    refusals["int8"] = "a checked window was 0.081 from fp32"
    p = plan(ZEN4, int8=INT8, refused=refused)
    assert (p.precision, p.check) == ("bf16", True) and "int8 refused on this library: a checked window was 0.081" in p.reason
    refusals["bf16"] = "not faster than fp32 here"
    p = plan(ZEN4, int8=INT8, refused=refused)
    assert (p.backend, p.precision, p.check) == ("openvino", "fp32", False)
    assert "int8 refused" in p.reason and "bf16 refused on this library: not faster" in p.reason
    p = plan(ZEN4, kind="torch", refused=refused)  # the torch artifact's bf16 too
    assert (p.precision, p.check) == ("fp32", False) and "bf16 refused" in p.reason
    assert plan(ZEN4, kind="torch", cuda=True, refused=refused).precision == "bf16"  # GPUs are not checked


def test_without_openvino_bf16_cpus_fall_back_and_say_what_to_install():
    p = plan(ZEN4, NO_OPENVINO)
    assert (p.backend, p.precision) == ("ort-cpu", "fp32")
    assert "pip install openvino" in p.advice and "avx512_bf16" in p.advice
    p = plan(ZEN4, NO_OPENVINO, int8=INT8)  # the next fastest: the calibrated int8 variant
    assert (p.backend, p.precision, p.model, p.rest) == ("ort-cpu", "int8", INT8.path, "") and p.advice


@pytest.mark.parametrize("flags, feature", [(CASCADE_LAKE, "avx512_vnni"), (ALDER_LAKE, "avx_vnni")])
def test_vnni_without_bf16_takes_the_int8_variant_within_its_bound(flags, feature):
    p = plan(flags, int8=INT8)
    assert (p.backend, p.precision, p.rest, p.model) == ("openvino", "int8", "", INT8.path)
    assert plan(flags, NO_OPENVINO, int8=INT8).backend == "ort-cpu"
    assert feature in p.reason and "0.012" in p.reason
    too_far = Int8Variant(INT8.path, INT8_BOUND + 0.01)
    p = plan(flags, int8=too_far)
    assert p.precision == "fp32" and p.model == MODEL and "within" in p.reason
    assert plan(flags).precision == "fp32"  # no variant at all


def test_avx2_only_keeps_onnx_runtime_fp32():
    p = plan(ZEN3, int8=INT8)  # no int8 dot products: int8 would gain little
    assert (p.backend, p.precision) == ("ort-cpu", "fp32") and p.reason == "no native bf16 or int8"
    assert plan(ZEN3, NO_OPENVINO).describe() == "ort-cpu fp32 (no native bf16 or int8)"


def test_avx512_without_bf16_or_variant_runs_openvino_fp32():
    p = plan(CASCADE_LAKE)
    assert (p.backend, p.precision) == ("openvino", "fp32") and "AVX-512" in p.reason
    assert plan(CASCADE_LAKE, NO_OPENVINO).backend == "ort-cpu"


def test_gpu_providers_come_first():
    gpu = Engines(openvino=True, ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert plan(SAPPHIRE_RAPIDS, gpu).backend == "ort-cuda"
    trt = Engines(ort_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    assert plan(ZEN3, trt).backend == "ort-trt"
    assert plan(ZEN3, kind="engine").describe() == "tensorrt fp16 (a TensorRT engine)"


def test_torch_artifact_precision_follows_the_cpu_and_cuda():
    assert plan(ZEN4, kind="torch").describe() == "torch bf16 (avx512_bf16)" and plan(ZEN4, kind="torch").check
    assert plan(ZEN3, kind="torch").describe() == "torch fp32 (no native bf16)"
    assert plan(ZEN3, kind="torch", cuda=True).describe() == "torch bf16 (CUDA)"


def test_overrides():
    assert plan(ZEN4, precision="fp32").describe() == "openvino fp32 (asked)"
    assert plan(ZEN3, precision="fp32").backend == "ort-cpu"
    p = plan(CASCADE_LAKE, precision="int8", int8=INT8)
    assert (p.backend, p.precision, p.model) == ("openvino", "int8", INT8.path)
    p = plan(ZEN4, backend="ort-cpu", precision="int8", int8=INT8)
    assert (p.backend, p.precision, p.model, p.rest) == ("ort-cpu", "int8", INT8.path, "")
    assert plan(ZEN4, backend="ort-cpu").describe() == "ort-cpu fp32 (the backend's precision)"
    assert plan(ZEN4, backend="openvino", precision="fp32").precision == "fp32"
    assert plan(ZEN3, backend="openvino").describe() == "openvino fp32 (no native bf16)"
    assert plan(ZEN4, kind="torch", backend="torch", precision="fp32").precision == "fp32"
    # an int8 or fp16 file runs as it is
    assert plan(ZEN3, model_precision="int8").describe() == "openvino int8 (the model file is int8)"
    assert plan(ZEN3, NO_OPENVINO, model_precision="int8").describe() == "ort-cpu int8 (the model file is int8)"
    assert plan(ZEN4, model_precision="fp16").describe() == "ort-cpu fp16 (the model file is fp16)"
    assert not plan(ZEN4, model_precision="fp16").warnings


def test_emulated_precisions_are_run_when_asked_but_warned():
    p = plan(ZEN3, precision="bf16")
    assert (p.backend, p.precision) == ("openvino", "bf16")
    assert any("emulated" in w for w in p.warnings)
    assert any("emulated" in w for w in plan(ZEN3, kind="torch", precision="fp16").warnings)
    assert not plan(ZEN4, precision="bf16").warnings


@pytest.mark.parametrize("kw, needle", [
    (dict(backend="ort-cpu", precision="bf16"), "no bf16 kernels"),
    (dict(precision="bf16", engines=NO_OPENVINO), "needs OpenVINO"),
    (dict(precision="int8"), "has no int8 variant"),
    (dict(backend="ort-cpu", precision="fp16"), "fp16 only from an fp16 model"),
    (dict(model_precision="int8", precision="fp32"), "it runs in int8"),
    (dict(precision="fp8"), "unknown precision"),
    (dict(backend="tensorrt", precision="bf16"), "cannot run a model in bf16"),
])
def test_impossible_overrides_are_refused_with_a_reason(kw, needle):
    engines = kw.pop("engines", ALL)
    with pytest.raises(ChoiceError, match=needle):
        plan(ZEN4, engines, **kw)


def test_cpuinfo_parsing_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 amx_bf16 avx512_vnni\n"
    model, flags = _linux_cpuinfo(x86 + x86.replace("amx_bf16", ""))
    assert model == "Intel(R) Xeon(R) Platinum 8480+" and {"amx_bf16", "avx512_vnni"} <= flags
    info = CpuInfo(model, "x86_64", frozenset(flags), 2)
    assert (info.bf16, info.int8) == ("amx_bf16", "avx512_vnni")
    _, arm = _linux_cpuinfo("processor\t: 0\nFeatures\t: fp asimd asimddp bf16 i8mm\nCPU part\t: 0xd40\n")
    arm_info = CpuInfo("arm", "aarch64", frozenset(arm), 2)
    assert (arm_info.bf16, arm_info.int8) == ("bf16", "i8mm")
    assert "no native bf16" in cpu(ZEN3).describe() and "int8 avx_vnni" in cpu(ALDER_LAKE).describe()


def test_this_machine_is_read_and_the_flags_can_be_faked(tmp_path):
    """`mictag info` names this CPU's features, and MICTAG_CPU_FLAGS changes what it sees."""
    import os

    env = {**os.environ, "MICTAG_HOME": str(tmp_path)}
    real = subprocess.run([sys.executable, "-m", "mictag", "info"], capture_output=True, text=True, env=env, timeout=120)
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines()[1].startswith("cpu: ")
    fake = subprocess.run([sys.executable, "-m", "mictag", "info"], capture_output=True, text=True, timeout=120,
                          env={**env, "MICTAG_CPU_FLAGS": "avx2 fma avx512_bf16"})
    assert "bf16 avx512_bf16, no int8 dot products" in fake.stdout.splitlines()[1]
