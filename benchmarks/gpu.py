"""The GPU table in one command: every engine row, and a scan against its two ceilings, in one run
that stays inside a hard time budget (8 minutes on one H200 with the full-size AST).

    python benchmarks/gpu.py                       # one GPU, full-size AST (random weights), <= 7.5 min
    python benchmarks/gpu.py --batches 64 128      # fewer batch sizes
    python benchmarks/gpu.py --smoke               # CPU, tiny model, well under a minute (what CI runs)
    bash benchmarks/gpu_device_run.sh              # on the lent GPU machine: sets up, writes under $OUT

Engine rows (batch 32-256 each; windows/s, x realtime, MFU against the chip's datasheet peak in
the row's precision, share of the matmul ceiling measured in the run, max |dp| against torch fp32
on the same windows):
  torch-fp32                      eager, TF32 off: the reference every row is compared with
  torch-{bf16,fp16}               eager, weights converted (what the torch backend runs)
  torch-{bf16,fp16}-autocast      eager, fp32 weights under autocast
  torch-{bf16,fp16}-cudagraph     the eager model captured once per batch size in a CUDA graph
  torch-bf16-compiled             torch.compile (inductor, static shapes)
  torch-bf16-compiled-cudagraph   the compiled model captured in a CUDA graph
  ort-cuda, ort-trt, tensorrt     ONNX Runtime's CUDA / TensorRT providers, native TensorRT:
                                  only where they import; otherwise a row that says why not
  torch-backend                   mictag's torch backend on the torch artifact (open_backend +
                                  Backend.run: host arrays in and out, its static batch)
The torch rows time the model on windows already on the device, with CUDA events (median of
calls after warm-up); the backend rows time ``Backend.run`` by the wall clock, copies included.
Every row's front end (the fbank) runs in fp32: it is part of the graph, so part of the time.

Scan row: a library generated in the background while the engine rows run (benchmarks/scan.py's
writer), scanned by ``mictag scan``'s own ``run_scan`` with the fastest backend that imports here,
beside the decode-only and engine-only ceilings measured by scan.py's functions; the bound is
named. Skipped, with the reason, where the decode libraries (soundfile, soxr) are missing.

The budget is a deadline: a row (or batch size) that would not fit is recorded as skipped for
time, and the JSON is rewritten after every row, so a run that is killed still leaves its table.
Results go to benchmarks/results/gpu-<time>.json (smoke: gpu-tiny-<time>.json).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Only the standard library and numpy at the top: spawned workers (the library writers, the scan's
# decoders) re-import this file, and must not pay for torch.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

# Dense (no sparsity) peaks by datasheet, FLOP/s; fp32 is the plain (non-tensor-core) rate. The
# first name contained in torch.cuda.get_device_name() wins, so the more specific names come first.
_HOPPER_SXM = {"bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 67e12}
_HOPPER_NVL = {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12}
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", _HOPPER_NVL),
    ("H100 NVL", _HOPPER_NVL),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("GH200", _HOPPER_SXM),
    ("H200", _HOPPER_SXM),  # "NVIDIA H200" (SXM)
    ("H100", _HOPPER_SXM),  # "NVIDIA H100 80GB HBM3" (SXM)
    ("A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
)

ROW_NAMES = ("torch-fp32", "torch-bf16", "torch-fp16", "torch-bf16-autocast", "torch-fp16-autocast",
             "torch-bf16-cudagraph", "torch-fp16-cudagraph", "torch-bf16-compiled", "torch-bf16-compiled-cudagraph",
             "ort-cuda", "ort-trt", "tensorrt", "torch-backend")


def chip_peaks(name: str | None) -> tuple[str, dict[str, float]] | None:
    """(matched table name, {precision: peak FLOP/s}) for a device name, or None for an unknown chip."""
    for key, peaks in PEAK_FLOPS:
        if name and key.lower() in name.lower():
            return key, peaks
    return None


@dataclass
class Budget:
    """A deadline ``seconds`` after ``start``."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def spent(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.spent()


@dataclass(frozen=True)
class Mode:
    """What differs between a GPU run and the CPU smoke run (the code is the same)."""

    warmup: int  # untimed calls after the first one (which checks the output and compiles)
    min_calls: int  # timed calls per row and batch, at least
    min_seconds: float  # ... and as many more as fit in this
    eager_need: float  # seconds a row needs for one batch size, before it is started
    compile_need: float  # a first guess at one torch.compile, until one has been measured
    backend_need: float  # the torch-backend row (loads and compiles the artifact)
    scan_need: float  # ceilings + scan


GPU_MODE = Mode(warmup=1, min_calls=3, min_seconds=1.0, eager_need=12.0, compile_need=75.0, backend_need=75.0,
                scan_need=100.0)
SMOKE_MODE = Mode(warmup=0, min_calls=2, min_seconds=0.0, eager_need=2.0, compile_need=5.0, backend_need=5.0,
                  scan_need=15.0)


