"""musicnn's pretrained weights, installed offline-friendly and without TensorFlow.

The PyPI package ``musicnn==0.1.0`` (ISC licence) ships four TensorFlow-1 checkpoints inside
its wheel. Installing the package fails on modern Pythons (it pins tensorflow 1.x), so
``mictag models pull musicnn`` only *downloads* the wheel with pip, reads the checkpoint with
:mod:`mictag.backbones.tf_bundle` (Adam state dropped) and stores the weights once as
safetensors in the model cache, with their sha256 in a manifest beside them.

The MTT models were trained on MagnaTagATune, whose annotations are CC BY-NC-SA 3.0: tags
derived from them are for non-commercial use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from mictag.digest import file_digest
from mictag.errors import MictagError, ModelNotFoundError
from mictag.paths import mictag_home

PACKAGE = "musicnn==0.1.0"
MODELS = ("MTT_musicnn", "MTT_vgg", "MSD_musicnn", "MSD_vgg")
LICENCE_NOTE = ("musicnn (ISC licence); the MTT models were trained on MagnaTagATune, whose annotations are "
                "CC BY-NC-SA 3.0: non-commercial use")


def cache_dir() -> Path:
    return mictag_home() / "models" / "musicnn"


def weights_path(model: str = "MTT_musicnn") -> Path:
    return cache_dir() / f"{model}.safetensors"


def manifest_path() -> Path:
    return cache_dir() / "manifest.json"


def download_wheel(dest: Path, progress: bool = False) -> Path:
    """``pip download --no-deps musicnn==0.1.0`` into ``dest`` (the registry pip is set up for);
    with ``progress``, pip's own progress bar shows on stderr."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           PACKAGE, "-d", str(dest)]
    if progress and sys.stderr.isatty():
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    else:
        done = subprocess.run([*cmd, "-q"], capture_output=True, text=True)
    wheels = sorted(dest.glob("musicnn-*.whl"))
    if done.returncode or not wheels:
        reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1][:200]
        raise ModelNotFoundError(f"cannot download {PACKAGE} with pip ({reason}); when online, run "
                                 f"`mictag models pull musicnn`, or pass the wheel with --wheel PATH")
    return wheels[-1]


def convert_wheel(wheel: Path, models: tuple[str, ...] = MODELS) -> dict[str, dict]:
    """Read each checkpoint in the wheel and write it as safetensors; returns the manifest."""
    from safetensors.numpy import save_file

    from mictag.backbones.tf_bundle import read_bundle

    out = cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        for model in models:
            members = [n for n in names if n.startswith(f"musicnn/{model}/")]
            if not members:
                raise MictagError(f"{wheel.name} has no musicnn/{model}/ checkpoint")
            z.extractall(tmp, members)
            folder = Path(tmp) / "musicnn" / model
            tensors = read_bundle(str(folder) + "/")
            config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
            target = weights_path(model)
            partial = target.with_name(target.name + ".partial")
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(partial),
                      metadata={"source": f"{PACKAGE}:{model}", "licence": LICENCE_NOTE})
            partial.replace(target)
            manifest[model] = {"file": target.name, "sha256": file_digest(target), "tensors": len(tensors),
                               "wheel_sha256": file_digest(wheel), "config": config}
    manifest_path().write_text(json.dumps({"package": PACKAGE, "licence": LICENCE_NOTE, "models": manifest}, indent=1))
    return manifest


def tensor_digest(path: str | Path) -> str:
    """sha256 of a safetensors file's tensors (names, dtypes, shapes and bytes, by name), not of
    the file: the library writes its header's metadata in an order that changes between runs, so
    two conversions of one wheel differ as files and agree here. Standard library only."""
    import hashlib
    import struct

    path = Path(path)
    with path.open("rb") as f:
        try:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        except (struct.error, ValueError) as exc:
            raise MictagError(f"{path} is not a safetensors file ({exc})") from None
        data = f.read()
    h = hashlib.sha256()
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        begin, end = entry["data_offsets"]
        h.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
        h.update(data[begin:end])
    return h.hexdigest()


def pull(wheel: str | Path | None = None, progress: bool = False) -> dict[str, dict]:
    """Fetch (or take ``wheel``) and convert musicnn's checkpoints; never imports TensorFlow."""
    if wheel:
        return convert_wheel(Path(wheel))
    with tempfile.TemporaryDirectory() as tmp:
        return convert_wheel(download_wheel(Path(tmp), progress))


def require_weights(model: str = "MTT_musicnn") -> Path:
    """The converted weights file of ``model``; when absent, the error says how to get it."""
    path = weights_path(model)
    if not path.is_file():
        raise ModelNotFoundError(
            f"no musicnn weights ({model}) in {cache_dir()}: run `mictag models pull musicnn` once online (pip "
            f"downloads the 29 MB {PACKAGE} wheel from the package registry; no TensorFlow needed), or "
            f"`mictag models pull musicnn --wheel musicnn-0.1.0-py3-none-any.whl` with a wheel you copied here")
    return path


def load_weights(model: str = "MTT_musicnn") -> dict[str, np.ndarray]:
    """The converted weights, checked against the manifest's sha256."""
    from safetensors.numpy import load_file

    path = require_weights(model)
    try:
        expected = json.loads(manifest_path().read_text())["models"][model]["sha256"]
    except (OSError, ValueError, KeyError):
        raise ModelNotFoundError(f"{manifest_path()} is missing or damaged: run `mictag models pull musicnn` again") from None
    if file_digest(path) != expected:
        raise MictagError(f"{path} does not match its recorded sha256: run `mictag models pull musicnn` again")
    return load_file(str(path))
