"""Engine benchmark: windows/s, x realtime and MFU of every backend present, same inputs, one run.

    python benchmarks/engine.py                       # full-size AST + U-Net, CPU backends
    python benchmarks/engine.py --backbone musicnn    # musicnn (MTT) + U-Net
    python benchmarks/engine.py --tiny --batches 1 4  # smoke run (what CI runs)

Backends measured when importable: torch eager fp32 (and bf16 autocast where the CPU has native
bf16, fp16/bf16 + SDPA on CUDA, torch.compile with --compile), ONNX Runtime CPU fp32 / fp16 /
int8, ORT CUDA. Each reports its max |probability - torch fp32| on the same windows. Weights are
random: speed does not depend on them. Results go to benchmarks/results/engine-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mictag import __version__  # noqa: E402
from mictag.export.onnx import convert_precision, export_onnx, metadata  # noqa: E402
from mictag.model.ast import ASTConfig  # noqa: E402
from mictag.model.fbank import Fbank  # noqa: E402
from mictag.model.system import SystemConfig, build_system  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "mictag": __version__,
            "machine": platform.machine(), "cpu": platform.processor(), "threads": torch.get_num_threads()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name"))
        flags = next(l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags"))
        info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def save_result(name: str, result: dict, out: Path | None = None) -> dict:
    """Stamp a benchmark's result with its name, time and machine, write it as JSON (default:
    results/<name>-<time>.json) and return it."""
    result = {"benchmark": name.split("-")[0], "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **result}
    out = out or RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


def counted_flops(system: torch.nn.Module, fb) -> float:
    """FLOPs of one window through ``system`` (front end excluded), counted by torch's FLOP counter
    (a multiply-add is 2 FLOPs, as in the AST's closed form)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, fb.target_frames, fb.num_mel_bins)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        system(x)
    return float(counter.get_total_flops())


def timeit(fn, repeats: int, min_seconds: float) -> float:
    fn()  # warm-up
    best, spent, n = float("inf"), 0.0, 0
    while n < repeats or spent < min_seconds:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
        if n >= 50:
            break
    return best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny AST (smoke test)")
    ap.add_argument("--backbone", choices=["ast", "musicnn"], default="ast")
    ap.add_argument("--reprogrammer", default="unet")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=0.0)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak for MFU (default: 989 on CUDA = H100 dense fp16; none on CPU)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    ast_cfg = ASTConfig.tiny() if args.tiny else ASTConfig()
    cfg = SystemConfig(ast=ast_cfg, backbone=args.backbone, reprogrammer=args.reprogrammer)
    fb = cfg.fbank
    torch.manual_seed(0)
    system = build_system(cfg).eval()
    flops = ast_cfg.flops_per_window() if args.backbone == "ast" else counted_flops(system, fb)
    peak = args.peak_tflops or (989.0 if torch.cuda.is_available() else None)
    max_b = max(args.batches)
    rng = np.random.default_rng(0)
    windows = (0.3 * rng.standard_normal((max_b, fb.window_samples))).astype(np.float32)
    valid = np.full(max_b, fb.window_samples, np.int64)
    front = Fbank(fb, normalize=cfg.normalize_input)
    with torch.inference_mode():
        reference = torch.sigmoid(system(front(torch.from_numpy(windows), torch.from_numpy(valid)))).numpy()

    runners = {}

    def torch_runner(dtype=None, device="cpu", compiled=False):
        model = build_system(cfg, with_fbank=True).eval()
        model.load_state_dict(system.state_dict(), strict=False)
        model = model.to(device)
        fn = torch.compile(model, mode=compiled if isinstance(compiled, str) else None) if compiled else model

        def run(b):
            x, n = torch.from_numpy(windows[:b]).to(device), torch.from_numpy(valid[:b]).to(device)
            with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                out = torch.sigmoid(fn(x, n).float())
            return out.cpu().numpy()
        return run

    runners["torch-eager-fp32"] = torch_runner()
    flags = machine().get("cpu_flags", [])
    if any(f in flags for f in ("avx512_bf16", "amx_bf16")):
        runners["torch-eager-bf16-autocast"] = torch_runner(torch.bfloat16)
    if args.compile:
        runners["torch-compile-fp32"] = torch_runner(compiled=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.allow_tf32 = False  # the fbank conv stays exact fp32
        runners["torch-cuda-fp16"] = torch_runner(torch.float16, "cuda")
        runners["torch-cuda-bf16"] = torch_runner(torch.bfloat16, "cuda")
        if args.compile:  # CUDA graphs through torch.compile's reduce-overhead mode
            runners["torch-cuda-bf16-compiled-cudagraphs"] = torch_runner(torch.bfloat16, "cuda", "reduce-overhead")

    export_times, sizes = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="mictag-bench-"))
    try:
        import onnxruntime as ort

        for precision in ("fp32", "fp16", "int8"):
            path = tmp / f"model-{precision}.onnx"
            t0 = time.perf_counter()
            meta = metadata(system, [0.5] * len(cfg.labels), {}, "waveform")
            export_onnx(system, path, meta)
            if precision != "fp32":
                convert_precision(path, meta, precision)
            export_times[precision] = time.perf_counter() - t0
            sizes[precision] = path.stat().st_size
            providers = ["CUDAExecutionProvider"] if precision != "int8" and "CUDAExecutionProvider" in ort.get_available_providers() else []
            for provider in providers + ["CPUExecutionProvider"]:
                session = ort.InferenceSession(str(path), providers=[provider])
                name = f"ort-{provider.replace('ExecutionProvider', '').lower()}-{precision}"
                runners[name] = (lambda s: lambda b: s.run(["probabilities"], {"windows": windows[:b], "valid_samples": valid[:b]})[0])(session)
    except ImportError:
        pass

    rows = []
    for name, run in runners.items():
        for b in args.batches:
            try:
                out = run(b)
                seconds = timeit(lambda: run(b), args.repeats, args.min_seconds)
            except Exception as exc:  # a backend that cannot run this model here: say so, go on
                rows.append({"backend": name, "batch": b, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            wps = b / seconds
            rows.append({"backend": name, "batch": b, "seconds_per_batch": seconds, "windows_per_s": wps,
                         "x_realtime": wps * fb.window_seconds, "achieved_tflops": wps * flops / 1e12,
                         "mfu": (wps * flops / 1e12 / peak) if peak else None,
                         "max_abs_dev_vs_torch_fp32": float(np.abs(out - reference[:b]).max())})
            print(f"{name:28s} b={b:<4d} {wps:9.3f} win/s  {wps * fb.window_seconds:9.1f}x rt  "
                  f"dev {rows[-1]['max_abs_dev_vs_torch_fp32']:.1e}", flush=True)
    base = {r["batch"]: r["windows_per_s"] for r in rows if r["backend"] == "torch-eager-fp32" and "windows_per_s" in r}
    for r in rows:
        if "windows_per_s" in r and r["batch"] in base:
            r["speedup_vs_torch_fp32"] = r["windows_per_s"] / base[r["batch"]]
    name = "tiny" if args.tiny else "full" if args.backbone == "ast" else args.backbone
    return save_result(f"engine-{name}", {
        "model": {"backbone": args.backbone, "system": cfg.to_dict(), "reprogrammer": args.reprogrammer,
                  "gflops_per_window": flops / 1e9},
        "peak_tflops": peak, "export_seconds": export_times, "onnx_bytes": sizes, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
