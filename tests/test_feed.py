"""The feed from decode workers to the model process: windows through shared-memory slots reach the
model exactly as the in-process path cuts them (every window, of the right file, in the right
place), slots bound memory and are recycled, a dead worker's replacement never writes a slot the
scan still holds, and the shared memory has no name anyone would have to unlink."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from library import make_library
from mictag import frontends as F
from mictag.cli import main
from mictag.runtime.engines.base import Backend
from mictag.runtime.scan.decode import Done, Failed, Window
from mictag.runtime.scan.decode_pool import SLOTS_PER_WORKER, DecodePool
from mictag.runtime.scan.discovery import discover
from mictag.runtime.scan.pipeline import Scanner, ScanOptions
from mictag.runtime.scan.shm_slots import SlotArena
from mictag.runtime.scan.windows import window_shape

CFG = F.FbankConfig(target_frames=128)  # 1.28-s windows: the library's long file has over a hundred


class ProbeBackend(Backend):
    """Scores that are fingerprints of each window's content: its mean, its mean |x|, a projection
    on a fixed random vector (any sample moved or changed shows), its first value and its valid
    count. Equal scores mean the model saw equal windows."""

    name = "probe"

    def __init__(self, variant: str, batch: int = 5, delay: float = 0.0):
        self.meta = {"labels": ["mean", "abs", "projection", "first", "valid"], "thresholds": [0.5] * 5,
                     "variant": variant, "features": CFG.to_dict()}
        self.preferred_batch, self.delay = batch, delay
        self.vector = np.random.default_rng(7).standard_normal(int(np.prod(window_shape(CFG, variant))))

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.delay:
            time.sleep(self.delay)
        # window by window: a matrix product's rounding could depend on the batch's other rows
        return np.array([[w.mean(), np.abs(w).mean(), np.dot(w, self.vector) / w.size, w[0], n]
                         for w, n in zip(x.reshape(len(x), -1).astype(np.float64), valid)])


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """The scan tests' library of real files: every format, a long file, empty, broken and partial ones."""
    root = tmp_path_factory.mktemp("feed") / "music"
    make_library(root)
    return root, discover(root)


def _scan(lib, variant: str, **options) -> dict:
    _, entries = lib
    backend = ProbeBackend(variant, delay=options.pop("delay", 0.0))
    scanner = Scanner(backend, ScanOptions(hop_seconds=0.64, segments=True, **options))
    return {r.path: r for r in scanner.scan(entries)}


@pytest.mark.parametrize("variant", ["waveform", "fbank"])
def test_workers_feed_the_model_the_windows_the_in_process_path_cuts(lib, variant):
    reference = _scan(lib, variant, workers=0)
    assert max(r.windows for r in reference.values()) > 8 * SLOTS_PER_WORKER  # slots are reused many times over
    for feed, workers in (("shm", 2), ("shm", 1), ("pickle", 2)):
        got = _scan(lib, variant, workers=workers, feed=feed)
        assert set(got) == set(reference)
        for path, ref in reference.items():
            r = got[path]
            assert (r.status, r.error, r.windows, r.duration_s) == (ref.status, ref.error, ref.windows,
                                                                    ref.duration_s), (feed, path)
            if ref.scores is None:
                assert r.scores is None, (feed, path)
                continue
            if variant == "waveform":  # samples: bit for bit
                np.testing.assert_array_equal(r.scores, ref.scores, err_msg=f"{feed} {path}")
                assert r.segments == ref.segments, (feed, path)  # every window, in its place
                continue
            # Frames: a worker's fbank runs on single-threaded BLAS, this process's on several, so
            # the last float digit may differ; a window out of place would differ by far more.
            np.testing.assert_allclose(r.scores, ref.scores, rtol=0, atol=1e-5, err_msg=f"{feed} {path}")
            assert [(g["start"], g["end"]) for g in r.segments] == [(g["start"], g["end"]) for g in ref.segments]
            np.testing.assert_allclose([g["scores"] for g in r.segments], [g["scores"] for g in ref.segments],
                                       rtol=0, atol=1e-5, err_msg=f"{feed} {path}")


