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


def test_torch_backend_on_gpu_pads_to_its_static_batch_and_matches_cpu(tiny_ast_dir, tmp_path):
    from click.testing import CliRunner

    from mictag.cli import main
    from mictag.runtime.backends import TorchBackend

    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--torch-out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    gpu = TorchBackend(tmp_path / "m.pt", precision="fp32", batch=8)
    cpu = TorchBackend(tmp_path / "m.pt", device="cpu", precision="fp32")
    n = gpu.meta["window_samples"]
    x = (0.2 * np.random.default_rng(0).standard_normal((11, n))).astype(np.float32)
    valid = np.full(11, n, np.int64)
    for rows in (3, 8, 11):  # padded, exact, split
        np.testing.assert_allclose(gpu.run(x[:rows], valid[:rows]), cpu.run(x[:rows], valid[:rows]), atol=1e-3)
