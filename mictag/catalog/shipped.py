"""The taggers that ship inside the package, torch-free: where their trained weights and provenance
are, and where the tagger built from them sits in the model cache.

A shipped tagger is the small trained part of a reprogrammed system (reprogrammer and mapper, a
few kilobytes, ``mictag/data/taggers/<name>.safetensors``) with its provenance and per-label
thresholds (``<name>.json``). The frozen backbone is not shipped: ``mictag models pull`` builds
the tagger against the user's own copy, whose sha256 must equal the one it was trained on, into
``$MICTAG_HOME/models/<name>-<sha12>.onnx`` (sha12 of the weights and the backbone together, so
new weights or another backbone build a new file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mictag.errors import MictagError

TAGGERS_DIR = Path(__file__).resolve().parent.parent / "data" / "taggers"
# backbone kind -> the shipped tagger `mictag scan --backbone KIND` uses unless --zero-training.
DEFAULT_SHIPPED = {"musicnn": "musicnn-openmic20"}


def provenance_path(name: str) -> Path:
    return TAGGERS_DIR / f"{name}.json"


def weights_path(name: str) -> Path:
    return TAGGERS_DIR / f"{name}.safetensors"


def available() -> list[str]:
    """Names of the shipped taggers whose files are in the package."""
    if not TAGGERS_DIR.is_dir():
        return []
    return sorted(p.stem for p in TAGGERS_DIR.glob("*.json") if weights_path(p.stem).is_file())


def provenance(name: str) -> dict:
    """The recorded provenance of a shipped tagger (what it was trained on, how, and its scores)."""
    path = provenance_path(name)
    if not path.is_file() or not weights_path(name).is_file():
        raise MictagError(f"no shipped tagger {name!r} in this mictag (have: {', '.join(available()) or 'none'})")
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise MictagError(f"the shipped tagger's record {path} is unreadable ({exc}): reinstall mictag") from None


def built_name(name: str, backbone_sha256: str) -> str:
    """The cache file name of ``name`` built against a backbone with this sha256."""
    record = provenance(name)
    key = hashlib.sha256(f"{record['weights']['sha256']}:{backbone_sha256}".encode()).hexdigest()
    return f"{name}-{key[:12]}.onnx"


def summary(record: dict) -> str:
    """One line: the system, its version, and its test scores (corpus test, real recordings, the
    held-out sample family and the unseen recordings where measured)."""
    m = record.get("metrics", {})
    nan = float("nan")
    version = f"version {record['version']}, " if "version" in record else ""
    parts = [f"{version}{record.get('system_name', '?')}, {len(record.get('labels', []))} labels, "
             f"{record.get('trainable', 0):,} trained parameters"]
    for key, what in (("test", "corpus test"), ("cross_domain", "real recordings"),
                      ("held_out_family", "held-out sample family"),
                      ("unseen_recordings", "recordings from unseen packages")):
        if m.get(key):
            parts.append(f"{what} macro F1 {m[key].get('macro_f1', nan):.3f}, mAP {m[key].get('mAP', nan):.3f}")
    return "; ".join(parts)
