"""Two taggers side by side on one library: `mictag scan` end to end, alternating A B A B in one
run (this machine is noisy), each scan to a fresh output.

    python benchmarks/tagger_versions.py --models v1.onnx v2.onnx --library DIR [--repeats 2] \
        [--scan-option=--precision --scan-option=fp32]

Reports each model's windows/s (windows written to its rows over the scan's wall time, start-up
included, as a user sees it), the best of its repeats, and B's rate as a ratio of A's. Results go
to benchmarks/results/tagger-versions-<time>.json with the CPU and its flags.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mictag.cpu import cpu_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def scan_once(model: Path, library: Path, options: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tags.csv"
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mictag", "scan", str(library), "--model", str(model),
                               "--out", str(out), *options], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode not in (0, 1):
            raise SystemExit(f"scan with {model} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        with out.open(newline="", encoding="utf-8") as f:
            windows = sum(int(r["windows"] or 0) for r in csv.DictReader(f))
    return {"seconds": seconds, "windows": windows, "windows_per_s": windows / seconds,
            "summary": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs=2, required=True, metavar=("A", "B"))
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scan-option", action="append", default=[], help="passed to mictag scan (repeatable)")
    args = parser.parse_args(argv)
    runs = {str(m): [] for m in args.models}
    for _ in range(args.repeats):
        for model in args.models:
            runs[str(model)].append(scan_once(model, args.library, args.scan_option))
            r = runs[str(model)][-1]
            print(f"{model.name}: {r['windows']} windows in {r['seconds']:.1f} s, {r['windows_per_s']:.1f} windows/s",
                  flush=True)
    best = {m: max(r["windows_per_s"] for r in rs) for m, rs in runs.items()}
    a, b = (str(m) for m in args.models)
    result = {"cpu": cpu_info().describe(), "library": str(args.library), "options": args.scan_option,
              "runs": runs, "best_windows_per_s": best, "ratio_b_over_a": best[b] / best[a]}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"tagger-versions-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"B/A = {result['ratio_b_over_a']:.3f} (best of {args.repeats}); {path}")


if __name__ == "__main__":
    main()
