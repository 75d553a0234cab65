"""The files beside a scan's output ``<out>``, named here and nowhere else:

- ``<out>.mictag.json``, the state: the model fingerprint and scoring options the rows were made
  with (compared on resume), the model's name and thresholds (for the report and write-tags);
- ``<out>.jsonl-journal``: a Parquet output's rows as they are written (Parquet cannot grow row by
  row, so the scan resumes from this and writes the Parquet file when it completes);
- ``<out>.mictag-redo.json``: rows a fast path wrote before one of its checks failed, being scored
  again (a rerun must not keep them; see :mod:`mictag.runtime.engines.trust`);
- ``<out>.mictag.lock``: the lock that keeps one writer per output (:mod:`mictag.output.lock`);
- ``<out>.write-tags-journal``: what ``mictag write-tags`` has written into the audio files;
- ``<emb>.mictag-index/``: the similarity index of an embeddings table (:mod:`mictag.similar.index`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _beside(out: str | os.PathLike, suffix: str) -> Path:
    out = Path(out)
    return out.with_name(out.name + suffix)


def state_path(out: str | os.PathLike) -> Path:
    return _beside(out, ".mictag.json")


def parquet_journal_path(out: str | os.PathLike) -> Path:
    return _beside(out, ".jsonl-journal")


def redo_path(out: str | os.PathLike) -> Path:
    return _beside(out, ".mictag-redo.json")


def lock_path(out: str | os.PathLike) -> Path:
    return _beside(out, ".mictag.lock")


def write_tags_journal_path(out: str | os.PathLike) -> Path:
    return _beside(out, ".write-tags-journal")


def index_dir(embeddings: str | os.PathLike) -> Path:
    return _beside(embeddings, ".mictag-index")


def read_state(out: str | os.PathLike) -> dict | None:
    """The state beside ``out`` (see above), or None where there is none or it is unreadable."""
    try:
        state = json.loads(state_path(out).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None
