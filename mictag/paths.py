"""Where mictag looks for models: its own cache and the Hugging Face hub cache."""

from __future__ import annotations

import os
from pathlib import Path


def mictag_home() -> Path:
    """mictag's model cache: $MICTAG_HOME, else $XDG_CACHE_HOME/mictag, else ~/.cache/mictag."""
    if os.environ.get("MICTAG_HOME"):
        return Path(os.environ["MICTAG_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mictag"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved as huggingface_hub does (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"
