"""Pipeline (feed) benchmark: how fast windows get from the decode workers into the model process,
with a null backend (zeros at once), so that only the feed is measured.

    python benchmarks/pipeline.py                                  # 40 files x 10 windows, 1 and 2 workers
    python benchmarks/pipeline.py --workers 1 2 4 --repeats 5
    python benchmarks/pipeline.py --feeds pickle shm               # both feeds side by side (the default)

Two parts, each for both model inputs (``waveform``: 164,080 float32 samples, 656 KB a window;
``fbank``: 1024 x 128 float32 frames, 512 KB, the fbank computed in the worker):

- **feed**: a real scan (``Scanner``, decode workers, batches across files) of a library of
  16-kHz mono WAV files, the cheapest audio to decode, so that the feed, not the decoder, is
  what is left. Windows/s in total and per decode worker; the model process's own CPU time per
  window (``time.process_time``: its main and reader threads), whose inverse is what it could
  ingest on a core of its own; and the decode workers' CPU per window (from ``/proc``), whose
  inverse is what one worker delivers per core. CPU times are what a loaded machine distorts least.
- **ingest**: the same scan where each worker replays one ready window (no decoding, no fbank):
  what one process ingests when windows come as fast as the workers can hand them over.

Rates are the steady state: windows scored between the model's first and last call, over that
time (worker start-up excluded); the best of ``--repeats`` runs. The feeds are ``pickle`` (each
window pickled through the worker's pipe: the feed before shared memory) and ``shm`` (windows
written into shared-memory slots, only their number crosses the pipe); where the runtime has no
``feed`` option (the code before), the one feed it has is reported as ``pickle``. Last, for each
feed, the share of a core the model process needs at ``--target`` waveform windows/s (a GPU's
rate). Results go to benchmarks/results/pipeline-<time>.json, with the CPU and its flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mictag.frontends import AST_FBANK  # noqa: E402
from mictag.runtime.scan.decode import Done, Window  # noqa: E402
from mictag.runtime.engines.base import Backend  # noqa: E402
from mictag.runtime.scan.discovery import discover  # noqa: E402
from mictag.runtime.scan.pipeline import Scanner, ScanOptions  # noqa: E402

VARIANTS = ("waveform", "fbank")
WINDOW_SECONDS = AST_FBANK.target_frames * AST_FBANK.frame_shift / AST_FBANK.sample_rate  # 10.24 s between starts


TICK = os.sysconf("SC_CLK_TCK")


def _worker_pids() -> list[int]:
    """This process's spawned multiprocessing children (its decode workers), from /proc."""
    me, pids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


def _cpu_seconds(pid: int) -> float | None:
    """user + system CPU of ``pid`` so far (None once it has been reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


class NullBackend(Backend):
    """Scores nothing: zeros at once. Records, at every call, the time, the windows, this process's
    CPU time and its decode workers' (so the steady state can be cut out of a run)."""

    name = "null"

    def __init__(self, variant: str, batch: int):
        self.meta = {"labels": [f"l{i}" for i in range(20)], "thresholds": [0.5] * 20, "variant": variant,
                     "features": AST_FBANK.to_dict()}
        self.preferred_batch = batch
        self.calls: list[tuple[float, int, float, float]] = []
        self._workers: list[int] | None = None

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self._workers is None and sys.platform.startswith("linux"):
            self._workers = _worker_pids()
        cpu = [_cpu_seconds(p) for p in self._workers or ()]
        workers_cpu = sum(cpu) if cpu and None not in cpu else None  # None: a worker has ended
        self.calls.append((time.perf_counter(), len(x), time.process_time(), workers_cpu))
        return np.zeros((len(x), len(self.meta["labels"])), np.float32)


def replay_windows(fid, path, cfg, variant, hop, chunk_seconds, alloc=None):
    """A decode source without decoding: the file's windows (``path`` names how many) are one
    ready window, written into the feed's slot (``alloc``) or sent as an array. Module level, so a
    spawned worker can import it."""
    n = int(Path(path).stem.rsplit("-", 1)[1])
    shape = (cfg.target_frames, cfg.num_mel_bins) if variant == "fbank" else (cfg.window_samples,)
    ready = _READY.get(shape)
    if ready is None:
        ready = _READY[shape] = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for i in range(n):
        data = alloc() if alloc else np.empty(shape, np.float32)
        data[...] = ready
        yield Window(fid, i, i * hop, data, shape[0], (i * WINDOW_SECONDS, (i + 1) * WINDOW_SECONDS))
    yield Done(fid, n * WINDOW_SECONDS, n, "ok", "", 0, 0.0)