def test_a_slow_model_makes_the_workers_wait_for_slots_and_loses_nothing(lib):
    """A model slower than decoding: the workers run out of slots and wait; every window arrives."""
    reference = _scan(lib, "waveform", workers=0)
    got = _scan(lib, "waveform", workers=2, feed="shm", delay=0.01)
    assert {p: (r.windows, r.segments) for p, r in got.items()} == {p: (r.windows, r.segments)
                                                                     for p, r in reference.items()}


# -- the pool itself, with a source that writes known values -----------------------------------------
def numbered_windows(fid, path, cfg, variant, hop, chunk_seconds, alloc=None):
    """A decode source for the pool tests: ``path`` is "N" (N windows, window i of file f filled
    with f * 1000 + i) or "crash" (the worker dies, as in a native decoder's crash)."""
    if path == "crash":
        os._exit(3)
    shape = window_shape(cfg, variant)
    for i in range(int(path)):
        data = alloc() if alloc else np.empty(shape, np.float32)
        data[...] = fid * 1000 + i
        yield Window(fid, i, i, data, shape[0], (0.0, 1.0))
    yield Done(fid, 1.0, int(path), "ok", "")


def _pool(jobs, workers=1, feed="shm") -> DecodePool:
    return DecodePool(jobs, workers, CFG.to_dict(), "waveform", CFG.target_frames, 1.0, feed=feed,
                      source=numbered_windows)


def _next(pool: DecodePool, seconds: float = 60.0) -> tuple:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        msg = pool.get(timeout=0.2)
        if msg is not None:
            return msg
    raise AssertionError(f"no message in {seconds} s")


def _nothing_for(pool: DecodePool, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pool.get(timeout=0.1) is not None:
            return False
    return True


def _value(pool: DecodePool, msg: Window) -> float:
    row = np.empty(window_shape(CFG, "waveform"), np.float32)
    pool.fill(row, msg)
    assert row.min() == row.max()  # one window, whole
    return float(row[0])


def test_slots_bound_what_is_in_flight_and_come_back():
    pool = _pool([(0, "40")])
    try:
        held = [_next(pool) for _ in range(SLOTS_PER_WORKER)]
        assert all(isinstance(m, Window) for m in held)
        assert _nothing_for(pool, 1.0)  # every slot is the scan's: the worker waits
        assert _value(pool, held[0]) == 0.0
        nxt = _next(pool)  # one slot back, one window more
        assert isinstance(nxt, Window) and nxt.index == SLOTS_PER_WORKER
        assert _nothing_for(pool, 0.5)
        values = [_value(pool, m) for m in held[1:] + [nxt]]
        while isinstance(msg := _next(pool), Window):
            values.append(_value(pool, msg))
        assert isinstance(msg, Done) and values == [float(i) for i in range(1, 40)]
    finally:
        pool.close()


def test_a_dead_workers_replacement_never_gets_the_slots_the_scan_still_holds():
    pool = _pool([(0, str(SLOTS_PER_WORKER)), (1, "crash"), (2, "3")])
    try:
        held = [_next(pool) for _ in range(SLOTS_PER_WORKER)]
        assert [(type(m), m.fid, m.index) for m in held] == [(Window, 0, i) for i in range(SLOTS_PER_WORKER)]
        assert isinstance(_next(pool), Done)
        error = _next(pool)
        assert isinstance(error, Failed) and error.fid == 1 and "crashed" in error.reason and "exit code 3" in error.reason
        # The replacement has no free slot: file 2 waits for the scan, and file 0's windows stay whole.
        assert _nothing_for(pool, 2.0)
        assert [_value(pool, m) for m in held] == [float(i) for i in range(SLOTS_PER_WORKER)]
        got = [_next(pool) for _ in range(3)]
        assert [(type(m), m.fid, m.index) for m in got] == [(Window, 2, i) for i in range(3)]
        assert [_value(pool, m) for m in got] == [2000.0, 2001.0, 2002.0]
        assert isinstance(_next(pool), Done)
    finally:
        pool.close()


def test_the_pickle_feed_sends_arrays():
    pool = _pool([(0, "3")], feed="pickle")
    try:
        msgs = [_next(pool) for _ in range(3)]
        assert all(isinstance(m.data, np.ndarray) for m in msgs)
        assert [_value(pool, m) for m in msgs] == [0.0, 1.0, 2.0]
    finally:
        pool.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_windows_live_in_memory_without_a_name():
    """The workers map the arena as a memfd: nothing in /dev/shm to unlink, on any exit."""
    shm = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    pool = _pool([(0, "100"), (1, "100")], workers=2)
    try:
        _next(pool)
        workers = [s.process.pid for s in pool._seats]
        for pid in workers:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "/memfd:mictag-windows" in maps and "/dev/shm" not in maps
    finally:
        pool.close()
    if os.path.isdir("/dev/shm"):
        assert not {n for n in set(os.listdir("/dev/shm")) - shm if "mictag" in n or n.startswith("psm_")}


def test_an_arena_hands_out_whole_windows():
    arena = SlotArena.create(3, (4, 2))
    try:
        views = [arena.view(i) for i in range(3)]
        assert [arena.index_of(v) for v in views] == [0, 1, 2]
        views[1][...] = 5
        assert not views[0].any() and not views[2].any() and (views[1] == 5).all()
        with pytest.raises(ValueError):
            arena.index_of(views[1][1:])
    finally:
        del views
        arena.close()


# -- a real model: the scan's rows are those of the in-process path ---------------------------------
@pytest.fixture(scope="module")
def models(tiny_ast_dir, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("models")
    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--out", str(out / "tagger.onnx"),
                                       "--fbank-out", str(out / "tagger-fbank.onnx")])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("model", ["tagger.onnx", "tagger-fbank.onnx"])
