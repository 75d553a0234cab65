"""Which engine and precision a model runs in here: the fastest path whose deviation from fp32 is
bounded, chosen from the model's kind, the engines installed and the CPU's features. A fast path
that auto takes (int8, or bf16 on a CPU) is checked against fp32 as the scan goes
(:mod:`mictag.runtime.engines.trust`): the plan says so (``check``), and a fast path refused for this
library (a failed check, or no faster here) is passed over for the next one.

On a CPU (measured side by side, full-size AST, ``benchmarks/engine.py``):
- int8 dot products (``amx_int8``, ``avx512_vnni``, ``avx_vnni``, Arm ``i8mm``) and the model's
  calibrated int8 variant (``<model>.int8.onnx``, from ``mictag export --precision int8`` or
  ``mictag models pull``) within ``INT8_BOUND`` of fp32: that variant on OpenVINO, with bf16 for
  what stays unquantised where the CPU has native bf16 ("int8+bf16"); on ONNX Runtime without
  OpenVINO.
- native bf16 (``amx_bf16``, ``avx512_bf16``, Arm ``bf16``): OpenVINO in bf16 on the exported
  ONNX graph. Its fused attention and bf16 matmuls reach the matrix units, it needs no torch, and
  its compiled-model cache makes start-up a fraction of a second. Emulated bf16 is hundreds of
  times slower than fp32, so bf16 is never chosen without native support.
- otherwise fp32: OpenVINO where the CPU has AVX-512 (faster than ONNX Runtime there), else
  ONNX Runtime (on AVX2, OpenVINO's matmuls run the same MLAS kernels and gain nothing).
GPUs as before: TensorRT, then ONNX Runtime's TensorRT and CUDA providers; the torch artifact on
CUDA in bf16. ``precision`` (fp32|bf16|fp16|int8) and ``backend`` override the choice.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mictag.cpu import CpuInfo
from mictag.errors import MictagError
from mictag.metadata import int8_path
from mictag.runtime.engines.trust import CHECK_LIMIT

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# max |probability - fp32| an int8 variant may have at export (on synthetic windows) for auto to try
# it: what its checks on real audio will hold it to, and real audio is seldom closer than synthetic.
INT8_BOUND = CHECK_LIMIT
ORT_PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                 "ort-trt": "TensorrtExecutionProvider"}
# What each engine can run a model in (int8 and fp16 ONNX are properties of the file, not the engine).
ENGINE_PRECISIONS = {"openvino": ("fp32", "bf16", "fp16", "int8"), "ort-cpu": ("fp32", "fp16", "int8"),
                     "ort-cuda": ("fp32", "fp16"), "ort-trt": ("fp32", "fp16"),
                     "tensorrt": ("fp16", "fp32"), "torch": ("fp32", "bf16", "fp16")}
INSTALL_OPENVINO = "pip install openvino"


class ChoiceError(MictagError):
    """A backend or precision that cannot run this model here."""


@dataclass(frozen=True)
class Engines:
    """The inference engines this environment has (found without importing torch)."""

    openvino: bool = False
    ort_providers: tuple[str, ...] = ()
    torch: bool = False
    tensorrt: bool = False

    @classmethod
    def detect(cls) -> "Engines":
        providers: tuple[str, ...] = ()
        if importlib.util.find_spec("onnxruntime") is not None:
            try:
                import onnxruntime

                providers = tuple(onnxruntime.get_available_providers())
            except Exception:  # a broken installation counts as absent
                providers = ()
        return cls(openvino=importlib.util.find_spec("openvino") is not None, ort_providers=providers,
                   torch=importlib.util.find_spec("torch") is not None,
                   tensorrt=importlib.util.find_spec("tensorrt") is not None)

    def has(self, backend: str) -> bool:
        if backend == "openvino":
            return self.openvino
        if backend in ORT_PROVIDERS:
            return ORT_PROVIDERS[backend] in self.ort_providers
        return {"torch": self.torch, "tensorrt": self.tensorrt}.get(backend, False)


@dataclass(frozen=True)
class Int8Variant:
    """A calibrated int8 sibling of an fp32 ONNX model and its deviation measured at export (on
    synthetic windows). Real audio can be further off: auto checks it as the scan goes."""

    path: Path
    max_abs_dp: float

    @property
    def usable(self) -> bool:
        return self.max_abs_dp <= INT8_BOUND

    def evidence(self) -> str:
        return f"calibrated int8 within {self.max_abs_dp:.3f} of fp32 on synthetic windows"


# (model file, backend, precision, rest) -> why that fast path is refused here, or None
Refusals = Callable[[Path, str, str, str], "str | None"]


def _no_refusals(model: Path, backend: str, precision: str, rest: str) -> None:
    return None


@dataclass(frozen=True)
class EnginePlan:
    backend: str
    precision: str
    reason: str
    model: Path
    advice: str | None = None  # what to install for a faster path (said once)
    warnings: tuple[str, ...] = field(default_factory=tuple)
    rest: str = ""  # with an int8 model on OpenVINO: the precision of what stays unquantised
    check: bool = False  # a fast path auto chose: checked against fp32 as the scan goes (see trust)

    def describe(self) -> str:
        return f"{self.backend} {self.precision}{'+' + self.rest if self.rest else ''} ({self.reason})"


def _cpu_plan(model: Path, cpu: CpuInfo, engines: Engines, int8: Int8Variant | None,
              refused: Refusals = _no_refusals) -> EnginePlan:
    """auto on a CPU, for an fp32 ONNX model."""
    advice = None
    if not engines.openvino and (cpu.bf16 or cpu.int8):
        advice = (f"{INSTALL_OPENVINO}: this CPU has {cpu.bf16 or cpu.int8}, and OpenVINO runs the model "
                  f"{'in bf16' if cpu.bf16 else 'in int8'}, 2-4x faster than fp32")
    passed_over = []
    if cpu.int8 and int8 is not None and int8.usable:
        backend = "openvino" if engines.openvino else "ort-cpu"
        rest = "bf16" if backend == "openvino" and cpu.bf16 else ""
        why_not = refused(int8.path, backend, "int8", rest)
        if why_not is None:
            units = f"{cpu.int8}, {cpu.bf16}" if rest else cpu.int8
            return EnginePlan(backend, "int8", f"{units}; {int8.evidence()}", int8.path, advice, rest=rest, check=True)
        passed_over.append(f"int8 refused on this library: {why_not}")
    if cpu.bf16 and engines.openvino:
        why_not = refused(model, "openvino", "bf16", "")
        if why_not is None:
            return EnginePlan("openvino", "bf16", "; ".join([cpu.bf16, *passed_over]), model, check=True)
        passed_over.append(f"bf16 refused on this library: {why_not}")
    if passed_over:
        why = "; ".join(passed_over)
    elif cpu.bf16:
        why = f"{cpu.bf16}, but OpenVINO is not installed"
    elif cpu.int8:
        why = f"no native bf16; {cpu.int8}, but no int8 variant within {INT8_BOUND} of fp32"
    else:
        why = "no native bf16 or int8"
    if engines.openvino and "avx512f" in cpu.flags:
        return EnginePlan("openvino", "fp32", f"{why}; OpenVINO on AVX-512", model, advice)
    return EnginePlan("ort-cpu", "fp32", why, model, advice)


def _onnx_backend(precision: str, model_precision: str, cpu: CpuInfo, engines: Engines) -> str:
    """The engine for an ONNX model when only the precision is asked."""
    gpu = next((b for b in ("ort-trt", "ort-cuda") if engines.has(b)), None)
    if precision in ("bf16", "fp16") and model_precision == "fp32":
        if gpu and precision == "fp16":
            return gpu
        if engines.openvino:
            return "openvino"
        raise ChoiceError(f"{precision} on the CPU needs OpenVINO ({INSTALL_OPENVINO}): ONNX Runtime's CPU provider "
                          f"has no {precision} kernels")
    if precision == "int8":
        return "openvino" if engines.openvino else "ort-cpu"
    if gpu:
        return gpu
    if model_precision == "fp16":
        return "ort-cpu"  # an fp16 file is meant for a GPU; ONNX Runtime runs it here as it always did
    return "openvino" if engines.openvino and "avx512f" in cpu.flags else "ort-cpu"


def _default_precision(backend: str, model_precision: str, cpu: CpuInfo, cuda: bool) -> tuple[str, str]:
    """(precision, reason) an explicitly chosen backend runs in when no precision is asked."""
    if model_precision in ("int8", "fp16"):
        return model_precision, f"the model file is {model_precision}"
    if backend == "tensorrt":
        return "fp16", "a TensorRT engine"
    if backend == "torch" and cuda:
        return "bf16", "CUDA"
    if backend in ("openvino", "torch") and cpu.bf16:
        return "bf16", cpu.bf16
    return "fp32", "no native bf16" if backend in ("openvino", "torch") else "the backend's precision"


def choose_engine(model: str | Path, kind: str, model_precision: str, cpu: CpuInfo, engines: Engines,
                  backend: str = "auto", precision: str | None = None, int8: Int8Variant | None = None,
                  cuda: bool = False, refused: Refusals = _no_refusals) -> EnginePlan:
    """The plan for ``model`` (an ``onnx``, ``engine`` or ``torch`` file): ``backend`` and
    ``precision`` as asked, else the fastest bounded path here.

    ``model_precision`` is what the file holds (fp32, fp16 or int8); ``int8`` the int8 sibling
    of an fp32 ONNX model, if there is one; ``cuda`` whether torch has a CUDA device (asked only
    for a torch artifact, where torch is imported anyway); ``refused`` why a fast path is refused
    on the library being scanned (checks that failed there before).

    A precision below fp32 that mictag chose (no ``precision`` asked) on a CPU is a fast path: the
    plan's ``check`` says it is checked against fp32 as it runs. A precision the user asked for
    runs as asked."""
    model = Path(model)
    if precision is not None and precision not in PRECISIONS:
        raise ChoiceError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if backend == "auto":
        backend = {"engine": "tensorrt", "torch": "torch"}.get(kind, "")
        if not backend:  # an ONNX model
            if precision is None and model_precision == "fp32":
                gpu = next((b for b in ("ort-trt", "ort-cuda") if engines.has(b)), None)
                plan = (EnginePlan(gpu, "fp32", f"ONNX Runtime's {ORT_PROVIDERS[gpu]}", model) if gpu
                        else _cpu_plan(model, cpu, engines, int8, refused))
                return _checked(plan, cpu, cuda)
            backend = _onnx_backend(precision or model_precision, model_precision, cpu, engines)
    chosen = precision is None
    if chosen:
        precision, reason = _default_precision(backend, model_precision, cpu, cuda)
        if _on_cpu(backend, cuda) and precision == "bf16" and model_precision == "fp32":
            why_not = refused(model, backend, "bf16", "")
            if why_not is not None:
                precision, reason = "fp32", f"bf16 refused on this library: {why_not}"
    else:
        reason = "asked"
    if precision not in ENGINE_PRECISIONS.get(backend, ()):
        raise ChoiceError(_unsupported(backend, precision))
    target = model
    if kind == "onnx" and model_precision != precision:
        if model_precision != "fp32":
            raise ChoiceError(f"{model.name} is an {model_precision} model: it runs in {model_precision}, not {precision}")
        if precision == "int8":
            if int8 is None:
                raise ChoiceError(f"{model.name} has no int8 variant ({int8_path(model).name}): write one with "
                                  f"`mictag export ... --precision int8`")
            target = int8.path
            reason = f"{reason}; {int8.evidence()}"
        elif precision == "fp16" and backend.startswith("ort"):
            raise ChoiceError(f"{model.name} is fp32: ONNX Runtime runs fp16 only from an fp16 model "
                              f"(`mictag export --precision fp16`), or use --backend openvino")
    rest = "bf16" if backend == "openvino" and precision == "int8" and cpu.bf16 else ""
    check = chosen and _on_cpu(backend, cuda) and precision in ("bf16", "int8") and model_precision == "fp32"
    return _checked(EnginePlan(backend, precision, reason, target, rest=rest, check=check), cpu, cuda)


def _on_cpu(backend: str, cuda: bool) -> bool:
    return backend in ("openvino", "ort-cpu") or (backend == "torch" and not cuda)


def _unsupported(backend: str, precision: str) -> str:
    if backend == "ort-cpu" and precision == "bf16":
        return (f"ONNX Runtime's CPU provider has no bf16 kernels: use --backend openvino ({INSTALL_OPENVINO}) "
                f"or --precision fp32")
    runs = ", ".join(ENGINE_PRECISIONS.get(backend, ()))
    return f"backend {backend} cannot run a model in {precision}" + (f" (it runs {runs})" if runs else "")


def _checked(plan: EnginePlan, cpu: CpuInfo, cuda: bool) -> EnginePlan:
    """The plan, warned where the precision it runs in is emulated on this CPU."""
    on_cpu = _on_cpu(plan.backend, cuda)
    said = []
    if on_cpu and plan.precision == "bf16" and not cpu.bf16:
        said.append("this CPU has no native bf16 (no amx_bf16 or avx512_bf16): bf16 is emulated, far slower than fp32")
    if plan.backend in ("openvino", "torch") and on_cpu and plan.precision == "fp16" and not cpu.fp16:
        said.append("this CPU has no native fp16: fp16 is emulated, far slower than fp32")
    return EnginePlan(plan.backend, plan.precision, plan.reason, plan.model, plan.advice, tuple(said), plan.rest,
                      plan.check)