# -- decoders and the library -------------------------------------------------------------------
def decoders() -> dict[str, str | None]:
    """{module: None if it imports here, else why not} for what generating and scanning audio needs:
    soundfile and soxr are required, av (PyAV) only for the M4A files."""
    found: dict[str, str | None] = {}
    for module in ("soundfile", "soxr", "av"):
        try:
            importlib.import_module(module)
            found[module] = None
        except Exception as exc:  # absent, or a wheel whose native library does not load
            found[module] = f"{type(exc).__name__}: {exc}"[:200]
    return found


def _background() -> None:
    os.nice(10)  # the library is written while the engine rows are timed: they come first


def _write_file(path: str, seconds: float, seed: int) -> float:
    """One file of the scan benchmark's library, written by benchmarks/scan.py's own writer."""
    import scan

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    scan._write(Path(path), scan._music(seconds, np.random.default_rng(seed)))
    return seconds


class Library:
    """benchmarks/scan.py's library (10-s clips and 3-6-min tracks of 44.1 kHz stereo MP3, FLAC, OGG
    and M4A), written by niced worker processes in the background; ``finish`` waits for it until a
    deadline and keeps what was written by then."""

    def __init__(self, root: Path, clips: int, tracks: int, formats: tuple[str, ...], workers: int, seed: int = 0):
        import multiprocessing as mp

        rng = np.random.default_rng(seed)
        jobs = [(root / "tracks" / f"track{i:03d}.{formats[i % len(formats)]}", float(rng.uniform(180, 360)))
                for i in range(tracks)]
        jobs += [(root / "clips" / f"clip{i:03d}.{formats[i % len(formats)]}", 10.0) for i in range(clips)]
        self.root, self.formats, self.workers = root, formats, workers
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                        initializer=_background)
        self.t0 = time.perf_counter()
        self.last_done = self.t0
        self.futures = {self.pool.submit(_write_file, str(p), s, seed + 1 + i): p for i, (p, s) in enumerate(jobs)}
        for future in self.futures:
            future.add_done_callback(self._done)

    def _done(self, future) -> None:
        if not future.cancelled():
            self.last_done = max(self.last_done, time.perf_counter())

    def finish(self, deadline: float) -> dict:
        """Wait until ``deadline`` (a perf_counter time) at most, cancel what has not started, wait
        for what has, and describe the library; files whose writer failed are removed."""
        wait_futures(list(self.futures), timeout=max(0.0, deadline - time.perf_counter()))
        self.pool.shutdown(wait=True, cancel_futures=True)
        seconds, errors, cancelled = 0.0, [], 0
        for future, path in self.futures.items():
            if future.cancelled():
                cancelled += 1
            elif future.exception() is not None:
                errors.append(f"{path.name}: {future.exception()}"[:200])
                path.unlink(missing_ok=True)
            else:
                seconds += future.result()
        files = len(self.futures) - cancelled - len(errors)
        return {"root": str(self.root), "files": files, "audio_seconds": seconds, "formats": list(self.formats),
                "writers": self.workers, "written_in_seconds": self.last_done - self.t0,
                "not_written_for_time": cancelled, "errors": errors}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# -- timing ---------------------------------------------------------------------------------------
def time_calls(call: Callable[[], object], cuda: bool, min_calls: int, min_seconds: float, warmup: int = 1,
               max_calls: int = 200) -> dict:
    """Seconds per call of ``call`` after ``warmup`` untimed calls: the median (with min, max and
    count) of at least ``min_calls`` calls and of as many more as fit in ``min_seconds``. On a GPU
    each call is timed by CUDA events and waited for before the next one starts."""
    import torch

    for _ in range(warmup):
        call()
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times: list[float] = []
    t0 = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - t0 < min_seconds and len(times) < max_calls):
        if cuda:
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    return {"seconds_per_batch": statistics.median(times), "min_seconds": min(times), "max_seconds": max(times),
            "calls": len(times), "timer": "cuda-events" if cuda else "perf_counter"}


def _numpy(out) -> np.ndarray:
    if isinstance(out, np.ndarray):
        return out.astype(np.float32, copy=False)
    return out.float().cpu().numpy()


