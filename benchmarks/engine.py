"""Engine benchmark: windows/s, x realtime and MFU of every engine and precision present, on the
same windows, in one run; plus where the time goes and what start-up costs.

    python benchmarks/engine.py                          # full-size AST + U-Net, CPU engines
    python benchmarks/engine.py --reprogrammer none --mapper many-to-one   # the zero-training tagger
    python benchmarks/engine.py --backbone musicnn       # musicnn (MTT) + U-Net
    python benchmarks/engine.py --profile --startup      # time split per op class; start-up per engine
    python benchmarks/engine.py --tiny --batches 1 4     # smoke run (what CI runs)

Rows, where they can run: torch eager fp32; torch bf16 as autocast (the old path), with bf16
weights and SDPA, and with bf16 weights and blocked attention (only where the CPU has native
bf16, unless --all); ONNX Runtime fp32, int8 dynamic and int8 static (calibrated QDQ); OpenVINO
fp32, bf16 and int8 static; CUDA rows on a GPU. Each row reports its max |probability - torch
fp32| and its MFU against the matmul ceiling of ITS precision, measured here first
(``ceilings.py``). The row ``auto`` would take is marked. Weights are random: speed does not
depend on them. Results go to benchmarks/results/engine-<name>-<time>.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceilings import ceilings  # noqa: E402

from mictag import __version__  # noqa: E402
from mictag.cpu import cpu_info  # noqa: E402
from mictag.export.onnx import convert_precision, export_onnx, metadata, write_int8  # noqa: E402
from mictag.backbones.ast import ASTConfig  # noqa: E402
from mictag.model.artifact import TorchTagger  # noqa: E402
from mictag.backbones.attention import set_kernel  # noqa: E402
from mictag.model.fbank import Fbank  # noqa: E402
from mictag.timing import best_seconds  # noqa: E402
from mictag.model.system import SystemConfig, build_system  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = cpu_info()
    info = {"python": platform.python_version(), "torch": torch.__version__, "mictag": __version__,
            "machine": platform.machine(), "cpu": cpu.model, "cores": cpu.cores, "threads": torch.get_num_threads(),
            "cpu_flags": cpu.shown_flags, "native_bf16": cpu.bf16, "int8_dot": cpu.int8}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for module in ("onnxruntime", "openvino"):
        try:
            if module == "openvino":
                from mictag.runtime.engines.openvino import import_openvino

                info[module] = import_openvino().get_version()
            else:
                info[module] = __import__(module).__version__
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
    """Best of at least ``repeats`` calls, and of as many more as fit in ``min_seconds`` (at most 50)."""
    fn()  # warm-up
    best, spent, n = float("inf"), 0.0, 0
    while n < repeats or spent < min_seconds:
        dt = best_seconds(fn, 1, warmup=False)
        best, spent, n = min(best, dt), spent + dt, n + 1
        if n >= 50:
            break
    return best


# -- where the time goes ------------------------------------------------------------------------
TORCH_CLASSES = (("attention", ("scaled_dot_product", "flash_attention", "aten::bmm", "aten::_softmax")),
                 ("matmul", ("aten::addmm", "aten::mm", "convolution")),
                 ("gelu", ("aten::gelu",)), ("layernorm", ("layer_norm",)),
                 ("dtype copies", ("aten::copy_", "aten::_to_copy", "aten::clone")))
OPENVINO_CLASSES = (("attention", ("Subgraph", "MHA", "ScaledDotProductAttention", "Softmax")),
                    ("matmul", ("FullyConnected", "MatMul", "Convolution")),
                    ("gelu", ("Gelu",)), ("layernorm", ("MVN",)), ("dtype copies", ("Reorder", "Convert")))


def _classify(name: str, classes) -> str:
    return next((cls for cls, keys in classes if any(k in name for k in keys)), "other")


def torch_split(fn) -> dict[str, float]:
    """Self time per op class of one call of ``fn``, as shares, with the total in seconds."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals = collections.Counter()
    for event in prof.key_averages():
        totals[_classify(event.key, TORCH_CLASSES)] += event.self_cpu_time_total / 1e6
    return _shares(totals)


