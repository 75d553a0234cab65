"""The metadata an exported model carries (key ``mictag`` in the ONNX file, JSON), read without
torch: everything the runtime needs (labels, thresholds, features, window) comes from here."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mictag.errors import CheckpointError

METADATA_KEY = "mictag"
REQUIRED = ("labels", "thresholds", "sample_rate", "window_samples", "features")


def check_metadata(props: dict, path: str | os.PathLike) -> dict:
    """The parsed metadata from an ONNX model's custom metadata map, or a clear refusal."""
    if METADATA_KEY not in props:
        raise CheckpointError(f"{path} has no mictag metadata (labels, thresholds, features): export it with `mictag export`")
    try:
        meta = json.loads(props[METADATA_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{path}: its mictag metadata is not valid JSON ({exc})") from None
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: mictag metadata lacks {', '.join(missing)}")
    if len(meta["thresholds"]) != len(meta["labels"]):
        raise CheckpointError(f"{path}: mictag metadata has {len(meta['thresholds'])} thresholds for {len(meta['labels'])} labels")
    return meta


def read_metadata(path: str | os.PathLike) -> dict:
    """The mictag metadata of an exported ONNX model (needs only onnxruntime)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model {path} does not exist")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
    return check_metadata(session.get_modelmeta().custom_metadata_map, path)