# -- rows -------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One engine row: ``prepare(batch)`` returns a call that scores that many windows (compiling or
    capturing first if the row does), or ``skip`` says why the row cannot run here."""

    name: str
    precision: str  # the peak and the ceiling its MFU is read against
    engine: str
    mode: str
    inputs: str  # "device": windows already on the GPU; "host": numpy arrays through Backend.run
    prepare: Callable[[int], Callable[[], object]] | None = None
    skip: str | None = None
    compiled: str = ""  # the compiled model it runs ("bf16"): a batch size not yet compiled needs a compile's time
    times_compile: bool = False  # its setup time is that compile's time (the next guess)
    describe: Callable[[], dict] | None = None  # more about the row, known once it is prepared
    setup_need: float = 0.0  # seconds needed once before the first batch (export, engine build, ...)


class TorchModels:
    """The same random-weight system on the device in each form the torch rows run, built when a row
    first asks and shared between rows (the autocast rows and torch-fp32 share the fp32 weights)."""

    def __init__(self, system, device, compile_backend: str):
        self.system, self.device, self.compile_backend = system, device, compile_backend
        self.cache: dict[str, object] = {}

    def tagger(self, precision: str):
        """Front end in fp32, the rest with weights in ``precision`` (:class:`TorchTagger`)."""
        import copy

        from mictag.model.artifact import DTYPES, TorchTagger

        if precision not in self.cache:
            self.cache[precision] = TorchTagger(copy.deepcopy(self.system), "waveform", DTYPES[precision]).to(
                self.device).eval()
        return self.cache[precision]

    def autocast(self, precision: str):
        from mictag.model.artifact import DTYPES

        key = f"autocast-{precision}"
        if key not in self.cache:
            self.cache[key] = autocast_tagger(self.tagger("fp32").graph, DTYPES[precision])
        return self.cache[key]

    def compiled(self, precision: str):
        """torch.compile of the ``precision`` tagger, static shapes: one compilation per batch size."""
        import torch

        key = f"compiled-{precision}"
        if key not in self.cache:
            self.cache[key] = torch.compile(self.tagger(precision), dynamic=False, backend=self.compile_backend)
        return self.cache[key]

    def clear(self) -> None:
        import torch

        self.cache.clear()
        torch._dynamo.reset()
        _free_device_memory()


def _free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def autocast_tagger(graph, dtype):
    """The fp32 model of ``graph`` (an ExportGraph) with its front end in fp32 and the rest under
    autocast to ``dtype``; returns (probabilities,) like TorchTagger's first output."""
    import torch
    from torch import nn

    class AutocastTagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.graph = graph

        def forward(self, x: torch.Tensor, valid: torch.Tensor):
            inputs = self.graph.fbank(x, valid)
            with torch.autocast(x.device.type, dtype=dtype):
                out = self.graph.system.forward_outputs(inputs)
            return (torch.sigmoid(out["logits"].float()),)

    return AutocastTagger().eval()


def cuda_graphed(module, x, valid) -> Callable[[], object]:
    """A call that replays ``module(x, valid)[0]`` captured once in a CUDA graph, with static copies
    of the inputs (warmed up on a side stream first, as torch.cuda.graphs asks)."""
    import torch

    static_x, static_valid = x.clone(), valid.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            module(static_x, static_valid)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = module(static_x, static_valid)[0]

    def replay():
        graph.replay()
        return static_out

    replay.graph = graph  # keeps the graph (and its memory pool) alive as long as the call
    return replay


def torch_rows(models: TorchModels, x, valid, cuda: bool) -> list[Row]:
    """The torch rows, on windows ``x`` (B, samples) already on the device."""

    def eager(module_of):
        return lambda b: (lambda m=module_of(), xb=x[:b], vb=valid[:b]: m(xb, vb)[0])

    def graphed(module_of):
        return lambda b: cuda_graphed(module_of(), x[:b], valid[:b])

    no_cuda = None if cuda else "CUDA graphs need a CUDA device"
    rows = [Row("torch-fp32", "fp32", "torch", "eager, TF32 off", "device", eager(lambda: models.tagger("fp32")))]
    for p in ("bf16", "fp16"):
        rows.append(Row(f"torch-{p}", p, "torch", f"eager, {p} weights", "device",
                        eager(lambda p=p: models.tagger(p))))
    for p in ("bf16", "fp16"):
        rows.append(Row(f"torch-{p}-autocast", p, "torch", "eager, fp32 weights under autocast", "device",
                        eager(lambda p=p: models.autocast(p))))
    for p in ("bf16", "fp16"):
        rows.append(Row(f"torch-{p}-cudagraph", p, "torch", f"CUDA graph of the eager {p} model", "device",
                        graphed(lambda p=p: models.tagger(p)), skip=no_cuda))
    rows.append(Row("torch-bf16-compiled", "bf16", "torch", f"torch.compile ({models.compile_backend}, static shapes)",
                    "device", eager(lambda: models.compiled("bf16")), compiled="bf16", times_compile=True))
    rows.append(Row("torch-bf16-compiled-cudagraph", "bf16", "torch", "CUDA graph of the compiled bf16 model",
                    "device", graphed(lambda: models.compiled("bf16")), skip=no_cuda, compiled="bf16"))
    return rows


