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
    result = engine.main(["--tiny", "--batches", "1", "2", "--repeats", "1", "--calibration-windows", "2",
                          "--profile", "--startup", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = {(r["backend"], r["batch"]): r for r in result["rows"]}
    for backend in ("torch-fp32", "ort-cpu-fp32", "ort-cpu-int8-dynamic", "ort-cpu-int8-static"):
        for batch in (1, 2):
            row = rows[(backend, batch)]
            assert row["windows_per_s"] > 0 and row["x_realtime"] == pytest.approx(row["windows_per_s"] * 1.28)
            assert row["mfu"] > 0  # against the ceiling of its own precision, measured in the run
    assert rows[("ort-cpu-fp32", 2)]["max_abs_dev_vs_torch_fp32"] <= 1e-4
    assert sum(r["auto"] for r in result["rows"] if "auto" in r) in (0, 2)  # auto's row, at both batches
    assert set(result["ceilings_flops"]) >= {"fp32", "int8"} and result["int8_static"]["windows"] == 2
    assert result["machine"]["cpu"] and "cpu_flags" in result["machine"] and result["model"]["gflops_per_window"] > 0
    split = result["time_split"]["torch-fp32"]
    assert split["total_seconds"] > 0 and sum(v for k, v in split.items() if k != "total_seconds") == pytest.approx(1)
    assert result["startup_seconds"]["torch-artifact-load-fp32"] > 0


def test_vs_peer_benchmark_smoke(tmp_path):
    pytest.importorskip("transformers")
    import vs_peer

    result = vs_peer.main(["--tiny", "--clips", "2", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "p.json")])
    assert result["clips"] == 2 and result["peer"]["clips"] == 2 and result["peer_seconds"] > 0
    assert {"first", "second"} <= set(result["mictag_scan_seconds"])
    assert result["speed_vs_peer"]["second"] > 0 and 0 <= result["max_abs_score_dev_vs_fp32"] <= 0.03


def test_train_step_benchmark_smoke(tmp_path):
    pytest.importorskip("torch")
    import train_step

    result = train_step.main(["--tiny", "--batch", "2", "--repeats", "1", "--out", str(tmp_path / "t.json")])
    assert result["rows"][0]["mode"] == "fp32" and result["rows"][0]["windows_per_s"] > 0
    if result["native_bf16"]:
        assert result["rows"][1]["mode"] == "bf16-autocast" and result["bf16_vs_fp32"]["grad_cosine"] > 0.9


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


def test_gpu_benchmark_smoke(tmp_path):
    """benchmarks/gpu.py --smoke: the GPU table's code on the CPU with a tiny AST, every row either
    measured or skipped with its reason, the scan against its two ceilings, one JSON."""
    pytest.importorskip("torch")
    import gpu

    out = tmp_path / "gpu.json"
    result = gpu.main(["--smoke", "--budget-seconds", "300", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"] and result["complete"]
    measured = {(r["row"], r["batch"]): r for r in result["rows"] if "windows_per_s" in r}
    skipped = {r["row"]: r["skipped"] for r in result["rows"] if "skipped" in r}
    assert not [r for r in result["rows"] if "error" in r]
    for name in ("torch-fp32", "torch-bf16", "torch-fp16", "torch-bf16-autocast", "torch-fp16-autocast",
                 "torch-bf16-compiled", "torch-backend"):
        for batch in (1, 2):
            row = measured[(name, batch)]
            assert row["windows_per_s"] > 0 and row["x_realtime"] == pytest.approx(row["windows_per_s"] * 1.28)
            assert row["mfu"] is None and row["achieved_tflops"] > 0  # no datasheet peak for a CPU
            assert row["calls"] >= 2 and row["min_seconds"] <= row["seconds_per_batch"] <= row["max_seconds"]
    # The deviation is measured against fp32 on the same windows: ~0 for fp32, bf16-sized for bf16.
    assert measured[("torch-fp32", 2)]["max_abs_dp_vs_fp32"] < 1e-5
    assert 1e-5 < measured[("torch-bf16", 2)]["max_abs_dp_vs_fp32"] < 0.05
    assert measured[("torch-bf16-compiled", 2)]["max_abs_dp_vs_fp32"] < 0.05
    for name in ("torch-bf16-cudagraph", "torch-fp16-cudagraph", "torch-bf16-compiled-cudagraph"):
        assert "CUDA" in skipped[name]
    assert {"ort-cuda", "ort-trt", "tensorrt"} <= set(skipped) | {r for r, _ in measured}
    scan = result["scan"]
    assert scan["backend_row"] == "torch-backend" and scan["files"] == 4 and scan["statuses"] == {"ok": 4}
    assert scan["bound_by"] in ("decode", "engine") and scan["scan_vs_ceiling"] > 0
    assert scan["decode_ceiling"]["windows_per_s"] > 0 and scan["engine_ceiling"]["windows_per_s"] > 0
    assert result["library"]["files"] == 4 and result["library"]["audio_seconds"] == 40
    machine = result["machine"]
    assert machine["cpu_describe"] and "cpu_flags" in machine and machine["gpu"] is None
    assert result["model"]["gflops_per_window"] > 0 and set(result["matmul_ceilings_flops"]) == {"fp32", "bf16", "fp16"}


def test_gpu_benchmark_skips_the_scan_without_decoders_and_says_why(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import gpu

    monkeypatch.setattr(gpu, "decoders", lambda: {"soundfile": "ModuleNotFoundError: no soundfile", "soxr": None,
                                                  "av": "ModuleNotFoundError: no av"})
    result = gpu.main(["--smoke", "--rows", "torch-fp32", "torch-backend", "--batches", "1",
                       "--out", str(tmp_path / "g.json")])
    assert "soundfile" in result["scan"]["skipped"] and "gpu_wheels.sh" in result["scan"]["skipped"]
    assert {r["row"] for r in result["rows"]} == {"torch-fp32", "torch-backend"} and result["library"] is None


def test_gpu_benchmark_peaks_by_chip_name():
    import gpu

    assert gpu.chip_peaks("NVIDIA H200")[1]["bf16"] == gpu.chip_peaks("NVIDIA H100 80GB HBM3")[1]["bf16"] == 989e12
    assert gpu.chip_peaks("NVIDIA H100 PCIe")[1]["fp16"] == 756e12  # not the SXM part's
    assert gpu.chip_peaks("NVIDIA H200 NVL")[0] == "H200 NVL"
    assert gpu.chip_peaks("NVIDIA A100-SXM4-80GB")[1]["fp32"] == 19.5e12
    assert gpu.chip_peaks("NVIDIA GeForce RTX 4090") is None and gpu.chip_peaks(None) is None
    assert gpu.steady_rate([(0.0, 0), (1.0, 8), (2.0, 18), (3.0, 28)], after_windows=8) == pytest.approx(10.0)
    assert gpu.steady_rate([(0.0, 0), (1.0, 8)], after_windows=8) is None
