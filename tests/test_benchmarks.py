"""Smoke runs of the benchmarks: they work and report what they claim (no timing assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_engine_benchmark_smoke(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import engine

    out = tmp_path / "engine.json"
    result = engine.main(["--tiny", "--batches", "1", "2", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = {(r["backend"], r["batch"]): r for r in result["rows"]}
    for backend in ("torch-eager-fp32", "ort-cpu-fp32", "ort-cpu-fp16", "ort-cpu-int8"):
        for batch in (1, 2):
            row = rows[(backend, batch)]
            assert row["windows_per_s"] > 0 and row["x_realtime"] == pytest.approx(row["windows_per_s"] * 1.28)
    assert rows[("ort-cpu-fp32", 2)]["max_abs_dev_vs_torch_fp32"] <= 1e-4
    assert result["machine"]["cpu"] and result["model"]["gflops_per_window"] > 0


def test_scan_benchmark_smoke(tmp_path):
    pytest.importorskip("torch")
    import scan

    result = scan.main(["--tiny", "--clips", "4", "--tracks", "0", "--workers", "1", "--out", str(tmp_path / "s.json")])
    (row,) = result["rows"]
    assert result["files"] == 4 and row["bound_by"] in ("decode", "engine")
    assert row["scan"]["windows_per_s"] > 0 and row["decode_ceiling"]["windows_per_s"] > 0
    assert row["scan"]["files_per_s"] > 0


def test_frontend_benchmark_smoke(tmp_path):
    import frontend

    result = frontend.main(["--seconds", "2", "--windows", "1", "--out", str(tmp_path / "f.json")])
    assert set(result["decode"]) == {"mp3", "flac", "ogg", "m4a", "wav"}
    assert all(v["x_realtime"] > 0 for v in result["decode"].values())
    assert result["decode"]["m4a"]["decoder"] == "ffmpeg" and result["decode"]["flac"]["decoder"] == "libsndfile"
    assert result["fbank_seconds_per_window"]["numpy"] > 0
    assert result["frontend_seconds_per_window"]["musicnn"]["onnx-graph"] > 0


def test_ray_benchmark_smoke(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("torch")
    import ray_scan

    result = ray_scan.main(["--tiny", "--clips", "2", "--tracks", "0", "--cpus", "1", "--out", str(tmp_path / "r.json")])
    modes = {r["mode"]: r for r in result["rows"]}
    assert set(modes) == {"local", "ray"} and all(r["files_per_s"] > 0 for r in modes.values())
    assert modes["ray"]["ray_startup_seconds"] > 0
