"""`mictag tag FILE... [--json]`: one JSON object per file, in the order given, equal to the rows
`mictag scan` writes for the same files (same decode, windows and engine), with the scan's exit
codes; run as a workflow tool runs it (a subprocess, stdout parsed, exit code checked)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mictag.cli import main
from mictag.ingest.record import SCHEMA

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def setup(tiny_ast_dir, tmp_path_factory):
    from library import make_library

    base = tmp_path_factory.mktemp("tag")
    assert CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--fbank-out",
                                     str(base / "f.onnx")]).exit_code == 0
    lib = base / "lib"
    make_library(lib)
    scan = CliRunner().invoke(main, ["scan", str(lib), "--out", str(base / "tags.csv"), "--model", str(base / "f.onnx"),
                                     "--segments", str(base / "seg.jsonl"), "--workers", "1", "--precision", "fp32"])
    assert scan.exit_code == 1, scan.output
    rows = {r["path"]: r for r in csv.DictReader((base / "tags.csv").open(encoding="utf-8"))}
    segments = {json.loads(l)["path"]: json.loads(l) for l in (base / "seg.jsonl").read_text("utf-8").splitlines()}
    return base, lib, rows, segments


def _conforms(obj: dict) -> None:
    """The object against SCHEMA (its required keys and types, checked by hand: no jsonschema here)."""
    assert set(SCHEMA["required"]) <= set(obj)
    assert obj["status"] in SCHEMA["properties"]["status"]["enum"]
    assert isinstance(obj["scores"], dict) and isinstance(obj["tags"], list) and isinstance(obj["segments"], list)
    assert all(0.0 <= v <= 1.0 for v in obj["scores"].values())
    assert all({"start", "end", "scores"} <= set(s) for s in obj["segments"])
    assert set(obj["model"]) == {"name", "sha256"} and len(obj["model"]["sha256"]) == 64


def test_json_lines_equal_the_scans_rows_in_the_order_given(setup):
    base, lib, rows, segments = setup
    files = sorted(rows, reverse=True)  # not the scan's order
    cmd = [sys.executable, "-m", "mictag", "tag", "--json", "--model", str(base / "f.onnx"), "--precision", "fp32",
           "--workers", "2", "-q", *[str(lib / f) for f in files]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the library's broken files
    assert done.stderr == ""
    objects = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["path"] for o in objects] == [str(lib / f) for f in files]
    labels = [c for c in next(iter(rows.values())) if c not in
              ("path", "size_bytes", "mtime", "duration_s", "windows", "status", "error", "tags", "content_sha256",
               "reused_from")]
    for f, o in zip(files, objects):
        _conforms(o)
        row = rows[f]
        assert o["status"] == row["status"] and o["error"] == row["error"], f
        assert o["windows"] == int(row["windows"]), f
        assert o["tags"] == [t for t in row["tags"].split(";") if t], f
        if row["status"] in ("ok", "partial"):
            assert list(o["scores"]) == labels
            for label in labels:
                assert abs(o["scores"][label] - float(row[label])) <= 1e-6, (f, label)
            seg = segments[f]["segments"]
            assert [(s["start"], s["end"]) for s in o["segments"]] == [(s["start"], s["end"]) for s in seg]
            assert [list(s["scores"].values()) for s in o["segments"]] == [s["scores"] for s in seg]
        else:
            assert o["scores"] == {} and o["segments"] == []


def test_plain_lines_and_exit_codes(setup, tmp_path):
    base, lib, rows, _ = setup
    good = [str(lib / f) for f, r in rows.items() if r["status"] == "ok"][:2]
    out = CliRunner().invoke(main, ["tag", "--model", str(base / "f.onnx"), "--workers", "0", "-q", *good])
    assert out.exit_code == 0, out.output
    assert [l.split(": ", 1)[0] for l in out.stdout.splitlines()] == good
    folder = CliRunner().invoke(main, ["tag", "--json", "--model", str(base / "f.onnx"), "-q", str(lib)])
    assert folder.exit_code == 1 and json.loads(folder.stdout)["error"] == "not a regular file"
    bad = CliRunner().invoke(main, ["tag", "--model", str(tmp_path / "none.onnx"), good[0]])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    opt = CliRunner().invoke(main, ["tag", "--model", str(base / "f.onnx"), "--threshold", "2", good[0]])
    assert opt.exit_code == 2 and "--threshold" in opt.output