def openvino_split(request, feeds) -> dict[str, float]:
    request.infer(feeds)
    totals = collections.Counter()
    for p in request.profiling_info:
        totals[_classify(p.node_type, OPENVINO_CLASSES)] += p.real_time.total_seconds()
    return _shares(totals)


def _shares(totals) -> dict[str, float]:
    total = sum(totals.values()) or 1.0
    return {"total_seconds": total, **{k: v / total for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny AST (smoke test)")
    ap.add_argument("--backbone", choices=["ast", "musicnn"], default="ast")
    ap.add_argument("--reprogrammer", default="unet")
    ap.add_argument("--mapper", default="head")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=0.0)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak for MFU instead of the measured ceilings (e.g. 989 for an H100, dense fp16)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--all", action="store_true", help="also run bf16 rows on a CPU without native bf16 (slow)")
    ap.add_argument("--only", nargs="+", help="run only these rows (names as printed)")
    ap.add_argument("--profile", action="store_true", help="time split per op class of the bf16 rows")
    ap.add_argument("--startup", action="store_true", help="start-up of each engine (load, compile, cache)")
    ap.add_argument("--calibration-windows", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    ast_cfg = ASTConfig.tiny() if args.tiny else ASTConfig()
    labels = {}
    if args.mapper == "many-to-one":  # the zero-training tagger: the labels the backbone's map expresses
        from mictag.backbones.frozen import openmic_source_map

        labels = {"labels": tuple(openmic_source_map(args.backbone))}
    cfg = SystemConfig(ast=ast_cfg, backbone=args.backbone, reprogrammer=args.reprogrammer, mapper=args.mapper, **labels)
    fb = cfg.fbank
    torch.manual_seed(0)
    system = build_system(cfg).eval()
    flops = ast_cfg.flops_per_window() if args.backbone == "ast" else counted_flops(system, fb)
    cpu = cpu_info()
    cuda = torch.cuda.is_available()
    tokens = ast_cfg.num_patches + 2 if args.backbone == "ast" else 1214
    measured, by_engine = ceilings(("fp32", "bf16", "int8") if (cpu.bf16 or args.all) else ("fp32", "int8"),
                                   batch=4 if not args.tiny else 1, tokens=tokens, repeats=3,
                                   device="cuda" if cuda else "cpu")
    print("matmul ceilings here: " + "; ".join(
        f"{p} " + ", ".join(f"{e} {v / 1e9:.0f}" for e, v in by_engine[p].items()) + " GFLOP/s" for p in by_engine),
        flush=True)
    max_b = max(args.batches)
    rng = np.random.default_rng(0)
    windows = (0.3 * rng.standard_normal((max_b, fb.window_samples))).astype(np.float32)
    valid = np.full(max_b, fb.window_samples, np.int64)
    front = Fbank(fb, normalize=cfg.normalize_input)
    with torch.inference_mode():
        reference = torch.sigmoid(system(front(torch.from_numpy(windows), torch.from_numpy(valid)))).numpy()

    runners: dict[str, tuple[str, object]] = {}  # name -> (precision, run(batch) -> probabilities)

    def torch_runner(dtype=None, device="cpu", compiled=False):
        """The fp32 model, optionally under autocast (the path before bf16 weights)."""
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

    def backend_runner(dtype, kernel):
        """What the torch backend runs: the front end in fp32, the rest with weights in ``dtype``."""
        model = build_system(cfg).eval()
        model.load_state_dict(system.state_dict())
        tagger = TorchTagger(model, "waveform", dtype).eval()
        set_kernel(tagger, kernel)

        def run(b):
            with torch.inference_mode():
                return tagger(torch.from_numpy(windows[:b]), torch.from_numpy(valid[:b]))[0].numpy()
        return run

    bf16_here = bool(cpu.bf16) or args.all
    runners["torch-fp32"] = ("fp32", torch_runner())
    if bf16_here and not cuda:
        runners["torch-bf16-autocast"] = ("bf16", torch_runner(torch.bfloat16))
        runners["torch-bf16"] = ("bf16", backend_runner(torch.bfloat16, "sdpa"))
        if args.backbone == "ast":
            runners["torch-bf16-blocked-attention"] = ("bf16", backend_runner(torch.bfloat16, "blocked"))
    if args.compile:
        runners["torch-compile-fp32"] = ("fp32", torch_runner(compiled=True))
    if cuda:
        torch.backends.cudnn.allow_tf32 = False  # the fbank conv stays exact fp32
        runners["torch-cuda-fp16"] = ("fp16", torch_runner(torch.float16, "cuda"))
        runners["torch-cuda-bf16"] = ("bf16", torch_runner(torch.bfloat16, "cuda"))
        if args.compile:  # CUDA graphs through torch.compile's reduce-overhead mode
            runners["torch-cuda-bf16-compiled-cudagraphs"] = ("bf16", torch_runner(torch.bfloat16, "cuda", "reduce-overhead"))

    export_times, sizes, int8_record, startup = {}, {}, None, {}
    tmp = Path(tempfile.mkdtemp(prefix="mictag-bench-"))
    meta = metadata(system, [0.5] * len(cfg.labels), {"precision": "fp32"}, "waveform")
    feeds_of = lambda b: {"windows": windows[:b], "valid_samples": valid[:b]}  # noqa: E731
    try:
        import onnxruntime as ort

        paths = {}
        t0 = time.perf_counter()
        paths["fp32"] = export_onnx(system, tmp / "model.onnx", meta)
        export_times["fp32"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        paths["int8-dynamic"], _ = convert_precision(export_onnx(system, tmp / "dyn.onnx", meta), meta, "int8-dynamic")
        export_times["int8-dynamic"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        paths["int8-static"], int8_record = write_int8(paths["fp32"], meta, windows=args.calibration_windows)
        export_times["int8-static"] = time.perf_counter() - t0
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        gpu = "CUDAExecutionProvider" in ort.get_available_providers()
        for precision, path in paths.items():
            for provider in (["CUDAExecutionProvider"] if gpu and precision == "fp32" else []) + ["CPUExecutionProvider"]:
                t0 = time.perf_counter()
                session = ort.InferenceSession(str(path), providers=[provider])
                name = f"ort-{provider.replace('ExecutionProvider', '').lower()}-{precision}"
                startup[name] = time.perf_counter() - t0
                runners[name] = (precision.split("-")[0],
                                 (lambda s: lambda b: s.run(["probabilities"], feeds_of(b))[0])(session))
    except ImportError:
        paths = {}
    ov_requests = {}
    try:
        from mictag.runtime.engines.openvino import import_openvino

        ov = import_openvino()
        for precision, source in (("fp32", "fp32"), ("bf16", "fp32"), ("int8", "int8-static"),
                                  ("int8+bf16", "int8-static")):
            if source not in paths or (precision.endswith("bf16") and not bf16_here):
                continue
            core = ov.Core()
            config = {"INFERENCE_PRECISION_HINT": "bf16" if precision.endswith("bf16") else "f32",
                      "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": bool(args.profile)}
            t0 = time.perf_counter()
            compiled = core.compile_model(str(paths[source]), "CPU", config)
            startup[f"openvino-{precision}"] = time.perf_counter() - t0
            request = compiled.create_infer_request()
            output = compiled.output("probabilities")
            ov_requests[precision] = request
            runners[f"openvino-{precision}"] = (precision.split("+")[0],
                                                (lambda r, o: lambda b: np.array(r.infer(feeds_of(b))[o]))(request, output))
    except ImportError:
        pass

    from mictag.runtime.engines.choice import Engines, Int8Variant, choose_engine

    int8_variant = Int8Variant(paths["int8-static"], int8_record["max_abs_dp"]) if int8_record else None
    plan = choose_engine(tmp / "model.onnx", "onnx", "fp32", cpu, Engines.detect(), int8=int8_variant)
    auto_row = (f"{plan.backend}-{plan.precision}" + (f"+{plan.rest}" if plan.rest else "")
                + ("-static" if plan.precision == "int8" and plan.backend == "ort-cpu" else ""))
    print(f"auto here: {plan.describe()} (row {auto_row})", flush=True)

    rows = []
    for name, (precision, run) in runners.items():
        if args.only and name not in args.only:
            continue
        ceiling = (args.peak_tflops * 1e12) if args.peak_tflops else measured.get(precision)
        for b in args.batches:
            try:
                out = run(b)
                seconds = timeit(lambda: run(b), args.repeats, args.min_seconds)
            except Exception as exc:  # an engine that cannot run this model here: say so, go on
                rows.append({"backend": name, "batch": b, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            wps = b / seconds
            rows.append({"backend": name, "precision": precision, "batch": b, "seconds_per_batch": seconds,
                         "windows_per_s": wps, "x_realtime": wps * fb.window_seconds,
                         "achieved_tflops": wps * flops / 1e12,
                         "mfu": (wps * flops / ceiling) if ceiling else None,
                         "max_abs_dev_vs_torch_fp32": float(np.abs(out - reference[:b]).max()),
                         "auto": name == auto_row})
            r = rows[-1]
            mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] else "   - "
            print(f"{name:30s} b={b:<3d} {wps:8.3f} win/s {r['x_realtime']:8.1f}x rt  MFU {mfu}  "
                  f"dev {r['max_abs_dev_vs_torch_fp32']:.1e}{'  <- auto' if r['auto'] else ''}", flush=True)
    base = {r["batch"]: r["windows_per_s"] for r in rows if r["backend"] == "torch-fp32" and "windows_per_s" in r}
    for r in rows:
        if "windows_per_s" in r and r["batch"] in base:
            r["speedup_vs_torch_fp32"] = r["windows_per_s"] / base[r["batch"]]

    splits = {}
    if args.profile:
        b = max(args.batches)
        for name in ("torch-bf16-autocast", "torch-bf16", "torch-bf16-blocked-attention", "torch-fp32"):
            if name in runners and (not args.only or name in args.only):
                splits[name] = torch_split(lambda: runners[name][1](b))
        for precision, request in ov_requests.items():
            splits[f"openvino-{precision}"] = openvino_split(request, feeds_of(b))
        for name, split in splits.items():
            print(f"split {name:28s} " + ", ".join(f"{k} {v:.3f}" if k == "total_seconds" else f"{k} {100 * v:.0f}%"
                                                  for k, v in split.items()))
    if args.startup:
        startup.update(measure_startup(system, meta, paths, tmp))
        print("start-up (s): " + ", ".join(f"{k} {v:.2f}" for k, v in startup.items()))
    name = "tiny" if args.tiny else "full" if args.backbone == "ast" else args.backbone
    return save_result(f"engine-{name}", {
        "model": {"backbone": args.backbone, "system": cfg.to_dict(), "reprogrammer": args.reprogrammer,
                  "mapper": args.mapper, "gflops_per_window": flops / 1e9},
        "ceilings_flops": measured, "ceilings_by_engine": by_engine, "peak_tflops": args.peak_tflops, "auto": plan.describe(),
        "export_seconds": export_times, "onnx_bytes": sizes, "int8_static": int8_record,
        "time_split": splits, "startup_seconds": startup, "rows": rows}, args.out)


def measure_startup(system, meta, paths: dict, tmp: Path) -> dict:
    """Seconds from a file on disk to a model ready to score: the torch artifact (memory-mapped,
    backbone built on the meta device) and OpenVINO's compile, cold and from its cache."""
    out = {}
    from mictag.model.artifact import load_torch_artifact
    from mictag.export.torch_artifact import save_torch_artifact

    artifact = save_torch_artifact(system, tmp / "model.pt", meta)
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        load_torch_artifact(artifact, "cpu", precision)
        out[f"torch-artifact-load-{precision}"] = time.perf_counter() - t0
    if "fp32" in paths:
        try:
            from mictag.runtime.engines import openvino as openvino_engine

            openvino_engine.import_openvino()
            for attempt in ("cold", "cached"):
                t0 = time.perf_counter()
                openvino_engine.compile_model(paths["fp32"], "bf16" if cpu_info().bf16 else "fp32", cache=True,
                                              cache_root=tmp / "ov-cache")
                out[f"openvino-compile-{attempt}"] = time.perf_counter() - t0
        except ImportError:
            pass
    return out


if __name__ == "__main__":
    main()
