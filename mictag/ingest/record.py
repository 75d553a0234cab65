"""One file's result as a workflow tool reads it: a flat, self-describing JSON object.

    {"path": "...", "status": "ok", "error": "", "duration_s": 12.5, "windows": 2,
     "scores": {"accordion": 0.01, ...}, "tags": ["guitar", "voice"],
     "segments": [{"start": 0.0, "end": 10.24, "scores": {"accordion": 0.01, ...}}, ...],
     "model": {"name": "tagger.onnx", "sha256": "..."}, "mictag_version": "0.1.0"}

``status`` is the scan's (ok, partial, empty, error) and ``error`` its note; an error has no
scores, tags or segments. ``SCHEMA`` is the JSON Schema of the object (README shows it).
"""

from __future__ import annotations

from mictag import __version__
from mictag.output.rows import FileResult

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "mictag file result",
    "type": "object",
    "required": ["path", "status", "error", "duration_s", "windows", "scores", "tags", "segments", "model",
                 "mictag_version"],
    "properties": {
        "path": {"type": "string"},
        "status": {"enum": ["ok", "partial", "empty", "error"]},
        "error": {"type": "string", "description": "why a file failed, or a note (decoding stopped at ..., digital silence)"},
        "duration_s": {"type": ["number", "null"]},
        "windows": {"type": "integer", "minimum": 0},
        "scores": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "segments": {"type": "array", "items": {
            "type": "object", "required": ["start", "end", "scores"],
            "properties": {"start": {"type": "number"}, "end": {"type": "number"},
                           "scores": {"type": "object", "additionalProperties": {"type": "number"}}}}},
        "model": {"type": "object", "required": ["name", "sha256"],
                  "properties": {"name": {"type": "string"}, "sha256": {"type": "string"}}},
        "mictag_version": {"type": "string"},
    },
}


def file_record(result: FileResult, labels: list[str], model: dict[str, str]) -> dict:
    """``result`` as the JSON object above; ``model``: its name and sha256."""
    scored = result.scores is not None and result.status != "error"
    return {
        "path": result.path,
        "status": result.status,
        "error": result.error,
        "duration_s": None if result.duration_s is None else round(float(result.duration_s), 3),
        "windows": int(result.windows),
        "scores": {label: round(float(v), 6) for label, v in zip(labels, result.scores)} if scored else {},
        "tags": list(result.tags) if scored else [],
        "segments": [{"start": s["start"], "end": s["end"], "scores": dict(zip(labels, s["scores"]))}
                     for s in result.segments] if scored else [],
        "model": dict(model),
        "mictag_version": __version__,
    }
