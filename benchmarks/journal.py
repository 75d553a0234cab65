"""What safety costs: the output lock and the journal's fsync on a scan of many small files,
measured side by side in one run (same library, same tiny model, alternating, best of N).

    python benchmarks/journal.py                 # 2,000 files of 0.5 s
    python benchmarks/journal.py --files 200     # smoke run

Modes: ``default`` (lock + unbuffered rows + fsync at most once a second and at the end);
``fsync-every-row`` (what syncing each row would cost); ``no-lock-no-fsync`` (the lock taken by
nobody and no fsync at all: the floor). Results go to benchmarks/results/journal-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import save_result  # noqa: E402


@contextlib.contextmanager
def mode(name: str):
    from mictag.output import journal as results
    from mictag.runtime.scan import run as scan

    saved = results.SYNC_SECONDS, results.os.fsync, scan.OutputLock
    try:
        if name == "fsync-every-row":
            results.SYNC_SECONDS = 0.0
        elif name == "no-lock-no-fsync":
            results.SYNC_SECONDS = float("inf")
            results.os.fsync = lambda fd: None

            class NoLock:
                def __init__(self, *a, **k):
                    pass

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    return None

            scan.OutputLock = NoLock
        yield
    finally:
        results.SYNC_SECONDS, results.os.fsync, scan.OutputLock = saved


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    import soundfile as sf
    import torch
    import transformers
    from click.testing import CliRunner

    from mictag.cli import main as cli
    from mictag.runtime.scan.pipeline import ScanOptions
    from mictag.runtime.scan.run import ScanRequest, run_scan

    work = Path(tempfile.mkdtemp(prefix="mictag-journal-"))
    torch.manual_seed(0)
    cfg = transformers.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 max_length=128, num_mel_bins=128, num_labels=527, layer_norm_eps=1e-6)
    transformers.ASTForAudioClassification(cfg).save_pretrained(work / "ast")
    result = CliRunner().invoke(cli, ["export", "--ast", str(work / "ast"), "--fbank-out", str(work / "f.onnx")])
    assert result.exit_code == 0, result.output
    lib = work / "lib"
    lib.mkdir()
    x = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    for i in range(args.files):
        sf.write(lib / f"f{i:05d}.wav", np.roll(x, i), 16000)
    modes = ("default", "fsync-every-row", "no-lock-no-fsync")
    best = {m: float("inf") for m in modes}
    for r in range(args.repeats):
        for m in modes[r % 3:] + modes[: r % 3]:  # rotated: no mode always runs first
            with mode(m):
                t0 = time.perf_counter()
                s = run_scan(ScanRequest(lib, work / f"{m}.csv", work / "f.onnx", "ort-cpu", ScanOptions(workers=1),
                                         overwrite=True))
                best[m] = min(best[m], time.perf_counter() - t0)
                assert s.files == args.files
        print(f"repeat {r + 1}: " + ", ".join(f"{m} {best[m]:.2f} s" for m in modes), flush=True)
    floor = best["no-lock-no-fsync"]
    rows = [{"mode": m, "seconds": best[m], "files_per_s": args.files / best[m],
             "overhead_vs_floor": best[m] / floor - 1, "ms_per_file_over_floor": 1e3 * (best[m] - floor) / args.files}
            for m in modes]
    for r in rows:
        print(f"{r['mode']:18s} {r['seconds']:6.2f} s  {r['files_per_s']:7.1f} files/s  "
              f"+{100 * r['overhead_vs_floor']:5.1f}%  ({r['ms_per_file_over_floor']:+.3f} ms/file)")
    direct = direct_costs(work)
    print("direct: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in direct.items()))
    return save_result("journal" + ("-tiny" if args.files < 1000 else ""),
                       {"files": args.files, "rows": rows, "direct_seconds": direct}, args.out)


def direct_costs(work: Path, n: int = 200) -> dict:
    """The pieces on their own: taking and releasing the lock, one fsync of a journal, one row."""
    import os

    from mictag.output.lock import OutputLock

    t0 = time.perf_counter()
    for _ in range(n):
        with OutputLock(work / "lock-bench.csv"):
            pass
    lock = (time.perf_counter() - t0) / n
    fd = os.open(work / "fsync-bench.csv", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    row = b"x" * 200 + b"\n"
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(fd, row)
    write = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(fd, row)
        os.fsync(fd)
    fsync = (time.perf_counter() - t0) / n - write
    os.close(fd)
    return {"lock_take_and_release": lock, "row_write": write, "fsync": fsync}


if __name__ == "__main__":
    main()
