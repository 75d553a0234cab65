"""What keying rows by content costs (mictag.runtime.scan.content): sha256 of a file's bytes per GB and
per file, and a scan with the digests against the same scan without them, side by side.

    python benchmarks/content_digest.py [--gb 1] [--small 5000] [--model M --audio DIR]

The files are written here first, so they are read from the page cache (a cold read costs what the
disk gives, and the decoders read the same bytes anyway). Results go to
benchmarks/results/content_digest-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import save_result  # noqa: E402


def _digest_all(paths: list[Path]) -> float:
    from mictag.runtime.scan.content import file_sha256

    t0 = time.perf_counter()
    for p in paths:
        st = p.stat()
        assert file_sha256(str(p), st.st_size, st.st_mtime)
    return time.perf_counter() - t0


def _scan_seconds(model: Path, audio: Path, work: Path, digests: bool) -> float:
    """One scan into a fresh output; without ``digests`` the hashing is switched off."""
    from mictag.runtime.scan import run as scan
    from mictag.runtime.scan.content import ReusePlan
    from mictag.runtime.scan.pipeline import ScanOptions

    saved = scan.BackgroundHasher, scan.plan_reuse
    if not digests:
        class NoHasher:
            def __init__(self, entries):
                pass

            def digest(self, path):
                return None

            def close(self):
                pass

        scan.BackgroundHasher, scan.plan_reuse = NoHasher, lambda entries, known: ReusePlan(scan=list(entries))
    try:
        t0 = time.perf_counter()
        scan.run_scan(scan.ScanRequest(audio, work / f"t-{digests}-{time.time_ns()}.csv", model, options=ScanOptions(workers=1)))
        return time.perf_counter() - t0
    finally:
        scan.BackgroundHasher, scan.plan_reuse = saved


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="big files to hash, in GB (50 MB each)")
    ap.add_argument("--small", type=int, default=5000, help="small files (4 KB) for the per-file cost")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--audio", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mictag-digest-"))
    big = []
    for i in range(max(1, int(args.gb * 1000 / 50))):
        p = work / f"big{i}.bin"
        p.write_bytes(os.urandom(50 * 1000 * 1000))
        big.append(p)
    small = []
    (work / "small").mkdir()
    for i in range(args.small):
        p = work / "small" / f"s{i}.bin"
        p.write_bytes(os.urandom(4096))
        small.append(p)
    total = sum(p.stat().st_size for p in big)
    big_s = min(_digest_all(big) for _ in range(args.repeats))
    small_s = min(_digest_all(small) for _ in range(args.repeats))
    result = {"gb_hashed": total / 1e9, "seconds_per_gb": big_s / (total / 1e9), "gb_per_s": total / 1e9 / big_s,
              "small_files": len(small), "us_per_small_file": 1e6 * small_s / len(small)}
    print(f"sha256: {result['gb_per_s']:.2f} GB/s ({result['seconds_per_gb']:.2f} s per GB, page cache); "
          f"{result['us_per_small_file']:.0f} us per 4-KB file", flush=True)
    if args.model and args.audio:
        os.environ.setdefault("MICTAG_HOME", str(work / "home"))
        _scan_seconds(args.model, args.audio, work, True)  # warm: compiled model, page cache
        runs = {"with": [], "without": []}
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            for key in runs:
                runs[key].append(_scan_seconds(args.model, args.audio, work, key == "with"))
        files = [p for p in args.audio.rglob("*") if p.is_file()]
        result["scan"] = {"model": args.model.name, "files": len(files),
                          "bytes": sum(p.stat().st_size for p in files),
                          "seconds_with_digests": min(runs["with"]), "seconds_without": min(runs["without"]),
                          "overhead": min(runs["with"]) / min(runs["without"]) - 1, "runs": runs}
        print(f"scan of {len(files)} files: {min(runs['with']):.2f} s with digests, {min(runs['without']):.2f} s "
              f"without ({100 * result['scan']['overhead']:+.1f}%)", flush=True)
    for p in big:
        p.unlink()
    return save_result("content_digest", result, args.out)


if __name__ == "__main__":
    main()
