"""``mictag similar``: the files of a library nearest a query by their embeddings.

The query is a file of the table (its path as the table holds it, or its path on disk under the
scanned library), or any audio file: one whose bytes the table already holds uses that vector,
any other is scored on the fly with the table's own model (the same decode, windows and engine
as the scan), which must be the model the table was made with (its sha256 decides). The query
itself (and any copy of its bytes) is left out of the answer. ``tags`` keeps only the files the
tags output tags with every one of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mictag.digest import file_digest
from mictag.output.embeddings import EmbeddingsError, require_pyarrow
from mictag.similar.index import LibraryIndex, open_index

FORMATS = ("table", "json", "m3u")


@dataclass
class Neighbour:
    path: str  # as the table holds it (relative to the library)
    similarity: float
    location: str = ""  # the file on disk, where the library is known


@dataclass
class Answer:
    query: str
    how: str  # "in the table", "the same bytes as <path>", "scored with <model>"
    neighbours: list[Neighbour]


def table_about(table: Path) -> dict[str, str]:
    """Where the table came from (model, library, tags output), from its metadata alone."""
    require_pyarrow()
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(table).metadata or {}
    except (OSError, ValueError) as exc:
        raise EmbeddingsError(f"{table} is not a readable Parquet file ({str(exc).splitlines()[0][:160]})") from None
    about = {k.decode()[len("mictag."):]: v.decode() for k, v in meta.items() if k.startswith(b"mictag.")}
    if about.get("embeddings") != "1":
        raise EmbeddingsError(f"{table} is not an embeddings table of `mictag scan --embeddings`")
    return about


def _in_library(query: Path, library: str) -> str | None:
    """The query's path relative to the scanned library, where it lies in it."""
    if not library:
        return None
    try:
        return Path(os.path.abspath(query)).relative_to(Path(library)).as_posix()
    except ValueError:
        return None


def tagged_with(tags_file: Path, wanted: list[str]) -> set[str]:
    """The paths the tags output at ``tags_file`` tags with every label in ``wanted``."""
    from mictag.output.formats import format_of, read_parquet, read_rows
    from mictag.output.rows import labels_of

    try:
        fmt = format_of(tags_file)
        rows = read_parquet(tags_file)[0] if fmt == "parquet" else read_rows(tags_file, fmt)
    except OSError as exc:
        raise EmbeddingsError(f"cannot read the tags output {tags_file} ({exc.strerror or exc}); "
                              f"name it with --tags-file") from None
    labels = labels_of(list(rows[0].keys())) if rows else None
    if labels is not None:
        unknown = [t for t in wanted if t not in labels]
        if unknown:
            raise EmbeddingsError(f"--tags: {', '.join(unknown)} {'is not a label' if len(unknown) == 1 else 'are not labels'} "
                                  f"of {tags_file.name}; its labels: {', '.join(labels)}")
    need = set(wanted)
    return {r["path"] for r in rows if need <= {t for t in str(r.get("tags") or "").split(";") if t}}


def _scored(path: Path, model: Path, digest: str, backend: str, say) -> np.ndarray:
    """The query file's vector, scored with ``model`` (which must be the table's)."""
    from mictag.api import Tagger
    from mictag.audio import AudioError

    if not model.is_file():
        raise EmbeddingsError(f"{path} is not in the table, and the model that made the table ({model}) is not "
                              f"there to score it: give it with --model")
    if file_digest(model) != digest:
        raise EmbeddingsError(f"{model} is not the model the table was made with (sha256 {digest[:12]}); a vector "
                              f"from another model cannot be compared with the table's")
    try:
        result = Tagger(model, backend=backend, embeddings=True, on_message=say).tag(path)
    except AudioError as exc:
        raise EmbeddingsError(f"cannot use the query: {exc}") from None
    if result.embedding is None:
        raise EmbeddingsError(f"{path} has no audio to compare (status {result.status})")
    return result.embedding


def find_similar(table: str | os.PathLike, query: str | os.PathLike, k: int = 10, tags: list[str] | None = None,
                 tags_file: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
                 kind: str = "auto", backend: str = "auto",
                 on_message: Callable[[str], None] | None = None) -> Answer:
    """The ``k`` files of ``table`` nearest ``query`` (see the module docstring), nearest first."""
    if k < 1:
        raise EmbeddingsError(f"-k must be at least 1, not {k}")
    table = Path(table)
    say = on_message or (lambda m: None)
    about = table_about(table) if table.is_file() else {}
    index = open_index(table, kind, on_message=say)
    digest = index.manifest.model_sha256
    exclude: set[int] = set()
    query_text = os.fspath(query)
    key = index.key_of(query_text)
    if key is None and Path(query_text).exists():
        rel = _in_library(Path(query_text), about.get("library", ""))
        key = index.key_of(rel) if rel is not None else None
    if key is not None:
        vector, how = index.vector(key), "in the table"
        exclude.add(key)
        sha = index.keys.content_sha256[key]
    else:
        path = Path(query_text)
        if not path.is_file():
            what = "a folder" if path.is_dir() else ("not a regular file" if path.exists() else "not there")
            raise EmbeddingsError(f"{query_text} is neither a file of the table nor an audio file (it is {what})")
        sha = file_digest(path)
        twins = index.keys_with_content(sha)
        twin = twins[0] if twins else None
        if twin is not None:
            vector, how = index.vector(twin), f"the same bytes as {index.path(twin)}"
        else:
            vector = _scored(path, Path(model) if model else Path(about.get("model", "")), digest, backend, say)
            how = f"scored with {Path(model or about.get('model', '')).name}"
    if sha:  # the query's bytes under any name are the query itself
        exclude |= set(index.keys_with_content(sha))
    allowed = None
    if tags:
        source = Path(tags_file) if tags_file else Path(about.get("tags", ""))
        if not source.is_file():
            raise EmbeddingsError(f"--tags needs the scan's tags output ({source or 'unknown'} is not there): "
                                  f"name it with --tags-file")
        paths = tagged_with(source, tags)
        allowed = np.sort(np.fromiter((index.by_path[p] for p in paths if p in index.by_path), np.int64))
    found = index.search(vector, k, allowed, exclude)
    library = about.get("library", "")
    return Answer(query_text, how, [Neighbour(index.path(key), sim, str(Path(library) / index.path(key)) if library else "")
                                    for key, sim in found])


def render(answer: Answer, fmt: str) -> str:
    """The answer as text: an aligned table, JSON (a list of {path, similarity}, nearest first)
    or an M3U playlist (the files on disk, for a player)."""
    if fmt == "json":
        return json.dumps([{"path": n.path, "similarity": round(n.similarity, 6)} for n in answer.neighbours],
                          ensure_ascii=False, indent=1) + "\n"
    if fmt == "m3u":
        lines = ["#EXTM3U", f"#PLAYLIST:like {Path(answer.query).name}"]
        for n in answer.neighbours:
            lines += [f"#EXTINF:-1,{Path(n.path).stem} (similarity {n.similarity:.3f})", n.location or n.path]
        return "\n".join(lines) + "\n"
    if not answer.neighbours:
        return "no files to compare with\n"
    lines = [f"{'rank':>4}  {'similarity':>10}  path"]
    lines += [f"{i:>4}  {n.similarity:>10.4f}  {n.path}" for i, n in enumerate(answer.neighbours, 1)]
    return "\n".join(lines) + "\n"


def build(table: str | os.PathLike, kind: str = "auto", on_message: Callable[[str], None] | None = None) -> LibraryIndex:
    """Build (or rebuild) the table's index now."""
    return open_index(table, kind, rebuild=True, on_message=on_message)