def test_a_scan_through_worker_slots_writes_the_rows_of_the_in_process_scan(lib, models, tmp_path, model):
    import csv

    root, _ = lib
    tables = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}.csv"
        result = CliRunner().invoke(main, ["scan", str(root), "--out", str(out), "--model", str(models / model),
                                           "--workers", str(workers), "--precision", "fp32", "--hop", "0.64"])
        assert result.exit_code == 1, result.output  # the library's broken files
        with out.open(newline="", encoding="utf-8") as f:
            tables[workers] = {r["path"]: r for r in csv.DictReader(f)}
    assert tables[0].keys() == tables[2].keys()
    for path, ref in tables[0].items():
        row = tables[2][path]
        for key, value in ref.items():
            if value and key not in ("path", "status", "error", "tags", "content_sha256", "reused_from"):
                assert float(row[key]) == pytest.approx(float(value), abs=1e-5), (path, key)
            else:
                assert row[key] == value, (path, key)


def test_the_pipeline_benchmark_reports_both_feeds(tmp_path):
    """A smoke run of benchmarks/pipeline.py (it lives beside the other benchmarks' smoke runs in
    spirit; no timing is asserted)."""
    pytest.importorskip("torch")  # its result writer comes from benchmarks/engine.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import pipeline

    result = pipeline.main(["--files", "3", "--windows", "3", "--workers", "1", "--variants", "waveform",
                            "--batch-size", "2", "--repeats", "1", "--ingest-windows", "100",
                            "--out", str(tmp_path / "p.json")])
    assert {r["feed"] for r in result["rows"]} == {r["feed"] for r in result["ingest"]} == {"pickle", "shm"}
    for row in result["rows"] + result["ingest"]:
        assert row["windows"] == (9 if row in result["rows"] else 100) and row["windows_per_s"] > 0
        assert row["parent_cpu_us_per_window"] > 0
    assert result["cpu"] and "cpu_flags" in result["machine"] and set(result["projection"]) == {"pickle", "shm"}


class PipelinedProbe(ProbeBackend):
    """The probe as a GPU backend behaves: ``submit`` stages a copy and returns before scoring;
    the scores are computed only when fetched. Counts how many batches were in flight at once."""

    in_flight = 2

    def __init__(self, variant: str):
        super().__init__(variant)
        self.outstanding = self.most_outstanding = 0

    def submit(self, x, valid):
        from mictag.runtime.engines.base import Submitted

        staged, counts = x.copy(), valid.copy()  # the caller may reuse x at once
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)

        def fetch():
            self.outstanding -= 1
            return ProbeBackend.run(self, staged, counts)

        return Submitted(len(x), fetch)

    def run(self, x, valid):
        return self.submit(x, valid).result()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_pipelined_backend_scores_every_window_in_its_place(lib, workers):
    """With two batches in flight (batch n+1 staged while n computes), every file's scores and
    segments equal those of the one-at-a-time path, and nothing is left in flight."""
    _, entries = lib
    reference = _scan(lib, "waveform", workers=workers)
    backend = PipelinedProbe("waveform")
    scanner = Scanner(backend, ScanOptions(hop_seconds=0.64, segments=True, workers=workers))
    got = {r.path: r for r in scanner.scan(entries)}
    assert backend.most_outstanding == 2 and backend.outstanding == 0
    assert set(got) == set(reference)
    for path, ref in reference.items():
        assert (got[path].status, got[path].windows) == (ref.status, ref.windows), path
        if ref.scores is not None:
            np.testing.assert_array_equal(got[path].scores, ref.scores, err_msg=path)
            assert got[path].segments == ref.segments, path


