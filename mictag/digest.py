"""Content and configuration fingerprints (sha256), shared by caches, checkpoints and resume."""

from __future__ import annotations

import hashlib
import json
import os


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def config_digest(obj: dict) -> str:
    """Short stable digest of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
