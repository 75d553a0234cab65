"""GPU checks: run wherever CUDA is present, skip cleanly elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def test_fbank_on_gpu_equals_cpu_in_full_float32():
    from mictag.model.fbank import Fbank

    # TF32 convolutions would lose the fbank's low bands: the module must stay exact fp32.
    torch.backends.cudnn.allow_tf32 = False
    w = torch.from_numpy((0.2 * np.random.default_rng(0).standard_normal((3, 164_080))).astype(np.float32))
    cpu = Fbank()(w)
    gpu = Fbank().cuda()(w.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=0)


def test_full_size_system_runs_under_bf16_autocast():
    from mictag.model.system import SystemConfig, build_system

    model = build_system(SystemConfig(reprogrammer="unet")).cuda().eval()
    x = torch.randn(2, 1024, 128, device="cuda")
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = model(x).float()
    assert fast.shape == (2, 20)
    torch.testing.assert_close(torch.sigmoid(fast), torch.sigmoid(ref), atol=3e-2, rtol=0)


@pytest.fixture(scope="module")
def torch_artifact(tiny_ast_dir, tmp_path_factory):
    from click.testing import CliRunner

    from mictag.cli import main

    path = tmp_path_factory.mktemp("torch-artifact") / "m.pt"
    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--torch-out", str(path)])
    assert result.exit_code == 0, result.output
    return path


def _batches(n_samples: int, sizes, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for rows in sizes:
        x = (0.2 * rng.standard_normal((rows, n_samples))).astype(np.float32)
        out.append((x, rng.integers(n_samples // 4, n_samples + 1, rows).astype(np.int64)))
    return out


def test_torch_cuda_graphs_per_bucket_pipelined_match_cpu(torch_artifact):
    from mictag.runtime.engines.torch import TorchBackend

    gpu = TorchBackend(torch_artifact, precision="fp32", batch=32)
    cpu = TorchBackend(torch_artifact, device="cpu", precision="fp32")
    assert gpu.pipeline.buckets == (8, 16, 32) and gpu.in_flight == 2
    sizes = (32, 5, 16, 9, 32, 40, 1, 17)
    data = _batches(gpu.meta["window_samples"], sizes, 0)
    handles = [gpu.submit(x, v) for x, v in data]  # more in flight than buffer sets: each waits its turn
    for (x, v), h in zip(data, handles):
        np.testing.assert_allclose(h.result(), cpu.run(x, v), atol=1e-3, rtol=0)
    assert set(gpu.pipeline.graphs) == {8, 16, 32}
    assert all(g is not None for g in gpu.pipeline.graphs.values()), gpu.notes
    again = gpu.run(*data[3])  # a replayed graph gives what its first run gave
    np.testing.assert_allclose(again, handles[3].result(), atol=1e-6, rtol=0)


def test_torch_cuda_graph_capture_failure_falls_back_to_eager(torch_artifact, monkeypatch):
    from mictag.runtime.engines.torch import TorchBackend

    class Refused:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            raise RuntimeError("operation not permitted when stream is capturing")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "graph", Refused)
    gpu = TorchBackend(torch_artifact, precision="fp32", batch=16)
    cpu = TorchBackend(torch_artifact, device="cpu", precision="fp32")
    for x, v in _batches(gpu.meta["window_samples"], (16, 3, 12), 1):
        np.testing.assert_allclose(gpu.run(x, v), cpu.run(x, v), atol=1e-3, rtol=0)
    assert gpu.pipeline.graphs == {8: None, 16: None}
    assert len(gpu.notes) == 2 and "runs eagerly" in gpu.notes[0]


def test_torch_cuda_eager_pipeline_in_bf16_tracks_fp32(torch_artifact):
    from mictag.runtime.engines.torch import TorchBackend

    gpu = TorchBackend(torch_artifact, batch=16, graphs=False)  # bf16: the CUDA default
    cpu = TorchBackend(torch_artifact, device="cpu", precision="fp32")
    assert gpu.precision == "bf16" and not gpu.pipeline.graphs
    data = _batches(gpu.meta["window_samples"], (16, 7, 16, 2), 2)
    handles = [gpu.submit(x, v) for x, v in data]
    for (x, v), h in zip(data, handles):
        np.testing.assert_allclose(h.result(), cpu.run(x, v), atol=3e-2, rtol=0)
    assert not gpu.pipeline.graphs


def test_torch_backend_on_gpu_pads_to_its_static_batch_and_matches_cpu(tiny_ast_dir, tmp_path):
    from click.testing import CliRunner

    from mictag.cli import main
    from mictag.runtime.engines.torch import TorchBackend

    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--torch-out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    gpu = TorchBackend(tmp_path / "m.pt", precision="fp32", batch=8)
    cpu = TorchBackend(tmp_path / "m.pt", device="cpu", precision="fp32")
    n = gpu.meta["window_samples"]
    x = (0.2 * np.random.default_rng(0).standard_normal((11, n))).astype(np.float32)
    valid = np.full(11, n, np.int64)
    for rows in (3, 8, 11):  # padded, exact, split
        np.testing.assert_allclose(gpu.run(x[:rows], valid[:rows]), cpu.run(x[:rows], valid[:rows]), atol=1e-3)
