"""`mictag scan --ray`: a local Ray instance (2 CPUs, no GPU) gives the same rows as the local scan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mictag.cli import main

ray = pytest.importorskip("ray")
try:
    import pyarrow  # noqa: F401

    PYARROW = True
except ImportError:
    PYARROW = False

from library import read_table  # noqa: E402


@pytest.fixture(scope="module")
def models(tiny_ast_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray-model")
    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--fbank-out", str(out / "f.onnx")])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


# The parity checks pin fp32 ONNX Runtime: bf16 results depend (within 1e-3) on how windows are batched.
EXACT = ["--backend", "ort-cpu"]


def _assert_same(a: dict[str, dict], b: dict[str, dict], labels) -> None:
    assert a.keys() == b.keys()
    for p in a:
        assert a[p]["status"] == b[p]["status"], p
        assert a[p]["windows"] == b[p]["windows"], p
        for label in labels:
            if a[p][label] or b[p][label]:
                assert abs(float(a[p][label]) - float(b[p][label])) <= 1e-5, (p, label)


def test_ray_scan_equals_local_scan_on_the_mixed_library(models, local_ray, tmp_path):
    from library import make_library

    from mictag.labels import OPENMIC_LABELS

    lib = tmp_path / "lib"
    expected = make_library(lib)
    model = str(models / "f.onnx")
    emb = ["--embeddings", str(tmp_path / "local.parquet")] if PYARROW else []
    local = CliRunner().invoke(main, ["scan", str(lib), "--out", str(tmp_path / "local.csv"), "--model", model,
                                      "--workers", "1", "-q", *EXACT, *emb])
    emb = ["--embeddings", str(tmp_path / "ray.parquet")] if PYARROW else []
    distributed = CliRunner().invoke(main, ["scan", str(lib), "--out", str(tmp_path / "ray.csv"), "--model", model,
                                            "--ray", "-q", *EXACT, *emb])
    assert local.exit_code == distributed.exit_code == 1  # the library holds broken files
    a, b = read_table(tmp_path / "local.csv"), read_table(tmp_path / "ray.csv")
    assert set(a) == set(expected)
    _assert_same(a, b, OPENMIC_LABELS)
    assert any(r["status"] == "error" for r in b.values()) and any(r["status"] == "ok" for r in b.values())
    if PYARROW:  # the same vectors, one per file with windows
        from mictag.output.embeddings import read_table as read_embeddings

        va, vb = read_embeddings(tmp_path / "local.parquet"), read_embeddings(tmp_path / "ray.parquet")
        assert set(va.index) == set(vb.index) == {p for p, r in a.items() if int(r["windows"] or 0) > 0}
        for path, i in va.index.items():
            np.testing.assert_allclose(vb.vectors[vb.index[path]], va.vectors[i], atol=1e-5, err_msg=path)


def test_a_deviating_fast_path_in_a_model_actor_leaves_nothing_out_of_bound(tiny_ast_dir, local_ray, tmp_path,
                                                                            monkeypatch):
    """The actors check their fast path as the local scan does; the driver holds rows until an
    actor's check covers them and rescores what a failed check touched (and what no check reached)."""
    import ray.cloudpickle

    import trust_fakes
    from library import signal as tone
    from mictag.labels import OPENMIC_LABELS
    from mictag.runtime.scan.distributed import RayExecutor
    from mictag.runtime.engines.trust import BOUND

    model = tmp_path / "f.onnx"
    done = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--fbank-out", str(model), "--precision",
                                     "int8"])
    assert done.exit_code == 0, done.output
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(10):
        sf.write(lib / f"t{i}.flac", tone(2.0 + 0.5 * i, 16000, 1, seed=i)[:, 0], 16000)
    ray.cloudpickle.register_pickle_by_value(trust_fakes)  # the actors get the fake by value
    monkeypatch.setattr(RayExecutor, "stage", trust_fakes.deviating_stage(20, "avx2 fma avx512f avx512_vnni",
                                                                          str(tmp_path / "home")))
    result = CliRunner().invoke(main, ["scan", str(lib), "--out", str(tmp_path / "ray.csv"), "--model", str(model),
                                       "--ray"])
    assert result.exit_code == 0, result.output
    assert "scored again on fp32" in result.output, result.output
    exact = CliRunner().invoke(main, ["scan", str(lib), "--out", str(tmp_path / "fp32.csv"), "--model", str(model),
                                      "--workers", "1", "--precision", "fp32", *EXACT])
    assert exact.exit_code == 0, exact.output
    got, want = read_table(tmp_path / "ray.csv"), read_table(tmp_path / "fp32.csv")
    assert got.keys() == want.keys() and len(got) == 10
    labels = [l for l in OPENMIC_LABELS if want["t0.flac"].get(l)]
    for p in want:
        assert max(abs(float(got[p][l]) - float(want[p][l])) for l in labels) <= BOUND, p
        assert got[p]["tags"] == want[p]["tags"], p


