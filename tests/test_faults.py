"""The scan under faults, in real subprocesses with real signals: one writer per output, a full disk,
a vanished output folder, SIGINT/SIGTERM/SIGHUP, kill -9, and files that change under the scan.
After each: one clear line, the right exit code, no traceback or resource-tracker warning, no
live process left of the scan, and a table that a rerun completes with every file once."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mictag.cli import main

FILES = 300


def _shm_names() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.fixture(scope="module", autouse=True)
def nothing_left_in_dev_shm():
    """After every fault here, /dev/shm holds nothing of the scans': their window slots are shared
    memory without a name (a named segment, ``psm_*``, would need someone alive to unlink it)."""
    before = _shm_names()
    yield
    left = {n for n in _shm_names() - before if n.startswith("psm_") or "mictag" in n}
    assert not left, f"left in /dev/shm: {sorted(left)}"


@pytest.fixture(scope="module")
def setup(tiny_ast_dir, tmp_path_factory):
    """A tiny tagger and a library slow enough to be stopped midway (300 files of 8 s)."""
    base = tmp_path_factory.mktemp("faults")
    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--fbank-out", str(base / "f.onnx")])
    assert result.exit_code == 0, result.output
    lib = base / "lib"
    lib.mkdir()
    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal(8 * 16000)).astype(np.float32)
    for i in range(FILES):
        sf.write(lib / f"f{i:03d}.flac", np.roll(x, 1000 * i), 16000)
    return base / "f.onnx", lib


def scan_cmd(model, lib, out, *extra) -> list[str]:
    return [sys.executable, "-m", "mictag", "scan", str(lib), "--out", str(out), "--model", str(model),
            "--workers", "1", "--batch-size", "1", "--precision", "fp32", *map(str, extra)]


def rows(out: Path) -> list[str]:
    if not out.exists():
        return []
    with out.open(newline="", encoding="utf-8") as f:
        return [r["path"] for r in csv.DictReader(f)]


def data_rows(out: Path) -> int:
    try:
        return max(0, out.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pids) -> set[int]:
    """The ones still running (a zombie has ended: only its exit status waits to be collected)."""
    left = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            left.add(pid)
    return left


def wait_for_rows(proc, out: Path, n: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while data_rows(out) < n:
        assert proc.poll() is None, f"the scan ended before {n} rows: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, f"fewer than {n} rows after {seconds} s"
        time.sleep(0.01)


def start(cmd) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "leaked" not in stderr and "resource_tracker" not in stderr, stderr


def no_process_left(pids, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pids), f"left running: {alive(pids)}"


def interrupt(model, lib, out, act, after_rows: int = 10) -> tuple[int, str, set[int]]:
    """Start a scan, let ``after_rows`` rows land, do ``act(proc)`` to it, and wait for its end:
    (exit code, stderr, the processes it had started)."""
    proc = start(scan_cmd(model, lib, out))
    try:
        wait_for_rows(proc, out, after_rows)
        family = descendants(proc.pid)
        act(proc)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err or "", family


def rerun_completes(model, lib, out) -> None:
    done = subprocess.run(scan_cmd(model, lib, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    clean(done.stderr)
    paths = rows(out)
    assert len(paths) == FILES and len(set(paths)) == FILES  # every file exactly once


# -- 1. one writer per output ------------------------------------------------------------------
def test_a_second_scan_on_the_same_output_stops_at_once_naming_the_first(setup, tmp_path):
    model, lib = setup
    out = tmp_path / "tags.csv"
    first = start(scan_cmd(model, lib, out))
    try:
        wait_for_rows(first, out, 5)
        t0 = time.monotonic()
        second = subprocess.run(scan_cmd(model, lib, out), capture_output=True, text=True, timeout=60)
        assert time.monotonic() - t0 < 30 and first.poll() is None
        assert second.returncode == 2
        line = second.stderr.strip()
        assert len(line.splitlines()) == 1 and f"pid {first.pid}" in line and "--wait" in line, line
        clean(second.stderr)
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    # --wait queues behind whoever holds the output (here the test itself, so that a loaded
    # machine cannot finish the first scan before the waiting one reaches the lock)
    from mictag.output.lock import OutputLock

    with OutputLock(out):
        waiting = start(scan_cmd(model, lib, out, "--wait"))
        try:
            time.sleep(3.0)
            assert waiting.poll() is None  # queued
        except BaseException:
            os.killpg(waiting.pid, signal.SIGKILL)
            raise
    _, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0 and "waiting for the scan with pid" in err, err
    clean(err)
    paths = rows(out)
    assert len(paths) == FILES and len(set(paths)) == FILES


def test_the_lock_of_a_killed_scan_is_free_at_once(setup, tmp_path):
    model, lib = setup
    out = tmp_path / "tags.csv"
    first = start(scan_cmd(model, lib, out))
    wait_for_rows(first, out, 5)
    family = descendants(first.pid) | {first.pid}
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    no_process_left(family)
    rerun_completes(model, lib, out)


# -- 2. write failures -------------------------------------------------------------------------
def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


INJECTED = r"""
import errno, sys
import mictag.output.journal as results
real, budget = results._write_all, [int(sys.argv[1])]
def failing(fd, data):
    budget[0] -= len(data)
    if budget[0] < 0:
        results.os.write(fd, data[: len(data) // 2])  # half a row reaches the file, as on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")
    real(fd, data)
results._write_all = failing
from mictag.cli import main
main(sys.argv[2:])
"""


def test_a_full_disk_is_one_sentence_and_the_rerun_completes(setup, tmp_path):
    model, lib = setup
    disk = tmp_path / "disk"
    mounted = _tmpfs(disk, "20k")
    out = disk / "tags.csv"
    try:
        if mounted:  # a real full device
            done = subprocess.run(scan_cmd(model, lib, out), capture_output=True, text=True, timeout=300)
        else:  # no mounting here: the writes fail at the file layer after 20 KB
            args = scan_cmd(model, lib, out)[3:]
            done = subprocess.run([sys.executable, "-c", INJECTED, "20000", *args], capture_output=True, text=True,
                                  timeout=300)
        assert done.returncode == 2, done.stderr
        line = done.stderr.strip()
        assert len(line.splitlines()) == 1 and "cannot write" in line and "no space left" in line, line
        assert "rerun the same command" in line
        clean(done.stderr)
        written = rows(out)
        assert 0 < len(written) < FILES
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        rerun_completes(model, lib, out)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)])


def test_a_vanished_output_folder_is_one_sentence(setup, tmp_path):
    model, lib = setup
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "tags.csv"
    code, err, family = interrupt(model, lib, out, lambda proc: shutil.rmtree(folder), after_rows=5)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "deleted or moved" in err, err
    clean(err)
    no_process_left(family)
    folder.mkdir()
    rerun_completes(model, lib, out)


# -- 3. signals --------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_finishes_what_is_in_progress_and_says_how_far(setup, tmp_path, sig):
    model, lib = setup
    out = tmp_path / "tags.csv"
    code, err, family = interrupt(model, lib, out, lambda proc: os.killpg(proc.pid, sig))  # as a terminal does
    assert family, "the scan had decode workers"
    assert code == 128 + sig, err
    (line,) = err.strip().splitlines()
    n = len(rows(out))
    assert line == f"interrupted: {n} of {FILES} files done; rerun the same command to resume"
    assert 10 <= n < FILES
    clean(err)
    no_process_left(family)
    rerun_completes(model, lib, out)


def test_a_second_ctrl_c_stops_at_once(setup, tmp_path):
    model, lib = setup
    out = tmp_path / "tags.csv"

    def twice(proc):
        os.killpg(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGINT)

    code, err, family = interrupt(model, lib, out, twice)
    assert code == 130 and err.strip().startswith("interrupted: "), err
    clean(err)
    no_process_left(family)
    rerun_completes(model, lib, out)


def test_kill_9_leaves_no_decode_worker(setup, tmp_path):
    model, lib = setup
    out = tmp_path / "tags.csv"
    # the scan alone, not its group: the workers must follow it by themselves
    code, err, family = interrupt(model, lib, out, lambda proc: os.kill(proc.pid, signal.SIGKILL), after_rows=5)
    assert code == -signal.SIGKILL
    clean(err)  # the resource tracker outlives the scan: it would name anything left to clean up
    no_process_left(family, seconds=5)
    rerun_completes(model, lib, out)


def test_the_python_api_ends_its_workers_when_the_caller_stops(setup):
    from mictag import Tagger

    model, lib = setup
    files = sorted(lib.glob("*.flac"))
    before = descendants(os.getpid())
    results = Tagger(model, precision="fp32").tag_paths(files, workers=2)
    assert next(results).status == "ok"
    workers = {pid for pid in descendants(os.getpid()) - before
               if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()}
    assert len(workers) == 2
    results.close()  # the caller stops iterating
    no_process_left(workers)


# -- 5. files that change under the scan ---------------------------------------------------------
def test_a_file_deleted_after_listing_is_an_error_row_saying_so(tmp_path):
    from mictag.frontends import FbankConfig
    from mictag.runtime.scan.decode import Failed, decode_file

    (message,) = decode_file(0, str(tmp_path / "gone.flac"), FbankConfig(target_frames=128), "fbank", 128, 1.0)
    assert message == Failed(0, "the file was deleted after the library was listed")


def test_a_file_still_being_written_is_partial_and_redone(tmp_path):
    from mictag.frontends import FbankConfig
    from mictag.runtime.scan.decode import Done, Window, decode_file

    path = tmp_path / "growing.wav"
    x = (0.2 * np.random.default_rng(0).standard_normal(5 * 16000)).astype(np.float32)
    sf.write(path, x, 16000, subtype="FLOAT")
    before = os.stat(path)
    messages = decode_file(0, str(path), FbankConfig(target_frames=128), "fbank", 128, 1.0)
    first = next(messages)
    assert isinstance(first, Window)
    with path.open("ab") as f:  # the writer goes on while the scan reads
        f.write(b"\0" * 64000)
    *_, done = messages
    assert isinstance(done, Done) and done.status == "partial"
    assert "changed while it was read" in done.note and "still being written" in done.note
    assert (done.size_bytes, done.mtime) == (before.st_size, before.st_mtime)  # the row records what the read began with


@pytest.mark.parametrize("code, phrase", [
    (28, "no space left"), (122, "quota"), (5, "I/O error"), (30, "read-only"), (2, "deleted or moved"),
    (13, "permission is denied"),
])
def test_every_write_failure_says_what_and_what_to_do(tmp_path, monkeypatch, code, phrase):
    import errno

    from mictag.output import journal
    from mictag.output.formats import CsvWriter
    from mictag.output.journal import OutputError
    from mictag.output.rows import FileResult

    if code == 122 and not hasattr(errno, "EDQUOT"):
        pytest.skip("no EDQUOT here")

    def failing(fd, data):
        raise OSError(code, os.strerror(code))

    writer = CsvWriter(tmp_path / "t.csv", ["guitar"], fresh=True)
    monkeypatch.setattr(journal, "_write_all", failing)
    with pytest.raises(OutputError) as info:
        writer.write(FileResult("a.wav", 1, 0.0, 1.0, 1, "ok", "", np.array([0.5])))
    message = str(info.value)
    assert message.startswith(f"cannot write {tmp_path / 't.csv'}: ") and phrase in message
    assert "rerun the same command" in message and len(message.splitlines()) == 1
    writer.close(quiet=True)


def test_a_scan_on_a_locked_output_stops_before_it_loads_anything(setup, tmp_path):
    """Whoever holds the lock (here this process), a scan on that output, --ray included, exits 2."""
    from mictag.output.lock import OutputLock

    model, lib = setup
    out = tmp_path / "tags.csv"
    with OutputLock(out):
        for extra in ([], ["--ray"]):
            done = subprocess.run(scan_cmd(model, lib, out, *extra), capture_output=True, text=True, timeout=120)
            assert done.returncode == 2 and f"pid {os.getpid()}" in done.stderr, done.stderr
            clean(done.stderr)
    assert not out.exists()
