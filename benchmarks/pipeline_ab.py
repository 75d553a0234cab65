"""Two source trees side by side on the pipeline's ingest ceiling: the model process's CPU time per
window when the decode workers replay one ready window (``benchmarks/pipeline.py``'s ingest part),
the trees taking turns run after run, so that a change in the machine's load falls on both alike.

    git worktree add /tmp/before <commit>
    python benchmarks/pipeline_ab.py /tmp/before . --variants fbank waveform --rounds 5

Each tree runs in a process of its own (its ``benchmarks/pipeline.py`` and ``mictag`` first on the
path; a tree from before the shared-memory feed replays through its own source). Per round and
tree: the best of ``--repeats`` scans of ``--files`` x ``--windows`` replayed windows. Prints one
line per run and the medians; ``--out`` keeps them as JSON with the CPU and its flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, tempfile
from pathlib import Path
root, variant, workers, files, windows, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
sys.path[:0] = [root + "/benchmarks", root]
import pipeline as P

class Entry:
    def __init__(self, p):
        self.path, self.rel, self.size, self.mtime = str(p), p.name, 0, 0.0

def main():
    lib = Path(tempfile.mkdtemp(prefix="mictag-ab-"))
    for i in range(files):
        (lib / f"f{i:03d}-{windows}.wav").touch()  # replay_windows reads the count from the name
    entries = [Entry(p) for p in sorted(lib.iterdir())]
    runs = [P.run_once(entries, variant, workers, "shm", 64, source=P.replay_windows) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["parent_cpu_us_per_window"])
    print(json.dumps({"cpu_us": best["parent_cpu_us_per_window"], "windows_per_s": best["steady_windows_per_s"]}))

if __name__ == "__main__":
    main()
"""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs=2, type=Path, help="the tree before and the tree after")
    ap.add_argument("--variants", nargs="+", default=["fbank", "waveform"], choices=["fbank", "waveform"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
    from engine import machine  # noqa: E402  (the CPU and its flags, as every benchmark records them)

    trees = [str(t.resolve()) for t in args.trees]
    runs: dict = {v: {t: [] for t in trees} for v in args.variants}
    for variant in args.variants:
        for _ in range(args.rounds):
            for tree in trees:
                got = subprocess.run([sys.executable, "-c", CHILD, tree, variant, str(args.workers), str(args.files),
                                      str(args.windows), str(args.repeats)], capture_output=True, text=True, cwd=tree)
                if got.returncode:
                    raise SystemExit(f"{tree}: {got.stderr.strip().splitlines()[-1] if got.stderr.strip() else got.returncode}")
                r = json.loads(got.stdout.strip().splitlines()[-1])
                runs[variant][tree].append(r)
                print(f"{variant:8s} {tree}: {r['cpu_us']:6.1f} us CPU/window, {r['windows_per_s']:7.0f} win/s", flush=True)
    summary = {}
    for variant in args.variants:
        before, after = (statistics.median(r["cpu_us"] for r in runs[variant][t]) for t in trees)
        summary[variant] = {"before_cpu_us": before, "after_cpu_us": after, "after_over_before": after / before}
        print(f"{variant}: median model-process CPU per window {before:.1f} us before, {after:.1f} us after "
              f"(after/before {after / before:.3f})")
    result = {"benchmark": "pipeline_ab", "machine": machine(), "trees": trees, "workers": args.workers,
              "files": args.files, "windows": args.windows, "runs": runs, "summary": summary}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
