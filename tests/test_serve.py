"""`mictag serve` as a real server process on 127.0.0.1, spoken to by real HTTP clients (urllib,
threads): the answers equal `mictag scan`'s rows; tokens, roots, upload limits and a full queue are
enforced, with error bodies that name no path or token; concurrent requests share engine calls;
SIGTERM under load answers every accepted request and exits 0."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from mictag.cli import main

pytest.importorskip("aiohttp")
pytest.importorskip("onnxruntime")

TOKEN = "s3cret-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "mictag", "serve", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.get("/v1/ready")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "not ready after 120 s: " + self.log.read_text()
            time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
                headers: dict | None = None, timeout: float = 120) -> tuple[int, dict, dict]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=dict(headers or {}))
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read()), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}"), dict(e.headers)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def tag(self, paths: list[str], **kw):
        return self.request("POST", "/v1/tag", json.dumps({"paths": paths}).encode(),
                            headers={"Content-Type": "application/json"}, **kw)

    def upload(self, name: str, data: bytes, **kw):
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self.request("POST", "/v1/tag", body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                            **kw)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=180)


@pytest.fixture(scope="module")
def setup(tiny_ast_dir, tmp_path_factory):
    from library import make_library

    base = tmp_path_factory.mktemp("serve")
    assert CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--fbank-out",
                                     str(base / "f.onnx")]).exit_code == 0
    lib = base / "lib"
    make_library(lib)
    scan = CliRunner().invoke(main, ["scan", str(lib), "--out", str(base / "tags.csv"), "--model", str(base / "f.onnx"),
                                     "--workers", "1", "--precision", "fp32"])
    assert scan.exit_code == 1, scan.output
    rows = {r["path"]: r for r in csv.DictReader((base / "tags.csv").open(encoding="utf-8"))}
    (base / "token").write_text(TOKEN + "\n")
    uploads = base / "tmp"
    uploads.mkdir()
    server = Server(base, "--root", str(lib), "--token-file", str(base / "token"), "--model", str(base / "f.onnx"),
                    "--precision", "fp32", "--workers", "2", "--max-upload", "300000", "--queue", "64",
                    env={"TMPDIR": str(uploads)})
    yield base, lib, rows, server, uploads
    assert server.stop() == 0


def test_answers_equal_the_scans_rows(setup):
    base, lib, rows, server, _ = setup
    files = sorted(rows)
    status, body, headers = server.tag([str(lib / f) for f in files])
    assert status == 200 and "X-Request-Id" in headers
    labels = [c for c in next(iter(rows.values()))][7:-3]
    for f, r in zip(files, body["results"]):
        row = rows[f]
        assert r["path"] == str(lib / f) and r["status"] == row["status"] and r["error"] == row["error"], f
        assert r["tags"] == [t for t in row["tags"].split(";") if t], f
        if row["status"] in ("ok", "partial"):
            for label in labels:
                assert abs(r["scores"][label] - float(row[label])) <= 1e-5, (f, label)
            assert len(r["segments"]) == int(row["windows"])
    status, model, _ = server.get("/v1/model")
    assert status == 200 and model["labels"] == labels and len(model["model"]["sha256"]) == 64 and model["engine"]


def test_tokens_roots_and_limits(setup, tmp_path):
    base, lib, rows, server, uploads = setup
    one = str(lib / "flac/stereo 22k.flac")
    assert server.get("/v1/health", token=None)[0] == 200
    for token in (None, "wrong", TOKEN[:-1]):
        status, body, headers = server.tag([one], token=token)
        assert status == 401 and headers.get("WWW-Authenticate") == "Bearer" and TOKEN not in json.dumps(body)
    # Outside the roots: refused before anything is opened (a FIFO would block whoever opened it).
    fifo = tmp_path / "outside.wav"
    os.mkfifo(fifo)
    (lib / "escape.wav").symlink_to(fifo)
    try:
        for path in (str(fifo), str(lib / "escape.wav"), str(lib / ".." / "tags.csv"), "relative.wav"):
            status, body, _ = server.tag([one, path], timeout=20)
            assert status == 403 and "outside" in body["error"] and path not in json.dumps(body)
    finally:
        (lib / "escape.wav").unlink()
    flac = (lib / "flac/stereo 22k.flac").read_bytes()
    status, body, _ = server.upload("mine.flac", flac)
    assert status == 200 and body["results"][0]["path"] == "mine.flac" and body["results"][0]["status"] == "ok"
    assert server.upload("big.flac", flac + bytes(400_000))[0] == 413
    assert server.upload("notes.wav", b"just some text, not audio\n" * 100)[0] == 415
    assert server.request("POST", "/v1/tag", b"{not json", headers={"Content-Type": "application/json"})[0] == 400
    assert server.tag([])[0] == 400
    assert not list(uploads.iterdir())  # every upload's temporary file is gone
    log = [json.loads(l) for l in server.log.read_text().splitlines() if l.startswith("{")]
    assert {e["status"] for e in log if "endpoint" in e} >= {200, 401, 403, 413, 415, 400}
    assert all(TOKEN not in json.dumps(e) for e in log)


def test_concurrent_clients_share_engine_calls(setup):
    base, lib, rows, server, _ = setup
    good = [str(lib / f) for f, r in rows.items() if r["status"] == "ok"]
    before = server.get("/v1/stats")[1]
    answers: list[int] = []

    def client(i: int) -> None:
        for j in range(25):
            status, body, _ = server.tag([good[(i + j) % len(good)], good[(i * 3 + j) % len(good)]])
            answers.append(status if status != 200 or len(body["results"]) == 2 else -1)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    seconds = time.monotonic() - t0
    after = server.get("/v1/stats")[1]
    assert answers == [200] * 200, sorted(set(answers))
    windows, calls = after["windows"] - before["windows"], after["engine_calls"] - before["engine_calls"]
    print(f"200 requests from 8 clients in {seconds:.1f} s: {windows} windows in {calls} engine calls "
          f"({windows / calls:.1f} a call)", file=sys.stderr)
    assert seconds < 240 and windows / calls > 1.0


def test_a_full_queue_is_503_and_a_public_address_needs_a_token(setup, tmp_path):
    base, lib, rows, _, _ = setup
    small = Server(tmp_path, "--root", str(lib), "--model", str(base / "f.onnx"), "--workers", "1", "--queue", "1")
    try:
        status, body, headers = small.tag([str(lib / "flac/stereo 22k.flac"), str(lib / "a/b/middle.wav")], token=None)
        assert status == 503 and headers.get("Retry-After") == "1"
        assert small.tag([str(lib / "flac/stereo 22k.flac")], token=None)[0] == 200  # no token asked on loopback
    finally:
        assert small.stop(signal.SIGINT) == 0
    public = subprocess.run([sys.executable, "-m", "mictag", "serve", "--host", "0.0.0.0", "--root", str(lib),
                             "--model", str(base / "f.onnx")], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "MICTAG_TOKEN"})
    assert public.returncode == 2 and "not a loopback address" in public.stderr and "Traceback" not in public.stderr
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    bad = subprocess.run([sys.executable, "-m", "mictag", "serve", "--port", str(free_port()), "--root", str(lib),
                          "--model", str(tmp_path / "bad.onnx")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "mictag: error: " in bad.stderr and "Traceback" not in bad.stderr


def test_sigterm_under_load_answers_every_accepted_request(setup, tmp_path):
    base, lib, rows, _, _ = setup
    good = [str(lib / f) for f, r in rows.items() if r["status"] == "ok"]
    server = Server(tmp_path, "--root", str(lib), "--token-file", str(base / "token"), "--model",
                    str(base / "f.onnx"), "--workers", "1")
    outcomes: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        while not stop.is_set():
            try:
                status, body, _ = server.tag(good[i % len(good): i % len(good) + 3], timeout=120)
            except urllib.error.URLError as exc:
                reason = getattr(exc, "reason", exc)
                outcomes.append("refused" if isinstance(reason, ConnectionRefusedError) else f"broken: {reason}")
                return
            except (ConnectionError, OSError) as exc:
                outcomes.append("refused" if isinstance(exc, ConnectionRefusedError) else f"broken: {exc}")
                return
            outcomes.append("ok" if status == 200 and len(body["results"]) == 3 else f"status {status}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while outcomes.count("ok") < 10:
        time.sleep(0.05)
    code = server.stop(signal.SIGTERM)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert code == 0, server.log.read_text()[-2000:]
    bad = [o for o in outcomes if o not in ("ok", "refused")]
    assert not bad, bad  # every request the server took was answered in full
