"""The first scan on a fresh machine, as a new user runs it, in a subprocess: no model cached, the
Hugging Face hub unreachable (a closed local port), and a package index that pip can reach (a
local folder standing for the registry, holding a musicnn wheel laid out as the real one). The scan
takes the shipped musicnn-openmic20 tagger, fetching its backbone with pip, and one line says why;
with pip cut off too, one error names both ways; ``Tagger()`` takes the same default."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

pytest.importorskip("torch")
pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).parent))
from library import signal as tone  # noqa: E402
from musicnn_fixtures import fake_musicnn_tf, fake_musicnn_wheel, package_fake_tagger  # noqa: E402

NAME = "musicnn-openmic20"
# The subprocess stands for a fresh install whose packaged tagger was trained on the fake musicnn.
RUN = ("import sys\nfrom mictag.catalog import shipped\nshipped.TAGGERS_DIR = __import__('pathlib').Path({taggers!r})\n"
       "from mictag.cli import main\nmain({args!r})\n")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fake registry holding the musicnn wheel, and the shipped tagger trained on its weights."""
    root = tmp_path_factory.mktemp("fresh")
    index = root / "index"
    index.mkdir()
    wheel = fake_musicnn_wheel(index / "musicnn-0.1.0-py3-none-any.whl", lambda i: fake_musicnn_tf(seed=i),
                               installable=True)
    saved = os.environ.get("MICTAG_HOME")
    os.environ["MICTAG_HOME"] = str(root / "packaging-home")
    try:
        package_fake_tagger(NAME, wheel, root / "taggers")
    finally:
        os.environ["MICTAG_HOME"] = saved if saved is not None else os.environ.pop("MICTAG_HOME")
    lib = root / "library"
    lib.mkdir()
    for i in range(3):
        sf.write(lib / f"song {i}.flac", tone(4.0 + i, 22050, 2, seed=i), 22050)
    return root, index, lib


def _env(root: Path, home: str, index: Path | None) -> dict:
    env = {**os.environ, "MICTAG_HOME": str(root / home), "HF_HOME": str(root / f"{home}-hf"),
           "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(index if index is not None else root / "nothing-here"),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        env.pop(name, None)
    return env


def _run(root: Path, env: dict, args: list[str]) -> subprocess.CompletedProcess:
    code = RUN.format(taggers=str(root / "taggers"), args=args)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def test_a_fresh_machine_without_the_hub_scans_with_the_shipped_tagger(fresh):
    root, index, lib = fresh
    env = _env(root, "home-a", index)
    out = root / "tags.csv"
    done = _run(root, env, ["scan", str(lib), "--out", str(out), "--workers", "1"])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("scanning with")]
    assert len(said) == 1, done.stderr  # which model, why, and how to get the other
    assert NAME in said[0] and "the hub could not be reached" in said[0] and "mictag models pull" in said[0]
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert "accordion" in rows[0] and "voice" in rows[0]  # all 20 labels
    # a second scan finds what the first fetched: no download, no message about the AST's absence
    again = _run(root, env, ["scan", str(lib), "--out", str(root / "again.csv"), "--workers", "1", "-q"])
    assert again.returncode == 0 and "fetching" not in again.stderr, again.stderr
    # the Python API takes the same default
    api = subprocess.run([sys.executable, "-c", (
        f"from mictag.catalog import shipped\nshipped.TAGGERS_DIR = __import__('pathlib').Path({str(root / 'taggers')!r})\n"
        f"from mictag import Tagger\nt = Tagger()\nprint(t.model.name, len(t.labels), t.tag({str(lib / 'song 0.flac')!r}).status)")],
        capture_output=True, text=True, env=env, timeout=600)
    assert api.returncode == 0, api.stderr
    name, labels, status = api.stdout.split()
    assert name.startswith(NAME) and labels == "20" and status == "ok"


def test_with_no_network_at_all_one_error_names_both_ways(fresh):
    root, _, lib = fresh
    done = _run(root, _env(root, "home-b", None), ["scan", str(lib), "--out", str(root / "none.csv")])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("mictag: error:")]
    assert len(lines) == 1, done.stderr
    for way in ("the hub could not be reached", "cannot download musicnn==0.1.0 with pip", "`mictag models pull`",
                "--ast", "`mictag models pull musicnn`", "--wheel"):
        assert way in lines[0], way
    assert not (root / "none.csv").exists()


def test_a_copied_wheel_does_without_any_index(fresh, tmp_path):
    root, index, lib = fresh
    wheel = next(index.glob("*.whl"))
    env = _env(root, "home-c", None)
    done = _run(root, env, ["scan", str(lib), "--out", str(tmp_path / "t.csv"), "--wheel", str(wheel), "--workers", "1"])
    assert done.returncode == 0, done.stderr
    assert NAME in done.stderr and "fetching musicnn" not in done.stderr
