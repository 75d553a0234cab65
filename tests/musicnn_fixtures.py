"""A musicnn checkpoint with random weights, named and shaped as the TensorFlow original's (HWIO
kernels, ``tf.compat.v1.layers`` names in build order), for tests that cannot download the real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BN_WIDTHS = (1, 204, 204, 51, 51, 51, 64, 64, 64, 1506, 200)  # batch_normalization, _1 ... _10
CONV_KERNELS = ((7, 38, 1, 204), (7, 67, 1, 204), (128, 1, 1, 51), (64, 1, 1, 51), (32, 1, 1, 51),
                (7, 561, 1, 64), (7, 64, 1, 64), (7, 64, 1, 64))


def fake_musicnn_tf(seed: int = 0, adam: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}

    def dense(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    for i, width in enumerate(BN_WIDTHS):
        name = "batch_normalization" if i == 0 else f"batch_normalization_{i}"
        out[f"{name}/gamma"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
        out[f"{name}/beta"] = (0.1 * rng.standard_normal(width)).astype(np.float32)
        out[f"{name}/moving_mean"] = (0.1 * rng.standard_normal(width)).astype(np.float32)
        out[f"{name}/moving_variance"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
    for i, shape in enumerate(CONV_KERNELS):
        name = "conv2d" if i == 0 else f"conv2d_{i}"
        out[f"{name}/kernel"] = dense(shape, shape[0] * shape[1] * shape[2])
        out[f"{name}/bias"] = (0.1 * rng.standard_normal(shape[3])).astype(np.float32)
    out["dense/kernel"], out["dense/bias"] = dense((1506, 200), 1506), np.zeros(200, np.float32)
    out["dense_1/kernel"], out["dense_1/bias"] = dense((200, 50), 200), np.zeros(50, np.float32)
    if adam:  # what a TF1 checkpoint also holds, and the converter must drop
        out["dense/kernel/Adam"] = np.ones((1506, 200), np.float32)
        out["dense/kernel/Adam_1"] = np.ones((1506, 200), np.float32)
        out["beta1_power"] = np.array(0.9, np.float32)
        out["global_step"] = np.array(1000, np.int64)
    return out


def fake_vgg_tf(seed: int = 0, filters: int = 128) -> dict[str, np.ndarray]:
    """The same for the package's vgg (layers 1CNN ... 5CNN, batch_normalization ... _5, dense)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i, width in enumerate((1,) + (filters,) * 5):
        name = "batch_normalization" if i == 0 else f"batch_normalization_{i}"
        out[f"{name}/gamma"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
        out[f"{name}/beta"] = (0.1 * rng.standard_normal(width)).astype(np.float32)
        out[f"{name}/moving_mean"] = (0.1 * rng.standard_normal(width)).astype(np.float32)
        out[f"{name}/moving_variance"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
    for i in range(5):
        cin = 1 if i == 0 else filters
        out[f"{i + 1}CNN/kernel"] = (rng.standard_normal((3, 3, cin, filters)) / np.sqrt(9 * cin)).astype(np.float32)
        out[f"{i + 1}CNN/bias"] = (0.1 * rng.standard_normal(filters)).astype(np.float32)
    out["dense/kernel"] = (rng.standard_normal((2 * filters, 50)) / np.sqrt(2 * filters)).astype(np.float32)
    out["dense/bias"] = np.zeros(50, np.float32)
    return out


def fake_musicnn_wheel(path, tensors_of, installable: bool = False) -> "Path":
    """A wheel laid out like musicnn-0.1.0's at ``path``: for each of its four models, the
    checkpoint ``tensors_of(model_index)`` in the TensorFlow tensor-bundle format, and a config.json;
    ``installable`` adds the .dist-info that pip reads when it fetches the wheel from an index."""
    import json
    import zipfile

    from mictag.backbones.musicnn_weights import MODELS
    from mictag.backbones.tf_bundle import write_bundle

    with zipfile.ZipFile(path, "w") as z:
        for i, model in enumerate(MODELS):
            folder = path.parent / "build" / model
            folder.mkdir(parents=True)
            write_bundle(str(folder) + "/", tensors_of(i))
            for f in folder.iterdir():
                z.write(f, f"musicnn/{model}/{f.name}")
            z.writestr(f"musicnn/{model}/config.json", json.dumps({"n_mels": 96, "model_number": 11}))
        if installable:
            info = "musicnn-0.1.0.dist-info"
            z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: musicnn\nVersion: 0.1.0\n")
            z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n")
            z.writestr(f"{info}/RECORD", "")
    return path


def package_fake_tagger(name: str, wheel, folder, seed: int = 3):
    """A shipped tagger ``name`` trained (here: seeded at random) against the MTT_musicnn that
    ``wheel`` holds (pulled into the current MICTAG_HOME first), packaged into ``folder``, which
    stands for the package's. Returns (the PyTorch system, its thresholds)."""
    import numpy as np
    import torch

    from mictag.backbones.frozen import backbone_reference
    from mictag.backbones.musicnn_weights import pull
    from mictag.export.shipped_tagger import package
    from mictag.model.system import SystemConfig, build_system, frozen_backbone
    from mictag.catalog import shipped
    from mictag.train.checkpoint import save_model

    pull(str(wheel))
    record = shipped.provenance(name)
    cfg = SystemConfig.from_dict(record["system"])
    torch.manual_seed(seed)
    model = build_system(cfg, backbone=frozen_backbone(cfg, "MTT_musicnn"))
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    thresholds = np.linspace(0.3, 0.7, 20)
    model_file = save_model(folder.parent / f"{name}-model.pt", model, cfg,
                            backbone_reference("musicnn", "MTT_musicnn"), thresholds, record["recipe"], {})
    package(model_file, name, thresholds, {"corpus": record["corpus"], "seed": 0, "metrics": record["metrics"]}, folder)
    return model, thresholds
