"""`mictag watch`: files copied in slowly are tagged once, after they stop growing; a restart
tags what arrived meanwhile; nothing twice; a scan of the same output waits for the watch; both
with the system's notifications and with polling."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mictag.cli import main

pytest.importorskip("watchdog")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model(tiny_ast_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("watch-model") / "f.onnx"
    assert CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--fbank-out", str(out)]).exit_code == 0
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    import soundfile as sf

    from library import signal as tone

    folder = tmp_path_factory.mktemp("sources")
    files = []
    for i in range(4):
        path = folder / f"take {i}.flac"
        sf.write(path, tone(6.0 + i, 44100, 2, 40 + i), 44100, subtype="PCM_16")
        files.append(path)
    return files


def rows(out: Path) -> list[dict]:
    if not out.exists():
        return []
    with out.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def start(folder: Path, out: Path, model: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mictag", "watch", str(folder), "--out", str(out), "--model", str(model),
           "--settle", "1", "--workers", "1", "--precision", "fp32", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.parent / (out.name + ".mictag.json")).exists():  # the catch-up scan has begun
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return proc


def wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def slow_copy(src: Path, dst: Path, out: Path, steps: int = 6, pause: float = 0.5) -> None:
    """Write ``src`` to ``dst`` in ``steps`` pieces, ``pause`` s apart; no row for it meanwhile."""
    data = src.read_bytes()
    size = -(-len(data) // steps)
    with open(dst, "wb") as f:
        for i in range(0, len(data), size):
            f.write(data[i : i + size])
            f.flush()
            time.sleep(pause)
            assert dst.name not in {r["path"] for r in rows(out)}, "tagged while it was still growing"


@pytest.mark.parametrize("mode", ["notify", "poll"])
def test_growing_files_are_tagged_once_after_they_settle_and_a_restart_catches_up(mode, model, sources, tmp_path):
    folder, out = tmp_path / "inbox", tmp_path / "tags.csv"
    folder.mkdir()
    extra = ("--poll", "--interval", "0.5") if mode == "poll" else ()
    proc = start(folder, out, model, *extra)
    try:
        slow_copy(sources[0], folder / "first.flac", out)
        wait_for(lambda: "first.flac" in {r["path"] for r in rows(out)})
        (row,) = rows(out)
        assert int(row["size_bytes"]) == sources[0].stat().st_size and row["status"] == "ok"
        # a scan of the same output while the watch runs: refused, the watch holds the lock
        busy = CliRunner().invoke(main, ["scan", str(folder), "--out", str(out), "--model", str(model)])
        assert busy.exit_code == 2 and "Traceback" not in busy.output
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 130, proc.stderr.read()
    # while it is down: two more files arrive (and one is renamed)
    shutil.copy(sources[1], folder / "second.flac")
    shutil.copy(sources[2], folder / "third.flac")
    (folder / "first.flac").rename(folder / "first renamed.flac")
    os.utime(folder / "second.flac", (time.time() - 60, time.time() - 60))
    os.utime(folder / "third.flac", (time.time() - 60, time.time() - 60))
    proc = start(folder, out, model, *extra)
    try:
        wait_for(lambda: {r["path"] for r in rows(out)} >= {"second.flac", "third.flac", "first renamed.flac"})
        slow_copy(sources[3], folder / "fourth.flac", out, steps=4)
        wait_for(lambda: "fourth.flac" in {r["path"] for r in rows(out)})
        time.sleep(2.5)  # more settle periods: nothing is tagged a second time
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 143
    paths = [r["path"] for r in rows(out)]
    assert sorted(paths) == ["first renamed.flac", "fourth.flac", "second.flac", "third.flac"], paths
    renamed = next(r for r in rows(out) if r["path"] == "first renamed.flac")
    assert renamed["reused_from"] == "first.flac"  # the same bytes: its row, not a second scoring