class Artifacts:
    """The exported models the backend rows load (written when first asked): the torch artifact, the
    fp32 ONNX graph, a TensorRT engine; and the backends opened on them, kept for the scan."""

    def __init__(self, system, meta: dict, work: Path, batches: list[int]):
        self.system, self.meta, self.work, self.batches = system, meta, work, batches
        self.paths: dict[str, Path] = {}
        self.backends: dict[str, object] = {}
        self.export_seconds: dict[str, float] = {}

    def _timed(self, key: str, make: Callable[[], Path]) -> Path:
        if key not in self.paths:
            t0 = time.perf_counter()
            self.paths[key] = make()
            self.export_seconds[key] = time.perf_counter() - t0
        return self.paths[key]

    def torch(self) -> Path:
        from mictag.export.torch_artifact import save_torch_artifact

        return self._timed("torch", lambda: save_torch_artifact(self.system, self.work / "model.pt", self.meta))

    def onnx(self) -> Path:
        from mictag.export.onnx import export_onnx

        return self._timed("onnx", lambda: export_onnx(self.system, self.work / "model.onnx", self.meta))

    def engine(self) -> Path:
        from mictag.export.tensorrt import EngineSpec, build_engine

        spec = EngineSpec(min_batch=1, opt_batch=min(64, max(self.batches)), max_batch=max(self.batches))
        return self._timed("tensorrt", lambda: build_engine(self.onnx(), self.work / "model.engine",
                                                            {**self.meta, "precision": "fp16"}, spec))

    def backend(self, name: str):
        """The backend ``name`` opened through open_backend on its model (once)."""
        from mictag.runtime.engines.open import open_backend

        if name not in self.backends:
            model = {"torch-backend": self.torch, "tensorrt": self.engine}.get(name, self.onnx)()
            self.backends[name] = open_backend(model, backend="torch" if name == "torch-backend" else name)
        return self.backends[name]

    def model_for(self, name: str) -> Path:
        return {"torch-backend": self.paths.get("torch"), "tensorrt": self.paths.get("tensorrt")}.get(
            name, self.paths.get("onnx"))

    def close_backends(self) -> None:
        self.backends.clear()
        _free_device_memory()


def backend_rows(artifacts: Artifacts, windows: np.ndarray, valid: np.ndarray) -> list[Row]:
    """Rows that run through ``open_backend`` + ``Backend.run`` on host arrays: ONNX Runtime's GPU
    providers and native TensorRT where they import (else a row that says why not), and the torch
    backend on the torch artifact."""

    def run_backend(name: str):
        def prepare(b: int):
            backend = artifacts.backend(name)
            return lambda: backend.run(windows[:b], valid[:b])
        return prepare

    def about(name: str, own_precision: bool = False):
        def describe() -> dict:
            backend = artifacts.backend(name)
            extra = {"backend": backend.description, "backend_batch": backend.preferred_batch}
            if own_precision and backend.plan:
                extra["precision"] = backend.plan.precision
            return extra
        return describe

    rows = []
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        ort_missing = lambda p: None if p in providers else (  # noqa: E731
            f"onnxruntime {ort.__version__} has no {p} (it has {', '.join(providers)}): onnxruntime-gpu is not "
            "installed here")
    except ImportError as exc:
        why = f"onnxruntime does not import: {exc}"
        ort_missing = lambda p: why  # noqa: E731
    # ORT's CUDA provider, and TensorRT for the fp32 layers, may use TF32: their MFU is against TF32's peak.
    rows.append(Row("ort-cuda", "tf32", "onnxruntime", "CUDAExecutionProvider, fp32 graph", "host",
                    run_backend("ort-cuda"), skip=ort_missing("CUDAExecutionProvider"), setup_need=60.0,
                    describe=about("ort-cuda")))
    rows.append(Row("ort-trt", "tf32", "onnxruntime", "TensorrtExecutionProvider, fp32 graph", "host",
                    run_backend("ort-trt"), skip=ort_missing("TensorrtExecutionProvider"), setup_need=300.0,
                    describe=about("ort-trt")))
    trt_missing = None
    if importlib.util.find_spec("tensorrt") is None:
        trt_missing = "tensorrt is not installed here (no module named 'tensorrt')"
    else:
        try:
            from mictag.runtime.engines.tensorrt import import_tensorrt

            import_tensorrt()
        except Exception as exc:
            trt_missing = f"tensorrt does not load: {exc}"[:300]
    rows.append(Row("tensorrt", "fp16", "tensorrt", "native engine, fp16",
                    "host", run_backend("tensorrt"), skip=trt_missing, setup_need=300.0, describe=about("tensorrt")))
    rows.append(Row("torch-backend", "bf16", "torch", "mictag's torch backend (open_backend on the torch artifact)",
                    "host", run_backend("torch-backend"), setup_need=5.0, describe=about("torch-backend", True)))
    return rows


