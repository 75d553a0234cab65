"""Where an AudioSet AST's weights are, without torch: the hub id mictag defaults to, a hub model's
directory in the local Hugging Face cache (downloaded only when online), and the one file of a
checkpoint that identifies it. ``mictag models list``, ``info`` and a scan's "no model" message
use it, so they stay torch-free; :mod:`mictag.backbones.ast_checkpoints` loads what it finds."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mictag.errors import ModelNotFoundError

DEFAULT_HUB_ID = "MIT/ast-finetuned-audioset-10-10-0.4593"
ORIGINAL_FILENAME = "audioset_10_10_0.4593.pth"


def resolve_hub(repo_id: str, revision: str | None = None, download: bool = True) -> Path:
    """Directory of a hub model in the local Hugging Face cache, downloading it only when online
    (and ``download`` is True).

    Honours HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE like every Hugging Face tool.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelNotFoundError("loading from the Hugging Face hub needs huggingface_hub: pip install 'mictag[train]'") from exc
    from huggingface_hub import constants as hf_constants

    from mictag.paths import hf_hub_cache

    patterns = ["config.json", "*.safetensors", "pytorch_model.bin"]
    cache_dir = str(hf_hub_cache())  # read from the environment now, as `mictag info` reports it
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True,
                                      cache_dir=cache_dir))
    except Exception:
        pass
    offline = bool(hf_constants.HF_HUB_OFFLINE) or any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline or not download:
        raise ModelNotFoundError(
            f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set or downloading is off: download it once online "
            f"(mictag models pull), or pass a local checkpoint ({ORIGINAL_FILENAME} or a model directory)"
        )
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir))
    except Exception as exc:
        raise ModelNotFoundError(
            f"cannot download {repo_id} from the Hugging Face hub ({_root_cause(exc)}); "
            f"pass a local checkpoint ({ORIGINAL_FILENAME} or a model directory) instead"
        ) from exc


def _root_cause(exc: BaseException) -> str:
    """The innermost error behind a failed download, in a few words (what a user can act on)."""
    seen = exc
    while True:
        inner = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
        if inner is None:
            break
        seen = inner
    text = str(seen).strip().splitlines()[0] if str(seen).strip() else ""
    if "connect" in type(seen).__name__.lower() or "connection" in text.lower() or "resolve" in text.lower():
        return "the hub could not be reached"
    return f"{type(seen).__name__}: {text[:120]}" if text else type(seen).__name__


_WEIGHT_SUFFIXES = {".pth", ".pt", ".bin", ".safetensors", ".ckpt"}


def looks_like_hub_id(text: str) -> bool:
    """``org/name`` and not a (missing) local weights file such as ``ckpt/audioset.pth``."""
    return (bool(re.fullmatch(r"[\w.-]+/[\w.-]+", text)) and not text.startswith((".", "/"))
            and Path(text).suffix.lower() not in _WEIGHT_SUFFIXES)


def weights_file(source: str | os.PathLike) -> Path:
    """The file holding an AST source's weights (for hashing): the .pth itself, or the weights
    file of a model directory or cached hub model."""
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        if not looks_like_hub_id(str(source)):
            raise ModelNotFoundError(f"AST checkpoint {source} does not exist")
        path = resolve_hub(str(source))
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise ModelNotFoundError(f"{source} has no model.safetensors or pytorch_model.bin")