_READY: dict = {}


def make_library(root: Path, files: int, windows: int) -> Path:
    """``files`` 16-kHz mono 16-bit WAVs of exactly ``windows`` 10.24-s windows each."""
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seconds = windows * WINDOW_SECONDS
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    for i in range(files):
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(110, 880) * t) + 0.02 * rng.standard_normal(n)
        sf.write(root / f"f{i:03d}.wav", x.astype(np.float32), 16000, subtype="PCM_16")
    return root


def _feeds_supported() -> bool:
    return "feed" in {f.name for f in dataclasses.fields(ScanOptions)}


def _source_supported() -> bool:
    return "source" in inspect.signature(Scanner).parameters


def run_once(entries, variant: str, workers: int, feed: str, batch: int, source=None) -> dict:
    """One scan of ``entries`` through the feed: its steady rate (between the model's first and
    last call) and, over the same span, the CPU time per window of the model process (main and
    reader threads) and of the decode workers."""
    backend = NullBackend(variant, batch)
    opts = {"workers": workers, "batch_size": batch}
    if _feeds_supported():
        opts["feed"] = feed
    kwargs = {"source": source} if source is not None else {}
    scanner = Scanner(backend, ScanOptions(**opts), **kwargs)
    t0 = time.perf_counter()
    results = list(scanner.scan(entries))
    wall = time.perf_counter() - t0
    assert all(r.status == "ok" for r in results), [r.error for r in results if r.status != "ok"][:3]
    calls = backend.calls
    windows = sum(c[1] for c in calls)
    steady = sum(c[1] for c in calls[1:])  # the windows that arrived between the first call and the last
    (t_first, _, cpu_first, wcpu_first), (t_last, _, cpu_last, _) = calls[0], calls[-1]
    span = t_last - t_first
    if steady == 0 or span <= 0:
        raise SystemExit("too few windows for a steady state: use more --files or --windows")
    # The workers' CPU up to the last call they all lived through (they exit once the files run out).
    alive = [i for i, c in enumerate(calls) if c[3] is not None]
    worker_us = None
    if wcpu_first is not None and len(alive) > 1 and sum(c[1] for c in calls[1 : alive[-1] + 1]):
        worker_us = 1e6 * (calls[alive[-1]][3] - wcpu_first) / sum(c[1] for c in calls[1 : alive[-1] + 1])
    return {"windows": windows, "seconds": wall, "windows_per_s": windows / wall, "steady_windows_per_s": steady / span,
            "parent_cpu_us_per_window": 1e6 * (cpu_last - cpu_first) / steady, "worker_cpu_us_per_window": worker_us}


def measure(entries, variant: str, workers: int, feeds: list[str], batch: int, repeats: int,
            source=None) -> list[dict]:
    """One row per feed: the best of ``repeats`` runs, the feeds taking turns run by run so that a
    change in the machine's load falls on all of them alike."""
    runs: dict[str, list[dict]] = {feed: [] for feed in feeds}
    for _ in range(repeats):
        for feed in feeds:
            runs[feed].append(run_once(entries, variant, workers, feed, batch, source))
    rows = []
    for feed, mine in runs.items():
        best = max(mine, key=lambda r: r["steady_windows_per_s"])
        cpu = min(r["parent_cpu_us_per_window"] for r in mine)
        # all workers' CPU over the windows they cut: what a window costs the worker that cuts it
        wcpu = [r["worker_cpu_us_per_window"] for r in mine if r["worker_cpu_us_per_window"]]
        rows.append({"variant": variant, "feed": feed, "workers": workers, "windows": best["windows"],
                     "windows_per_s": best["steady_windows_per_s"],
                     "per_worker_windows_per_s": best["steady_windows_per_s"] / workers,
                     "median_windows_per_s": statistics.median(r["steady_windows_per_s"] for r in mine),
                     "whole_run_windows_per_s": best["windows_per_s"],
                     "parent_cpu_us_per_window": cpu, "parent_ingest_ceiling_windows_per_s": 1e6 / cpu,
                     "worker_cpu_us_per_window": min(wcpu) if wcpu else None,
                     "per_worker_ceiling_windows_per_s": 1e6 / min(wcpu) if wcpu else None,
                     "runs_windows_per_s": [r["steady_windows_per_s"] for r in mine]})
    return rows