class Table:
    """Runs rows batch by batch against the budget and keeps the JSON on disk up to date."""

    def __init__(self, result: dict, out: Path, budget: Budget, mode: Mode, cuda: bool, reference: np.ndarray,
                 flops: float, window_seconds: float, peaks: dict[str, float] | None, ceilings: dict[str, float]):
        self.result, self.out, self.budget, self.mode, self.cuda = result, out, budget, mode, cuda
        self.reference, self.flops, self.window_seconds = reference, flops, window_seconds
        self.peaks, self.ceilings = peaks, ceilings
        self.compile_seconds: list[float] = []
        self.compiled: set[tuple[str, int]] = set()  # (compiled model, batch) already compiled
        self.rows: list[dict] = result["rows"]

    def phase(self, name: str) -> None:
        """Record when a phase ended (seconds into the budget)."""
        self.result.setdefault("phases_ended_at_seconds", {})[name] = self.budget.spent()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.result, indent=1))
        os.replace(tmp, self.out)

    def run(self, row: Row, batches: list[int], keep: float) -> None:
        """Every batch size of ``row`` that fits the budget with ``keep`` seconds left over, in the
        order given."""
        import torch

        about = {"row": row.name, "engine": row.engine, "mode": row.mode, "precision": row.precision,
                 "inputs": row.inputs}
        if row.skip:
            self._add({**about, "skipped": row.skip})
            return
        setup_need = row.setup_need
        for b in batches:
            compiling = bool(row.compiled) and (row.compiled, b) not in self.compiled
            need = self.mode.eager_need + setup_need + (
                max(self.compile_seconds, default=self.mode.compile_need) if compiling else 0.0)
            if self.budget.left() - keep < need:
                self._add({**about, "batch": b, "skipped": f"time budget: {self.budget.left():.0f} s left, "
                                                           f"{keep:.0f} s kept for what follows, ~{need:.0f} s needed"})
                continue
            setup_need = 0.0
            try:
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    call = row.prepare(b)
                    probs = _numpy(call())
                    setup = time.perf_counter() - t0
                    if row.times_compile:
                        self.compile_seconds.append(setup)
                    if row.compiled:
                        self.compiled.add((row.compiled, b))
                    if row.describe:
                        about.update(row.describe())
                    timing = time_calls(call, self.cuda and row.inputs == "device", self.mode.min_calls,
                                        self.mode.min_seconds, self.mode.warmup)
            except Exception as exc:  # an engine that cannot run this here: say so and go on
                self._add({**about, "batch": b, "error": f"{type(exc).__name__}: {exc}"[:400]})
                continue
            finally:
                call = None
                _free_device_memory()
            wps = b / timing["seconds_per_batch"]
            achieved = wps * self.flops
            peak = self.peaks.get(about["precision"]) if self.peaks else None
            ceiling = self.ceilings.get(about["precision"])
            dp = np.abs(probs - self.reference[:b])
            self._add({**about, "batch": b, "setup_seconds": setup, **timing, "windows_per_s": wps,
                       "x_realtime": wps * self.window_seconds, "achieved_tflops": achieved / 1e12,
                       "mfu": achieved / peak if peak else None,
                       "of_matmul_ceiling": achieved / ceiling if ceiling else None,
                       "max_abs_dp_vs_fp32": float(dp.max()), "mean_abs_dp_vs_fp32": float(dp.mean())})

    def _add(self, entry: dict) -> None:
        self.rows.append(entry)
        self.save()
        name = f"{entry['row']:30s} " + (f"b={entry['batch']:<4d}" if "batch" in entry else " " * 6)
        if "windows_per_s" in entry:
            mfu = f"{100 * entry['mfu']:5.1f}%" if entry["mfu"] is not None else "  -   "
            print(f"{name} {entry['windows_per_s']:10.2f} win/s {entry['x_realtime']:10.1f}x rt  MFU {mfu}  "
                  f"dp {entry['max_abs_dp_vs_fp32']:.1e}  setup {entry['setup_seconds']:.1f} s", flush=True)
        else:
            print(f"{name} {'skipped' if 'skipped' in entry else 'ERROR'}: {entry.get('skipped') or entry['error']}",
                  flush=True)


# -- the scan ---------------------------------------------------------------------------------------
def steady_rate(samples: list[tuple[float, int]], after_windows: int) -> float | None:
    """Windows/s between the first progress report with at least ``after_windows`` scored (compile,
    CUDA-graph warm-up and record are over by then) and the last one; None if too few reports."""
    later = [s for s in samples if s[1] >= after_windows]
    if len(later) < 2 or later[-1][0] <= later[0][0] or later[-1][1] <= later[0][1]:
        return None
    return (later[-1][1] - later[0][1]) / (later[-1][0] - later[0][0])


def fastest_backend(rows: list[dict]) -> tuple[str, float] | None:
    """(row name, windows/s) of the fastest backend row that ran (the ones a scan can use)."""
    best: dict[str, float] = {}
    for r in rows:
        if r.get("inputs") == "host" and "windows_per_s" in r:
            best[r["row"]] = max(best.get(r["row"], 0.0), r["windows_per_s"])
    return max(best.items(), key=lambda kv: kv[1]) if best else None


