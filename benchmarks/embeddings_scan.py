"""What ``--embeddings`` costs a scan: the same library scanned with and without it, the two taking
turns round after round (this machine's load changes; turns make it fall on both alike).

    python benchmarks/embeddings_scan.py                          # the musicnn tagger a user gets
    python benchmarks/embeddings_scan.py --model tagger.onnx --rounds 5 --workers 1

The library is benchmarks/scan.py's (MP3, FLAC, OGG Vorbis and M4A/AAC at 44.1 kHz stereo: 10-s
clips and 3-6-min tracks). Each run is a fresh scan into a new output (nothing resumed); windows/s
is the scan's own (its summary's windows over its seconds). Prints the per-round ratio and the
median; results go to benchmarks/results/embeddings-scan-<time>.json with the CPU and its flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from scan import make_library  # noqa: E402

from mictag.runtime.scan.pipeline import ScanOptions  # noqa: E402
from mictag.runtime.scan.run import ScanRequest, run_scan  # noqa: E402


def one(library: Path, out: Path, model: Path, workers: int, backend: str, embeddings: bool) -> dict:
    request = ScanRequest(library, out / "tags.csv", model, backend, ScanOptions(workers=workers),
                          embeddings=out / "emb.parquet" if embeddings else None)
    s = run_scan(request)
    assert s.failed == 0, s.statuses
    return {"windows": s.windows, "seconds": s.seconds, "windows_per_s": s.windows / s.seconds, "backend": s.backend}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="default: the musicnn-openmic20 tagger (mictag models pull musicnn)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--tracks", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from engine import machine

    model = args.model
    if model is None:
        from mictag.catalog import default_model

        model = default_model(backbone="musicnn")
    work = Path(tempfile.mkdtemp(prefix="mictag-emb-scan-"))
    library = make_library(work / "lib", args.clips, args.tracks)
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    for r in range(args.rounds):
        order = ("without", "with") if r % 2 == 0 else ("with", "without")
        for kind in order:
            out = work / f"{kind}-{r}"
            out.mkdir()
            got = one(library, out, Path(model), args.workers, args.backend, kind == "with")
            runs[kind].append(got)
            print(f"round {r} {kind:7s} embeddings: {got['windows_per_s']:8.1f} windows/s "
                  f"({got['windows']} windows in {got['seconds']:.1f} s, {got['backend']})", flush=True)
    ratios = [w["windows_per_s"] / o["windows_per_s"] for w, o in zip(runs["with"], runs["without"])]
    median = statistics.median(ratios)
    print(f"with/without --embeddings, windows/s per round: {', '.join(f'{x:.3f}' for x in ratios)}; "
          f"median {median:.3f}")
    result = {"benchmark": "embeddings_scan", "machine": machine(), "model": str(model), "workers": args.workers,
              "clips": args.clips, "tracks": args.tracks, "runs": runs, "ratios": ratios, "median_ratio": median}
    out = args.out or HERE / "results" / f"embeddings-scan-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