def _line(kind: str, row: dict) -> str:
    worker = (f"; a worker {row['worker_cpu_us_per_window']:5.0f} us CPU/window "
              f"-> {row['per_worker_ceiling_windows_per_s']:6.0f} win/s per core"
              if row["per_worker_ceiling_windows_per_s"] else "")
    return (f"{kind:6s} {row['variant']:8s} {row['feed']:6s} workers {row['workers']}: "
            f"{row['windows_per_s']:7.1f} win/s ({row['per_worker_windows_per_s']:6.1f} per worker); model process "
            f"{row['parent_cpu_us_per_window']:5.0f} us CPU/window -> ingests "
            f"{row['parent_ingest_ceiling_windows_per_s']:6.0f} win/s on a core{worker}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--windows", type=int, default=10, help="10.24-s windows per file")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--feeds", nargs="+", default=["pickle", "shm"], choices=["pickle", "shm"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--batch-size", type=int, default=64, help="a GPU backend's batch (TorchBackend on CUDA: 64)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ingest-windows", type=int, default=2000, help="windows per ingest run (replayed)")
    ap.add_argument("--no-ingest", action="store_true")
    ap.add_argument("--target", type=float, default=2300.0, help="windows/s a GPU wants (for the projection)")
    ap.add_argument("--label", default="", help="a name for this code state (e.g. before/after)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from engine import save_result  # here, not at the top: spawned workers re-import this module
    from mictag.cpu import cpu_info

    feeds = args.feeds if _feeds_supported() else ["pickle"]
    cpu = cpu_info()
    print(f"CPU: {cpu.describe()}; flags: {' '.join(cpu.shown_flags)}", flush=True)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="mictag-pipeline-bench-"))
    entries = discover(make_library(work / "library", args.files, args.windows))
    rows, ingest = [], []
    for variant in args.variants:
        for workers in args.workers:
            for row in measure(entries, variant, workers, feeds, args.batch_size, args.repeats):
                rows.append(row)
                print(_line("feed", row), flush=True)
    if not args.no_ingest and _source_supported():
        per_file = 50
        files = max(1, args.ingest_windows // per_file)
        replay = [dataclasses.replace(entries[0], path=str(work / f"replay{i:04d}-{per_file}"), rel=f"r{i}")
                  for i in range(files)]
        for variant in args.variants:
            for workers in args.workers:
                for row in measure(replay, variant, workers, feeds, args.batch_size, args.repeats, replay_windows):
                    ingest.append(row)
                    print(_line("ingest", row), flush=True)
    projection = {}
    for feed in feeds:  # what the model process's share of a core is at the GPU's rate
        mine = [r for r in ingest or rows if r["feed"] == feed and r["variant"] == "waveform"]
        if mine:
            us = max(r["parent_cpu_us_per_window"] for r in mine)  # the worst of the worker counts
            projection[feed] = {"parent_cpu_us_per_window": us, "one_process_windows_per_s": 1e6 / us,
                                "core_share_at_target": args.target * us / 1e6,
                                "measured_windows_per_s": max(r["windows_per_s"] for r in mine)}
            print(f"model process, {feed}: {us:.0f} us CPU per waveform window -> one process ingests "
                  f"{1e6 / us:.0f} win/s on a core (measured: {projection[feed]['measured_windows_per_s']:.0f} "
                  f"win/s); at {args.target:.0f} win/s it needs {args.target * us / 1e6:.2f} of a core", flush=True)
    print(f"load average at end: {os.getloadavg()}", flush=True)
    name = f"pipeline{'-' + args.label if args.label else ''}"
    return save_result(name, {"label": args.label, "cpu": cpu.describe(), "load_average": os.getloadavg(),
                              "files": args.files, "windows_per_file": args.windows, "batch": args.batch_size,
                              "repeats": args.repeats, "target_windows_per_s": args.target, "rows": rows,
                              "ingest": ingest, "projection": projection}, args.out)


if __name__ == "__main__":
    main()