def scan_row(table: Table, artifacts: Artifacts, library: Library | None, workers: int, library_deadline: float,
             ceiling_seconds: float) -> dict:
    """``mictag scan`` (run_scan) of the generated library with the fastest backend, beside the
    decode-only and engine-only ceilings of scan.py, and which of them bounds it."""
    import scan

    from mictag.runtime.scan.discovery import discover
    from mictag.runtime.scan.pipeline import ScanOptions
    from mictag.runtime.scan.run import ScanRequest, run_scan

    best = fastest_backend(table.rows)
    if best is None:
        return {"skipped": "no backend row ran, so there is no backend to scan with"}
    name = best[0]
    budget = table.budget
    info = library.finish(library_deadline) if library else {}
    table.result["library"] = info
    table.phase("library written")
    if not info.get("files"):
        return {"skipped": "no library file was written in time", "library": info}
    backend = artifacts.backend(name)
    batch = backend.preferred_batch
    engine = scan.engine_ceiling(backend, batch, seconds=ceiling_seconds)
    entries = discover(info["root"])
    decode = scan.decode_ceiling(entries, backend.meta, workers)
    table.phase("scan ceilings")
    model = artifacts.model_for(name)
    del backend
    artifacts.close_backends()  # the scan loads its own
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    summary = run_scan(ScanRequest(info["root"], artifacts.work / "tags.csv", model,
                                   backend="torch" if name == "torch-backend" else name,
                                   options=ScanOptions(workers=workers), overwrite=True),
                       on_progress=lambda p: samples.append((p["elapsed"], p["windows"])),
                       should_stop=lambda: budget.left() < 10.0)
    wall = time.perf_counter() - t0
    table.phase("scan")
    steady = steady_rate(samples, 3 * batch)
    scan_wps = steady or summary.windows / summary.seconds
    ceiling = min(decode["windows_per_s"], engine["windows_per_s"])
    return {"backend_row": name, "backend": summary.backend, "batch": batch, "workers": workers,
            "files": summary.files, "windows": summary.windows, "statuses": summary.statuses,
            "interrupted": summary.interrupted, "model_bytes": Path(model).stat().st_size,
            "scan": {"seconds_with_load": wall, "seconds": summary.seconds,
                     "windows_per_s": summary.windows / summary.seconds,
                     "files_per_s": summary.files / summary.seconds,
                     "steady_windows_per_s": steady,
                     "x_realtime": scan_wps * table.window_seconds},
            "decode_ceiling": decode, "engine_ceiling": engine,
            "bound_by": "decode" if decode["windows_per_s"] < engine["windows_per_s"] else "engine",
            "scan_vs_ceiling": scan_wps / ceiling}


# -- machine ----------------------------------------------------------------------------------------
def machine_info(device) -> dict:
    """engine.py's machine record (CPU model and flags, versions) plus the CPU's one-line summary,
    the GPU and the CUDA stack."""
    import torch

    from engine import machine
    from mictag.cpu import cpu_info

    info = {**machine(), "cpu_describe": cpu_info().describe(), "cuda": torch.version.cuda, "gpu": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_capability=f"{props.major}.{props.minor}",
                    gpu_multiprocessors=props.multi_processor_count, gpu_memory_gib=props.total_memory / 2**30,
                    cudnn=torch.backends.cudnn.version())
        try:
            import subprocess

            query = "driver_version,clocks.max.sm,clocks.sm,power.limit,temperature.gpu"
            line = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
            info["nvidia_smi"] = dict(zip(query.split(","), (v.strip() for v in line[0].split(",")))) if line else None
        except Exception:
            info["nvidia_smi"] = None
    for module in ("triton", "transformers", "onnx", "soundfile", "soxr", "av"):
        try:
            info[module] = importlib.import_module(module).__version__
        except Exception:
            info[module] = None
    return info


def print_table(result: dict) -> None:
    """The short table: one line per row, windows/s per batch, the best x realtime and MFU."""
    batches = result["settings"]["batches"]
    by_row: dict[str, dict] = {}
    for r in result["rows"]:
        entry = by_row.setdefault(r["row"], {"precision": r.get("precision"), "wps": {}, "note": ""})
        if "windows_per_s" in r:
            entry["wps"][r["batch"]] = r
        elif not entry["wps"]:
            entry["note"] = (r.get("skipped") or r.get("error") or "")[:70]
    print("\n" + f"{'row':30s} {'prec':5s} " + " ".join(f"{'b=' + str(b):>9s}" for b in batches)
          + f" {'x rt':>9s} {'MFU':>6s} {'max|dp|':>8s}")
    for name, e in by_row.items():
        cells = " ".join(f"{e['wps'][b]['windows_per_s']:9.1f}" if b in e["wps"] else f"{'-':>9s}" for b in batches)
        if e["wps"]:
            best = max(e["wps"].values(), key=lambda r: r["windows_per_s"])
            mfu = f"{100 * best['mfu']:5.1f}%" if best["mfu"] is not None else "     -"
            dp = max(r["max_abs_dp_vs_fp32"] for r in e["wps"].values())
            print(f"{name:30s} {e['precision']:5s} {cells} {best['x_realtime']:9.0f} {mfu:>6s} {dp:8.1e}")
        else:
            print(f"{name:30s} {str(e['precision']):5s} {e['note']}")
    s = result.get("scan") or {}
    if "skipped" in s:
        print(f"scan: skipped: {s['skipped']}")
    elif s:
        sc = s["scan"]
        steady = f"{sc['steady_windows_per_s']:.1f}" if sc["steady_windows_per_s"] else "-"
        print(f"scan ({s['backend_row']}, {s['files']} files, {s['windows']} windows, {s['workers']} decoders): "
              f"{sc['windows_per_s']:.1f} win/s overall, {steady} steady | decode ceiling "
              f"{s['decode_ceiling']['windows_per_s']:.1f} | engine ceiling {s['engine_ceiling']['windows_per_s']:.1f}"
              f" | bound by {s['bound_by']} | scan/ceiling {s['scan_vs_ceiling']:.2f}")


