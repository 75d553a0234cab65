"""Special files never block a scan: named pipes, sockets, devices (also behind symlinks) are passed
over at listing time without being opened, and said so in one line; a stop signal ends a scan
within seconds even while the listing waits on the file system. Real subprocesses, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from library import read_table, signal as tone

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")


@pytest.fixture(scope="module")
def model(tiny_tagger) -> Path:
    return tiny_tagger


def _library(root: Path) -> tuple[Path, list[str]]:
    root.mkdir()
    (root / "album").mkdir()
    for name in ("one.flac", "album/two.wav"):
        sf.write(root / name, tone(2.0, 16000, 1, seed=len(name))[:, 0], 16000)
    os.mkfifo(root / "stream.wav")  # a recorder's or player's pipe, named as audio
    os.mkfifo(root / "album" / "mpd.fifo")  # MPD's fifo output: no audio extension, would be sniffed
    os.symlink(root / "stream.wav", root / "link to the pipe.flac")
    os.symlink("/dev/zero", root / "zero.wav")
    os.symlink("/dev/urandom", root / "noise")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "album" / "control.sock"))  # stays as a socket file once closed
    sock.close()
    return root, ["album/two.wav", "one.flac"]


def _scan(lib: Path, out: Path, model: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mictag", "scan", str(lib), "--out", str(out), "--model", str(model),
                           "--workers", "1", "--backend", "ort-cpu", *extra],
                          capture_output=True, text=True, timeout=timeout)


def test_pipes_sockets_and_devices_are_passed_over_unopened(model, tmp_path):
    lib, audio = _library(tmp_path / "lib")
    done = _scan(lib, tmp_path / "t.csv", model, timeout=60)  # a pipe opened for reading would hang here
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(read_table(tmp_path / "t.csv")) == audio  # every audio file once, nothing else
    line = next(l for l in done.stderr.splitlines() if l.startswith("passed over"))
    for shown in ("stream.wav: a named pipe (FIFO)", "album/mpd.fifo: a named pipe (FIFO)",
                  "album/control.sock: a socket", "link to the pipe.flac: a named pipe (FIFO)", "noise: a character device"):
        assert shown in line, line
    assert "6 items" in line and "and 1 more" in line
    again = _scan(lib, tmp_path / "t.csv", model, timeout=60)  # the rerun: nothing to do, the same line
    assert again.returncode == 0 and "2 already done" in again.stderr, again.stderr


def test_a_library_that_is_itself_a_pipe_is_refused_in_one_line(model, tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    done = _scan(tmp_path / "pipe.wav", tmp_path / "t.csv", model, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == f"mictag: error: library {tmp_path / 'pipe.wav'} is a named pipe (FIFO), not a folder or an audio file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_a_folder_without_read_permission_is_said_and_the_rest_scanned(model, tmp_path):
    lib, audio = _library(tmp_path / "lib")
    (lib / "private").mkdir()
    sf.write(lib / "private" / "x.wav", tone(1.0, 16000, 1, seed=9)[:, 0], 16000)
    (lib / "private").chmod(0)
    try:
        done = _scan(lib, tmp_path / "t.csv", model)
    finally:
        (lib / "private").chmod(0o755)
    assert done.returncode == 0 and "private: a folder that cannot be read" in done.stderr, done.stderr
    assert sorted(read_table(tmp_path / "t.csv")) == audio


HANGING_LISTING = r"""
import sys, time
from mictag.runtime.scan import discovery
from mictag.runtime.scan import run as scan
def hang(*args, **kwargs):  # a folder on a mount that stopped answering
    print("LISTING", file=sys.stderr, flush=True)
    time.sleep(3600)
scan.discover = hang
from mictag.cli import main
main(["scan", {lib!r}, "--out", {out!r}, "--model", {model!r}, "--workers", "1", "--backend", "ort-cpu"])
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_ends_a_scan_whose_listing_hangs_within_seconds(model, tmp_path, sig, code):
    lib, _ = _library(tmp_path / "lib")
    out = tmp_path / "t.csv"
    script = HANGING_LISTING.format(lib=str(lib), out=str(out), model=str(model))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "LISTING" in line:
            break
    t0 = time.monotonic()
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=30)
    assert time.monotonic() - t0 < 5, "the signal was not answered within seconds"
    assert proc.returncode == code, rest
    assert "interrupted before the scan began; nothing was written" in rest and "Traceback" not in rest


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only file system needs root")
def test_a_library_on_a_read_only_file_system_is_scanned(model, tmp_path):
    lib, audio = _library(tmp_path / "lib")
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(lib), str(ro)], capture_output=True).returncode:
        pytest.skip("bind mounts are not allowed here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True)
        try:
            (ro / "probe").write_text("x")
        except OSError:
            pass  # read-only, as wanted
        else:
            pytest.skip("the bind mount could not be made read-only here")
        done = _scan(ro, tmp_path / "t.csv", model)
        assert done.returncode == 0, done.stderr
        assert sorted(read_table(tmp_path / "t.csv")) == audio
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_a_folder_that_cannot_be_read_is_reported_by_the_listing(tmp_path, monkeypatch):
    """The same as the test above, for root too (who reads every folder): the walk's error is faked."""
    from mictag.runtime.scan import discovery

    (tmp_path / "ok").mkdir()
    (tmp_path / "private").mkdir()
    sf.write(tmp_path / "ok" / "a.wav", tone(1.0, 16000, 1, seed=1)[:, 0], 16000)
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("private"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped: list = []
    entries = discovery.discover(tmp_path, skipped=skipped)
    assert [e.rel for e in entries] == ["ok/a.wav"]
    assert skipped == [discovery.Skipped("private", "a folder that cannot be read (Permission denied)")]
