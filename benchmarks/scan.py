"""Scan benchmark: end-to-end `mictag scan` throughput on a generated library, beside the two
ceilings that bound it, measured in the same run: decode-only (decode + resample + fbank, all
workers) and engine-only (the model on ready windows). The report names the bounding stage.

    python benchmarks/scan.py --model tagger-fbank.onnx                  # default library
    python benchmarks/scan.py --model m.onnx --clips 20 --tracks 2 --workers 1 2 4
    python benchmarks/scan.py --tiny                                      # smoke: builds a tiny model

The library mixes MP3, FLAC, OGG Vorbis and M4A/AAC, 44.1 kHz stereo: 10-s clips and 3-6-min
tracks. Results go to benchmarks/results/scan-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mictag.runtime.engines.open import open_backend  # noqa: E402
from mictag.runtime.scan.discovery import discover  # noqa: E402
from mictag.runtime.scan.decode import Done, Window, decode_file  # noqa: E402
from mictag.runtime.scan.pipeline import ScanOptions  # noqa: E402
from mictag.runtime.scan.run import ScanRequest, run_scan  # noqa: E402

FORMATS = ("mp3", "flac", "ogg", "m4a")


def _music(seconds: float, rng: np.random.Generator, rate: int = 44100) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(110, 440)
    x = sum(0.3 * 0.6 ** h * np.sin(2 * np.pi * f0 * (h + 1) * t) for h in range(5))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t) ** 2) + 0.02 * rng.standard_normal(t.size)
    return np.stack([x, 0.9 * x], axis=1).astype(np.float32)


def _write(path: Path, audio: np.ndarray, rate: int = 44100) -> None:
    if path.suffix == ".m4a":
        import av

        with av.open(str(path), "w") as out:
            stream = out.add_stream("aac", rate=rate, layout="stereo")
            for start in range(0, audio.shape[0], 4096):  # one huge frame crashes the encoder
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[start : start + 4096].T),
                                                   format="fltp", layout="stereo")
                frame.sample_rate = rate
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        return
    import soundfile as sf

    kind = {".mp3": ("MP3", "MPEG_LAYER_III"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}[path.suffix]
    # In blocks: one multi-minute write crashes libsndfile's Vorbis encoder.
    with sf.SoundFile(path, "w", rate, audio.shape[1], format=kind[0], subtype=kind[1]) as f:
        for start in range(0, audio.shape[0], 65536):
            f.write(audio[start : start + 65536])


def make_library(root: Path, clips: int, tracks: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    (root / "tracks").mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        _write(root / "clips" / f"clip{i:03d}.{FORMATS[i % len(FORMATS)]}", _music(10.0, rng))
    for i in range(tracks):
        _write(root / "tracks" / f"track{i:02d}.{FORMATS[i % len(FORMATS)]}", _music(rng.uniform(180, 360), rng))
    return root


def decode_ceiling(entries, meta: dict, workers: int) -> dict:
    """Decode + resample + fbank + windowing only, in ``workers`` processes."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from mictag.runtime.scan.decode_pool import single_threaded_children

    t0 = time.perf_counter()
    with single_threaded_children(), ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        counts = list(pool.map(_decode_count, [(e.path, meta) for e in entries]))
    seconds = time.perf_counter() - t0
    windows = sum(c[0] for c in counts)
    audio = sum(c[1] for c in counts)
    return {"seconds": seconds, "files_per_s": len(entries) / seconds, "windows_per_s": windows / seconds,
            "x_realtime": audio / seconds}


def _decode_count(job) -> tuple[int, float]:
    from mictag.frontends import frontend_from_dict

    path, meta = job
    cfg = frontend_from_dict(meta["features"])
    n, duration = 0, 0.0
    for msg in decode_file(0, path, cfg, meta.get("variant", "waveform"), cfg.target_frames, 30.0):
        if isinstance(msg, Window):
            n += 1
        elif isinstance(msg, Done):
            duration = msg.duration
    return n, duration


def engine_ceiling(backend, batch: int, seconds: float = 3.0) -> dict:
    from mictag.frontends import frontend_from_dict

    cfg = frontend_from_dict(backend.meta["features"])
    shape = (batch, cfg.target_frames, cfg.num_mel_bins) if backend.variant == "fbank" else (batch, cfg.window_samples)
    x = np.random.default_rng(0).uniform(-10, 2, shape).astype(np.float32)
    valid = np.full(batch, shape[1], np.int64)
    backend.run(x, valid)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        backend.run(x, valid)
        n += 1
    return {"batch": batch, "windows_per_s": n * batch / (time.perf_counter() - t0)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--tiny", action="store_true", help="export a tiny random zero-training tagger to use")
    ap.add_argument("--library", type=Path, help="scan this library instead of generating one")
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--tracks", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from engine import save_result  # here, not at the top: spawned workers import this module without torch

    work = Path(tempfile.mkdtemp(prefix="mictag-scan-bench-"))
    model = args.model
    if args.tiny or model is None:
        model = _tiny_model(work)
    library = args.library or make_library(work / "library", args.clips, args.tracks)
    backend = open_backend(model)
    entries = discover(library)
    batch = args.batch_size or backend.preferred_batch
    engine = engine_ceiling(backend, batch)
    rows = []
    for w in args.workers:
        decode = decode_ceiling(entries, backend.meta, w)
        t0 = time.perf_counter()
        summary = run_scan(ScanRequest(library, work / f"tags-{w}.csv", model,
                                       options=ScanOptions(workers=w, batch_size=batch), overwrite=True))
        seconds = time.perf_counter() - t0
        scan = {"seconds": seconds, "files_per_s": summary.files / seconds, "windows_per_s": summary.windows / seconds}
        ceiling = min(decode["windows_per_s"], engine["windows_per_s"])
        rows.append({"workers": w, "scan": scan, "decode_ceiling": decode, "engine_ceiling": engine,
                     "bound_by": "decode" if decode["windows_per_s"] < engine["windows_per_s"] else "engine",
                     "scan_vs_ceiling": scan["windows_per_s"] / ceiling})
        print(f"workers {w}: scan {scan['files_per_s']:.2f} files/s {scan['windows_per_s']:.2f} win/s | decode "
              f"{decode['windows_per_s']:.2f} win/s | engine {engine['windows_per_s']:.2f} win/s | bound by "
              f"{rows[-1]['bound_by']} | scan/ceiling {rows[-1]['scan_vs_ceiling']:.2f}", flush=True)
    name = f"scan-{'tiny' if model.parent == work else 'model'}"
    return save_result(name, {"model": str(model), "backend": backend.name, "files": len(entries), "rows": rows},
                       args.out)


def _tiny_model(work: Path) -> Path:
    """A tiny random AudioSet-shaped AST exported as the zero-training tagger (fbank input)."""
    import torch

    from mictag.export.onnx import export_onnx, metadata
    from mictag.frontends import FbankConfig
    from mictag.backbones.ast import ASTConfig
    from mictag.model.system import SystemConfig, build_system

    torch.manual_seed(0)
    ast = ASTConfig.tiny()
    cfg = SystemConfig(ast=ast, fbank=FbankConfig(target_frames=ast.input_frames), mapper="many-to-one")
    system = build_system(cfg).eval()
    path = work / "tiny-fbank.onnx"
    export_onnx(system, path, metadata(system, [0.5] * 20, {}, "fbank"), "fbank")
    return path


if __name__ == "__main__":
    main()