# -- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", "--tiny", action="store_true", help="CPU, tiny AST, small batches (what CI runs)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present; cpu with --smoke)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default 32 64 128 256 (smoke: 1 2)")
    ap.add_argument("--rows", nargs="+", choices=ROW_NAMES, default=None, help="run only these rows")
    ap.add_argument("--budget-seconds", type=float, default=None,
                    help="hard deadline of the whole run (default 450 on a GPU, 55 with --smoke)")
    ap.add_argument("--reprogrammer", default="unet")
    ap.add_argument("--mapper", default="head")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; smoke: eager)")
    ap.add_argument("--compile-order", type=int, nargs="+", default=None,
                    help="batch sizes of the compiled rows, in this order, so that a budget cut drops the last "
                         "(default 64 128 256 32: one compilation each)")
    ap.add_argument("--clips", type=int, default=None, help="10-s clips in the scan's library (default 400; smoke 4)")
    ap.add_argument("--tracks", type=int, default=None, help="3-6-min tracks in it (default 200; smoke 0)")
    ap.add_argument("--library-seconds", type=float, default=None,
                    help="wait for the library at most this long after the start (default 120; smoke 60)")
    ap.add_argument("--workers", type=int, default=None,
                    help="decode processes of the scan (default: cores - 1; smoke 1)")
    ap.add_argument("--ceiling-seconds", type=float, default=None, help="engine-ceiling run (default 3; smoke 0.5)")
    ap.add_argument("--out", type=Path, default=None, help="the JSON (default results/gpu[-tiny]-<time>.json)")
    ap.add_argument("--out-dir", type=Path, default=None, help="write results/-style names into this folder")
    args = ap.parse_args(argv)
    budget = Budget(args.budget_seconds or (55.0 if args.smoke else 450.0))
    smoke = args.smoke
    mode = SMOKE_MODE if smoke else GPU_MODE
    batches = args.batches or ([1, 2] if smoke else [32, 64, 128, 256])
    cores = os.cpu_count() or 1
    workers = args.workers or (1 if smoke else max(1, cores - 1))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or (args.out_dir or RESULTS) / f"gpu-{'tiny-' if smoke else ''}{stamp}.json"
    work = Path(tempfile.mkdtemp(prefix="mictag-gpu-bench-"))

    # The library first: its writers work (niced) while the engine rows are timed.
    found = decoders()
    missing = [m for m in ("soundfile", "soxr") if found[m]]
    formats = tuple(f for f in ("mp3", "flac", "ogg", "m4a") if f != "m4a" or not found["av"])
    wanted = not args.rows or "torch-backend" in args.rows
    no_scan = None
    if missing:
        no_scan = (f"the decode libraries do not import here ({'; '.join(f'{m}: {found[m]}' for m in missing)}); "
                   "carry their wheels (benchmarks/gpu_wheels.sh) to scan")
    elif not wanted:
        no_scan = "the torch-backend row was not asked for (--rows)"
    library = None
    if not no_scan:
        library = Library(work / "library", args.clips if args.clips is not None else (4 if smoke else 400),
                          args.tracks if args.tracks is not None else (0 if smoke else 200), formats,
                          max(1, min(workers, cores - 1)))
    try:
        return _run(args, budget, mode, batches, workers, out, work, library, no_scan, found)
    finally:
        if library:
            library.close()
        shutil.rmtree(work, ignore_errors=True)  # the library and the exported models