def noisy_windows(fid, path, cfg, variant, hop, chunk_seconds, alloc=None):
    """numbered_windows, after writing as a native decoder does (straight to descriptor 2) and as
    Python does (sys.stderr)."""
    os.write(2, b"NATIVE-DECODER-NOISE\n")
    print("PYTHON-WORKER-MESSAGE", file=sys.stderr, flush=True)
    yield from numbered_windows(fid, path, cfg, variant, hop, chunk_seconds, alloc)


_NOISY_POOL = """
import sys, time
sys.path.insert(0, {tests!r})
from test_feed import CFG, noisy_windows
from mictag.runtime.scan.decode_pool import DecodePool
pool = DecodePool([(0, "2")], 1, CFG.to_dict(), "waveform", CFG.target_frames, 1.0, feed="pickle", source=noisy_windows)
kinds, deadline = [], time.monotonic() + 60
while "done" not in kinds and time.monotonic() < deadline:
    msg = pool.get(timeout=0.2)
    if msg is not None:
        kinds.append(type(msg).__name__.lower().replace("window", "win").replace("failed", "error"))
pool.close()
print(kinds)
"""


@pytest.mark.parametrize("keep", [False, True])
def test_native_decoder_text_on_stderr_is_dropped_python_messages_kept(keep):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "MICTAG_DECODER_STDERR"}
    if keep:
        env["MICTAG_DECODER_STDERR"] = "1"
    code = _NOISY_POOL.format(tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['win', 'win', 'done']"
    assert "PYTHON-WORKER-MESSAGE" in out.stderr
    assert ("NATIVE-DECODER-NOISE" in out.stderr) == keep


def old_style_windows(fid, path, cfg, variant, hop, chunk_seconds, alloc=None):
    """A source that still speaks in bare tuples: the pool must say so, not wait for ever."""
    yield ("win", fid, 0, 0, np.zeros(window_shape(cfg, variant), np.float32), 1, (0.0, 1.0))


def test_a_source_that_sends_no_decode_message_fails_the_pool_instead_of_hanging_it():
    from mictag.runtime.scan.decode_pool import PoolFailed

    pool = DecodePool([(0, "1")], 1, CFG.to_dict(), "waveform", CFG.target_frames, 1.0, feed="pickle",
                      source=old_style_windows)
    try:
        msg = _next(pool)
        assert isinstance(msg, PoolFailed) and "not a decode message" in msg.reason
    finally:
        pool.close()


def test_an_open_ended_pool_waits_for_files_and_outlives_a_crash():
    """A service's pool: idle workers wait instead of exiting; a file that crashes its worker is an
    error for that file alone, and the replacement takes the next files."""
    pool = DecodePool([], 2, CFG.to_dict(), "waveform", CFG.target_frames, 1.0, feed="shm", source=numbered_windows,
                      open_ended=True)
    try:
        assert _nothing_for(pool, 1.0)  # no file, no message, and no PoolIdle: the workers wait
        for round_, jobs in enumerate(([(0, "2")], [(1, "crash"), (2, "3")], [(3, "1")])):
            pool.add(jobs)
            want = {fid for fid, _ in jobs}
            finished: dict[int, object] = {}
            values: dict[int, list[float]] = {fid: [] for fid in want}
            while set(finished) != want:
                msg = _next(pool)
                if isinstance(msg, Window):
                    values[msg.fid].append(_value(pool, msg))
                else:
                    finished[msg.fid] = msg
            for fid, path in jobs:
                if path == "crash":
                    assert isinstance(finished[fid], Failed) and "crashed" in finished[fid].reason
                else:
                    assert isinstance(finished[fid], Done)
                    assert sorted(values[fid]) == [fid * 1000.0 + i for i in range(int(path))], round_
            assert _nothing_for(pool, 0.5)
    finally:
        pool.close()
