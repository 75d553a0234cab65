"""On-disk caches that make training fast.

* Fbank cache: each file's first window of raw log-mel frames (zero-padded) and its valid frame
  count, computed once, stored as ``.npy`` and memory-mapped back; keyed by the file's content
  hash and the feature configuration, so a renamed file hits and a changed file misses.
* Backbone-output cache: when nothing before the mapper trains (AST-BS, or any fixed input),
  the frozen AST's pooled embedding and logits per file, keyed by content, feature config,
  normalisation and the backbone's hash: then training a mapper takes seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mictag import audio, frontends
from mictag.digest import config_digest, file_digest
from mictag.frontends import FbankConfig


def window_frames(path: str | os.PathLike, cfg: FbankConfig) -> tuple[np.ndarray, int]:
    """Raw log-mel frames of the first window of a file, zero-padded, and the valid count.

    Decodes only as much audio as the window needs (through the shared decoder)."""
    stream = frontends.FbankStream(cfg)
    got = []
    for chunk in audio.stream(path, chunk_seconds=cfg.window_seconds + 0.1):
        got.append(stream.push(chunk))
        if stream.frames_emitted >= cfg.target_frames:
            break
    else:
        got.append(stream.finish())
    frames = np.concatenate(got) if got else np.zeros((0, cfg.num_mel_bins), np.float32)
    return frontends.pad_frames(frames, cfg)


class FbankCache:
    """``root/fbank-<config>/<content sha256>.npy`` holding (target_frames + 1, mel) float32:
    the frames, then a row whose first entry is the valid frame count."""

    def __init__(self, root: str | os.PathLike, cfg: FbankConfig):
        self.cfg = cfg
        self.dir = Path(root) / f"fbank-{config_digest(cfg.to_dict())}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, path: str | os.PathLike, digest: str | None = None) -> tuple[np.ndarray, int]:
        digest = digest or file_digest(path)
        entry = self.dir / f"{digest}.npy"
        if entry.is_file():
            try:
                stored = np.load(entry, mmap_mode="r")
                if stored.shape == (self.cfg.target_frames + 1, self.cfg.num_mel_bins):
                    return stored[:-1], int(stored[-1, 0])
            except (OSError, ValueError):
                pass  # torn or foreign entry: recompute below
        frames, valid = window_frames(path, self.cfg)
        stored = np.concatenate([frames, np.full((1, self.cfg.num_mel_bins), valid, np.float32)])
        tmp = entry.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, stored)
        os.replace(tmp, entry)  # atomic: a crash never leaves a half-written entry
        return frames, valid


class OutputCache:
    """``root/outputs-<key>/<content sha256>.npz`` with the frozen backbone's ``embedding`` and
    ``logits`` for one file; ``key`` covers everything that determines them."""

    def __init__(self, root: str | os.PathLike, key: dict):
        self.dir = Path(root) / f"outputs-{config_digest(key)}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def load(self, digest: str) -> dict[str, np.ndarray] | None:
        entry = self.dir / f"{digest}.npz"
        if not entry.is_file():
            return None
        try:
            with np.load(entry) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            return None

    def save(self, digest: str, outputs: dict[str, np.ndarray]) -> None:
        entry = self.dir / f"{digest}.npz"
        tmp = self.dir / f"{digest}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **outputs)
        os.replace(tmp, entry)