def _run(args, budget: Budget, mode: Mode, batches: list[int], workers: int, out: Path, work: Path,
         library: Library | None, no_scan: str | None, found: dict) -> dict:
    import torch

    from ceilings import block_shapes, torch_ceiling
    from engine import save_result
    from mictag.backbones.ast import ASTConfig
    from mictag.export.onnx import metadata
    from mictag.model.system import SystemConfig, build_system

    smoke = args.smoke
    compile_order = args.compile_order or sorted(batches, key=lambda b: (b < 64, b))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu"))
    cuda = device.type == "cuda"
    # Exact fp32 where fp32 is asked: the reference, and every row's front end (TF32 would lose the
    # fbank's low bands).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    compile_backend = args.compile_backend or ("eager" if smoke else "inductor")

    ast = ASTConfig.tiny() if smoke else ASTConfig()
    cfg = SystemConfig(ast=ast, reprogrammer=args.reprogrammer, mapper=args.mapper)
    torch.manual_seed(0)
    system = build_system(cfg).eval()
    meta = metadata(system, [0.5] * len(cfg.labels), {"precision": "fp32"}, "waveform")
    fb = cfg.fbank
    flops = float(ast.flops_per_window())
    gpu_name = torch.cuda.get_device_name(device) if cuda else None
    peak = chip_peaks(gpu_name)
    result: dict = {
        "benchmark": "gpu", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "complete": False,
        "machine": machine_info(device), "mode": "smoke" if smoke else "full", "device": str(device),
        "model": {"system": cfg.to_dict(), "reprogrammer": args.reprogrammer, "mapper": args.mapper,
                  "parameters": sum(p.numel() for p in system.parameters()), "gflops_per_window": flops / 1e9,
                  "window_seconds": fb.window_seconds, "weights": "random (seed 0)"},
        "peak_flops": peak[1] if peak else None,
        "peak_source": f"datasheet, dense, matched '{peak[0]}'" if peak else "unknown chip: MFU is null",
        "settings": {"batches": batches, "budget_seconds": budget.seconds, "tf32": False,
                     "compile_backend": compile_backend,
                     "compile_order": compile_order, "min_calls": mode.min_calls,
                     "min_seconds": mode.min_seconds, "decoders": found},
        "rows": [], "scan": None, "library": None}
    print(f"gpu benchmark on {gpu_name or device}: {result['model']['parameters'] / 1e6:.2f} M parameters, "
          f"{flops / 1e9:.3g} GFLOP/window, batches {batches}, budget {budget.seconds:.0f} s", flush=True)

    # The matmul ceiling at the AST's block shapes (ceilings.py), beside the datasheet peak.
    tokens = ast.num_patches + 2
    shapes = block_shapes(tokens=tokens, hidden=ast.hidden_size, mlp=ast.mlp_dim, batch=min(batches[0], 32))
    ceilings = {p: torch_ceiling(p, shapes, repeats=3, device=device.type) for p in ("fp32", "bf16", "fp16")}
    result["matmul_ceilings_flops"] = ceilings
    print("matmul ceilings at the AST's shapes: " + ", ".join(f"{p} {v / 1e12:.2f}" for p, v in ceilings.items())
          + " TFLOP/s" + (f"; datasheet bf16 {peak[1]['bf16'] / 1e12:.0f}" if peak else ""), flush=True)

    max_b = max(batches)
    rng = np.random.default_rng(0)
    windows = (0.3 * rng.standard_normal((max_b, fb.window_samples))).astype(np.float32)
    valid = np.full(max_b, fb.window_samples, np.int64)
    x, n = torch.from_numpy(windows).to(device), torch.from_numpy(valid).to(device)
    models = TorchModels(system, device, compile_backend)
    t0 = time.perf_counter()
    with torch.inference_mode():  # the fp32 reference, in chunks of the smallest batch
        fp32 = models.tagger("fp32")
        step = min(batches)
        reference = np.concatenate([_numpy(fp32(x[i : i + step], n[i : i + step])[0]) for i in range(0, max_b, step)])
    result["reference_seconds"] = time.perf_counter() - t0
    table = Table(result, out, budget, mode, cuda, reference, flops, fb.window_seconds, peak[1] if peak else None,
                  ceilings)
    table.phase("set-up, ceilings and reference")
    artifacts = Artifacts(system, meta, work, batches)
    keep_backend = mode.backend_need + (0.0 if no_scan else mode.scan_need)
    try:
        for row in torch_rows(models, x, n, cuda):
            if not args.rows or row.name in args.rows:
                order = [b for b in compile_order if b in batches] if row.compiled else batches
                table.run(row, order, keep_backend)
        models.clear()
        table.phase("torch rows")
        for row in backend_rows(artifacts, windows, valid):
            if not args.rows or row.name in args.rows:
                table.run(row, batches, 0.0 if row.name == "torch-backend" else keep_backend)
        result["export_seconds"] = artifacts.export_seconds
        table.phase("backend rows")
        if no_scan:
            result["scan"] = {"skipped": no_scan}
        elif budget.left() < mode.scan_need / 2:
            result["scan"] = {"skipped": f"time budget: {budget.left():.0f} s left"}
        else:
            try:
                result["scan"] = scan_row(table, artifacts, library, workers,
                                          budget.start + (args.library_seconds or (60.0 if smoke else 120.0)),
                                          args.ceiling_seconds or (0.5 if smoke else 3.0))
            except Exception as exc:
                result["scan"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    finally:
        artifacts.close_backends()
    result["budget_spent_seconds"] = budget.spent()
    result["complete"] = True
    table.save()
    print_table(result)
    saved = save_result("gpu", {k: v for k, v in result.items() if k not in ("benchmark", "time")}, out)
    print(f"{budget.spent():.0f} s of the {budget.seconds:.0f}-s budget", flush=True)
    return saved


if __name__ == "__main__":
    main()
