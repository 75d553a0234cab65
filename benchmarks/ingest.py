"""The three ways into mictag for an ingestion pipeline, side by side in one run on the same files:
``mictag tag --json FILE`` started once per file (cold: the model loads every time), the service
(``mictag serve``, started once: warm) asked one file at a time and by 8 clients at once, and one
``mictag scan`` of the whole folder.

    python benchmarks/ingest.py                                 # the musicnn tagger a user gets
    python benchmarks/ingest.py --model tagger.onnx --files 24

Per-file latency (median and p95 of the seconds from asking to having the answer) and throughput
(files/s over the whole batch, start-up included for ``tag`` and ``scan``; the service's start-up
is reported apart, as a service pays it once). Results go to benchmarks/results/ingest-<time>.json
with the CPU and its flags.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from scan import make_library  # noqa: E402

from mictag.runtime.scan.discovery import discover  # noqa: E402

MICTAG = [sys.executable, "-m", "mictag"]


def _summary(latencies: list[float], seconds: float) -> dict:
    ordered = sorted(latencies)
    return {"files": len(latencies), "seconds": seconds, "files_per_s": len(latencies) / seconds,
            "latency_median_s": statistics.median(ordered), "latency_p95_s": ordered[int(0.95 * (len(ordered) - 1))]}


def cold_tag(files: list[str], model: str, common: list[str]) -> dict:
    latencies, t0 = [], time.perf_counter()
    for f in files:
        t = time.perf_counter()
        done = subprocess.run([*MICTAG, "tag", "--json", "-q", "--workers", "0", "--model", model, *common, f],
                              capture_output=True, text=True)
        assert done.returncode in (0, 1), done.stderr
        json.loads(done.stdout)
        latencies.append(time.perf_counter() - t)
    return _summary(latencies, time.perf_counter() - t0)


def service(files: list[str], library: Path, model: str, common: list[str], clients: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([*MICTAG, "serve", "--port", str(port), "--root", str(library), "--model", model, *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/v1/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "the service ended"
            time.sleep(0.1)
        startup = time.perf_counter() - t0

        def ask(path: str) -> float:
            t = time.perf_counter()
            req = urllib.request.Request(url + "/v1/tag", json.dumps({"paths": [path]}).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                assert r.status == 200 and json.loads(r.read())["results"]
            return time.perf_counter() - t

        ask(files[0])  # the first request warms the engine (its first batch)
        t1 = time.perf_counter()
        one = [ask(f) for f in files]
        sequential = _summary(one, time.perf_counter() - t1)
        many: list[float] = []
        queue = list(files) * 2

        def client() -> None:
            while queue:
                try:
                    f = queue.pop()
                except IndexError:
                    return
                many.append(ask(f))

        t2 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent = _summary(many, time.perf_counter() - t2)
        with urllib.request.urlopen(url + "/v1/stats", timeout=5) as r:
            stats = json.loads(r.read())
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    return {"startup_s": startup, "one_at_a_time": sequential, f"{clients}_clients": concurrent, "stats": stats}


def scan(library: Path, model: str, common: list[str], n: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="mictag-ingest-scan-")) / "tags.csv"
    t0 = time.perf_counter()
    done = subprocess.run([*MICTAG, "scan", str(library), "--out", str(out), "--model", model, "-q", *common],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    assert done.returncode in (0, 1), done.stderr
    return {"files": n, "seconds": seconds, "files_per_s": n / seconds}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="default: the musicnn-openmic20 tagger (mictag models pull musicnn)")
    ap.add_argument("--files", type=int, default=16, help="10-s clips")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from engine import machine

    model = args.model
    if model is None:
        from mictag.catalog import default_model

        model = default_model(backbone="musicnn")
    model = str(model)
    library = make_library(Path(tempfile.mkdtemp(prefix="mictag-ingest-")) / "lib", args.files, 0)
    files = [e.path for e in discover(library)]
    common = ["--workers", str(args.workers)]
    result = {"benchmark": "ingest", "machine": machine(), "model": model, "files": len(files),
              "cold_tag": cold_tag(files, model, []),
              "service": service(files, library, model, common, args.clients),
              "scan": scan(library, model, common, len(files))}
    c, s, sc = result["cold_tag"], result["service"], result["scan"]
    many = s[f"{args.clients}_clients"]
    print(f"{len(files)} files of 10 s, {Path(model).name}")
    print(f"mictag tag (cold, one process a file): {c['latency_median_s']:.2f} s a file (p95 {c['latency_p95_s']:.2f}), "
          f"{c['files_per_s']:.2f} files/s")
    print(f"mictag serve (warm; start-up {s['startup_s']:.1f} s once): one at a time "
          f"{s['one_at_a_time']['latency_median_s']:.3f} s a file (p95 {s['one_at_a_time']['latency_p95_s']:.3f}), "
          f"{s['one_at_a_time']['files_per_s']:.2f} files/s; {args.clients} clients {many['files_per_s']:.2f} files/s "
          f"(median latency {many['latency_median_s']:.3f} s); {s['stats']['windows_per_call']:.1f} windows an engine call")
    print(f"mictag scan (one process, start-up included): {sc['files_per_s']:.2f} files/s ({sc['seconds']:.1f} s)")
    out = args.out or HERE / "results" / f"ingest-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
