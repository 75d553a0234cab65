"""Local scan vs `mictag scan --ray` on the same library and model, side by side in one run.

    python benchmarks/ray_scan.py --tiny                 # tiny model, generated library
    python benchmarks/ray_scan.py --model m.onnx --clips 40 --tracks 4

Ray runs with 1 and 2 CPUs (a fresh local instance each); the local scan with 1 and 2 decode
workers. Ray start-up is reported apart from the scan. Results: benchmarks/results/ray-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import save_result  # noqa: E402
from scan import _tiny_model, make_library  # noqa: E402

from mictag.runtime.scan.pipeline import ScanOptions  # noqa: E402
from mictag.runtime.scan.run import ScanRequest, run_scan  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--tracks", type=int, default=2)
    ap.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    import ray

    work = Path(tempfile.mkdtemp(prefix="mictag-ray-bench-"))
    model = args.model if args.model and not args.tiny else _tiny_model(work)
    library = make_library(work / "library", args.clips, args.tracks)
    rows = []
    for n in args.cpus:
        t0 = time.perf_counter()
        s = run_scan(ScanRequest(library, work / f"local-{n}.csv", model, options=ScanOptions(workers=n), overwrite=True))
        seconds = time.perf_counter() - t0
        rows.append({"mode": "local", "cpus": n, "seconds": seconds, "files_per_s": s.files / seconds,
                     "windows_per_s": s.windows / seconds})
        t0 = time.perf_counter()
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        startup = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            s = run_scan(ScanRequest(library, work / f"ray-{n}.csv", model, options=ScanOptions(), overwrite=True,
                                     use_ray=True))
            seconds = time.perf_counter() - t0
        finally:
            ray.shutdown()
        rows.append({"mode": "ray", "cpus": n, "seconds": seconds, "ray_startup_seconds": startup,
                     "files_per_s": s.files / seconds, "windows_per_s": s.windows / seconds})
        local, dist = rows[-2], rows[-1]
        print(f"{n} CPU: local {local['files_per_s']:.2f} files/s | ray {dist['files_per_s']:.2f} files/s "
              f"(+{startup:.1f} s start-up) | ray/local {dist['files_per_s'] / local['files_per_s']:.2f}", flush=True)
    return save_result("ray", {"files": s.files, "windows": s.windows, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
