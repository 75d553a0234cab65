"""Front-end benchmark: decode + downmix + resample per format (× realtime, one core), and each
backbone's front end (the AST's Kaldi fbank, musicnn's mel) per window in numpy (the runtime's
streaming path) vs torch vs inside the ONNX graph.

    python benchmarks/frontend.py              # 60-s files, 44.1 kHz stereo
    python benchmarks/frontend.py --seconds 5  # smoke run

Results go to benchmarks/results/frontend-<time>.json.
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

from engine import save_result  # noqa: E402
from scan import FORMATS, _music, _write  # noqa: E402

from mictag import frontends  # noqa: E402
from mictag.audio import AudioStream  # noqa: E402
from mictag.frontends import MUSICNN_MEL  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--windows", type=int, default=8, help="windows per fbank timing")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mictag-frontend-"))
    audio = _music(args.seconds, np.random.default_rng(0))
    decode = {}
    for fmt in (*FORMATS, "wav"):
        path = work / f"x.{fmt}"
        if fmt == "wav":
            import soundfile as sf

            sf.write(path, audio, 44100, subtype="PCM_16")
        else:
            _write(path, audio)
        seconds = best_of(lambda: sum(c.size for c in AudioStream(path)))
        decode[fmt] = {"seconds": seconds, "x_realtime": args.seconds / seconds,
                       "decoder": AudioStream(path).info.decoder}
        print(f"decode {fmt:5s} {args.seconds / seconds:8.0f}x realtime ({decode[fmt]['decoder']})", flush=True)

    fronts = {"ast": frontends.AST_FBANK, "musicnn": MUSICNN_MEL}
    fbank = {name: frontend_per_window(cfg, args.windows, work) for name, cfg in fronts.items()}
    for name, timings in fbank.items():
        window_s = fronts[name].window_seconds
        for k, v in timings.items():
            print(f"{name:7s} front end {k:10s} {v * 1e3:7.2f} ms per {window_s:.2f}-s window "
                  f"({window_s / v:6.0f}x realtime)", flush=True)
    return save_result("frontend", {"seconds_of_audio": args.seconds, "decode": decode,
                                    "fbank_seconds_per_window": fbank["ast"],
                                    "frontend_seconds_per_window": fbank}, args.out)


def frontend_per_window(cfg, n: int, work: Path) -> dict[str, float]:
    """Seconds per window of one front end: numpy (the streaming path), torch, in an ONNX graph."""
    rng = np.random.default_rng(1)
    wave = (0.2 * rng.standard_normal((n, cfg.window_samples))).astype(np.float32)
    timings = {"numpy": best_of(lambda: [frontends.log_mel(w, cfg) for w in wave]) / n}
    try:
        import onnxruntime as ort
        import torch

        from mictag.model.fbank import Fbank
    except ImportError:
        return timings
    module = Fbank(cfg, normalize=False)
    x = torch.from_numpy(wave)
    with torch.inference_mode():
        timings["torch"] = best_of(lambda: module(x)) / n
    path = work / f"{cfg.kind}.onnx"
    torch.onnx.export(module, (x[:1],), str(path), input_names=["w"], output_names=["f"],
                      dynamic_axes={"w": {0: "b"}, "f": {0: "b"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    timings["onnx-graph"] = best_of(lambda: session.run(None, {"w": wave})) / n
    return timings


if __name__ == "__main__":
    main()