def test_interrupted_ray_scan_resumes_with_every_file_once(models, local_ray, tmp_path, monkeypatch):
    from mictag.labels import OPENMIC_LABELS
    from mictag.runtime.scan import distributed

    lib = tmp_path / "lib"
    lib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        sf.write(lib / f"f{i}.flac", (0.2 * rng.standard_normal(3 * 16000)).astype(np.float32), 16000)
    model = str(models / "f.onnx")
    real_scan = distributed.RayExecutor.scan

    def interrupted(self, entries, on_progress=None, should_stop=None):
        for n, result in enumerate(real_scan(self, entries, on_progress, should_stop)):
            if n == 3:
                raise KeyboardInterrupt  # the driver dies midway
            yield result

    monkeypatch.setattr(distributed.RayExecutor, "scan", interrupted)
    args = ["scan", str(lib), "--out", str(tmp_path / "ray.csv"), "--model", model, "--ray", "-q", *EXACT]
    assert CliRunner().invoke(main, args).exit_code != 0
    assert len(read_table(tmp_path / "ray.csv")) == 3
    monkeypatch.setattr(distributed.RayExecutor, "scan", real_scan)
    assert CliRunner().invoke(main, args).exit_code == 0
    rows = read_table(tmp_path / "ray.csv")
    assert len(rows) == 8
    assert CliRunner().invoke(main, ["scan", str(lib), "--out", str(tmp_path / "local.csv"), "--model", model,
                                     "--workers", "0", "-q", *EXACT]).exit_code == 0
    _assert_same(rows, read_table(tmp_path / "local.csv"), OPENMIC_LABELS)


def test_kill_9_of_a_ray_scan_then_rerun(models, tmp_path):
    """The driver (and the Ray it started) killed with SIGKILL; the rerun finishes every file once."""
    lib = tmp_path / "lib"
    lib.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        sf.write(lib / f"f{i:02d}.wav", (0.2 * rng.standard_normal(8 * 16000)).astype(np.float32), 16000)
    out = tmp_path / "ray.csv"
    cmd = [sys.executable, "-m", "mictag", "scan", str(lib), "--out", str(out), "--model", str(models / "f.onnx"),
           "--ray", "--batch-size", "1", "-q"]
    env = {**os.environ, "RAY_BACKEND_LOG_LEVEL": "fatal"}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the scan ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert out.read_text().count("\n") < 13  # killed midway: not every row was written
    # No `ray stop`: it would take down every Ray on the machine, this test process's own too. The
    # killed driver's local Ray shares its fate and exits by itself.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_table(out)
    assert sorted(rows) == [f"f{i:02d}.wav" for i in range(12)]
    assert all(r["status"] == "ok" for r in rows.values())


def test_ray_without_the_extra_is_one_sentence(models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    (tmp_path / "lib").mkdir()
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "lib"), "--out", str(tmp_path / "t.csv"),
                                       "--model", str(models / "f.onnx"), "--ray"])
    assert result.exit_code == 2
    assert result.output.strip() == "mictag: error: --ray needs Ray Data, which is not installed: pip install 'mictag[dist]'"


def test_unreachable_ray_address_is_one_sentence(models, tmp_path):
    (tmp_path / "lib").mkdir()
    t0 = time.time()
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "lib"), "--out", str(tmp_path / "t.csv"),
                                       "--model", str(models / "f.onnx"), "--ray", "127.0.0.1:1"])
    assert result.exit_code == 2 and time.time() - t0 < 30
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_local_scan_never_imports_ray(models, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    sf.write(lib / "a.wav", np.zeros(20000, np.float32), 16000)
    code = ("import sys\nfrom mictag.runtime.scan.run import ScanRequest, run_scan\nfrom mictag.runtime.scan.pipeline import ScanOptions\n"
            f"run_scan(ScanRequest({str(lib)!r}, {str(tmp_path / 't.csv')!r}, {str(models / 'f.onnx')!r}, options=ScanOptions(workers=0)))\n"
            "print('ray' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
