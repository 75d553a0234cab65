"""Attention kernels for the AST's blocks, and the choice between them on a CPU.

- ``sdpa``: ``scaled_dot_product_attention`` (flash on CPU and GPU; what training and the ONNX
  export use).
- ``blocked``: queries in blocks of ``block`` rows, each block's scores as one batched matmul in
  the model's dtype, softmax, and a second matmul. In bf16 on a CPU both products run on the
  matrix units (oneDNN), and a block's scores stay in cache for the softmax; torch's CPU flash
  kernel does neither at the AST's 1,214 tokens.

Which is faster depends on the CPU, so the torch backend measures both once per machine, dtype
and shape (:func:`fastest_kernel`, a fraction of a second) and keeps the answer in
``$MICTAG_HOME/cache/attention-kernels.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mictag.timing import best_seconds

KERNELS = ("sdpa", "blocked")
DEFAULT_BLOCK = 64


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, H, N, D) tensors, ``block`` query rows at a time."""
    kt = k.transpose(-1, -2).contiguous()
    q = q * scale
    n = q.shape[-2]
    out = torch.empty_like(q)
    for start in range(0, n, block):
        scores = torch.matmul(q[..., start : start + block, :], kt)
        out[..., start : start + block, :] = torch.matmul(torch.softmax(scores, dim=-1), v)
    return out


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, kernel: str = "sdpa",
           block: int = DEFAULT_BLOCK) -> torch.Tensor:
    if kernel == "blocked" and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
        return blocked_attention(q, k, v, scale, block)
    return nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)


def set_kernel(module: nn.Module, kernel: str, block: int = DEFAULT_BLOCK) -> int:
    """Make every attention layer under ``module`` use ``kernel``; returns how many it set."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; choose {', '.join(KERNELS)}")
    n = 0
    for m in module.modules():
        if hasattr(m, "attention_kernel"):
            m.attention_kernel, m.attention_block = kernel, block
            n += 1
    return n


def measure_kernels(heads: int, tokens: int, head_dim: int, dtype: torch.dtype, batch: int = 1) -> dict[str, float]:
    """Seconds per call of each kernel at this shape, on the CPU."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=g).to(dtype) for _ in range(3))
    scale = head_dim**-0.5
    with torch.inference_mode():
        return {kernel: best_seconds(lambda: attend(q, k, v, scale, kernel)) for kernel in KERNELS}


def fastest_kernel(heads: int, tokens: int, head_dim: int, dtype: torch.dtype, cache: Path | None = None) -> tuple[str, dict]:
    """(the faster kernel here for this shape and dtype, the seconds measured), measured once per
    machine and kept in ``cache``."""
    from mictag.cpu import cpu_info
    from mictag.digest import config_digest

    cpu = cpu_info()
    key = config_digest({"cpu": cpu.model, "flags": sorted(cpu.flags), "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "shape": [heads, tokens, head_dim], "dtype": str(dtype)})
    known: dict = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text("utf-8"))
        except (OSError, ValueError):
            known = {}
    if key in known:
        return known[key]["kernel"], known[key]["seconds"]
    seconds = measure_kernels(heads, tokens, head_dim, dtype)
    kernel = min(seconds, key=seconds.get)
    if cache is not None:
        known[key] = {"kernel": kernel, "seconds": seconds}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp")
            tmp.write_text(json.dumps(known, indent=1), "utf-8")
            tmp.replace(cache)
        except OSError:
            pass  # measured again next time
    return kernel, seconds
