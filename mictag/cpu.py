"""What this CPU's matrix units can do, read from the operating system (no torch, no engine).

The precision mictag runs in on a CPU follows from these features: bf16 only where the CPU has
native bf16 dot products (AMX-BF16 on Intel Sapphire Rapids and later, AVX512-BF16 on Cooper
Lake, AMD Zen 4/5; BF16 on Arm v8.6), because emulated bf16 is hundreds of times slower than
fp32; int8 where it has int8 dot products (AMX-INT8, AVX512-VNNI, AVX-VNNI; Arm's I8MM or
dot-product extension). ``MICTAG_CPU_FLAGS`` (a space-separated list) replaces the flags read
from the OS: for tests, and to make mictag ignore a feature.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass

# Strongest first: the first one present names the reason for a choice.
BF16_FEATURES = ("amx_bf16", "avx512_bf16", "bf16")
INT8_FEATURES = ("amx_int8", "avx512_vnni", "avx_vnni", "i8mm", "asimddp")
FP16_FEATURES = ("amx_fp16", "avx512_fp16", "asimdhp")
FLAGS_ENV = "MICTAG_CPU_FLAGS"
# The flags worth showing beside a benchmark (matrix and vector units).
SHOWN_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "asimd", "sve", "bf16", "i8mm")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    machine: str
    flags: frozenset[str]
    cores: int

    def first(self, features: tuple[str, ...]) -> str | None:
        return next((f for f in features if f in self.flags), None)

    @property
    def bf16(self) -> str | None:
        """The feature that gives native bf16 dot products, or None."""
        return self.first(BF16_FEATURES)

    @property
    def int8(self) -> str | None:
        """The feature that gives int8 dot products, or None."""
        return self.first(INT8_FEATURES)

    @property
    def fp16(self) -> str | None:
        """The feature that gives native fp16 arithmetic, or None (x86 has it only on recent Xeons)."""
        return self.first(FP16_FEATURES)

    @property
    def shown_flags(self) -> list[str]:
        return sorted(f for f in self.flags if f.startswith(SHOWN_PREFIXES))

    def describe(self) -> str:
        units = [f"bf16 {self.bf16}" if self.bf16 else "no native bf16",
                 f"int8 {self.int8}" if self.int8 else "no int8 dot products"]
        return f"{self.model} ({self.machine}, {self.cores} cores; {', '.join(units)})"


def _linux_cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 "flags", Arm "Features"
            flags = set(value.split())
    return model, flags


def _macos_sysctl() -> tuple[str, set[str]]:
    def sysctl(*names: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", *names], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    model = sysctl("machdep.cpu.brand_string").strip()
    flags = {f.lower().replace(".", "_") for f in sysctl("machdep.cpu.features", "machdep.cpu.leaf7_features").split()}
    for feature, name in (("FEAT_BF16", "bf16"), ("FEAT_I8MM", "i8mm"), ("FEAT_DotProd", "asimddp"),
                          ("FEAT_FP16", "asimdhp")):
        if sysctl(f"hw.optional.arm.{feature}").strip() == "1":
            flags.add(name)
    return model, flags


def parse_flags(text: str) -> frozenset[str]:
    return frozenset(f.strip().lower() for f in text.replace(",", " ").split() if f.strip())


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    model, flags = "", set()
    system = platform.system()
    if system == "Linux":
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                model, flags = _linux_cpuinfo(f.read())
        except OSError:
            pass
    elif system == "Darwin":
        model, flags = _macos_sysctl()
    override = os.environ.get(FLAGS_ENV)
    if override is not None:
        flags = set(parse_flags(override))
    return CpuInfo(model or platform.processor() or "unknown CPU", platform.machine(), frozenset(flags),
                   os.cpu_count() or 1)
