"""The similarity index of an embeddings table, persisted beside it (``<emb>.mictag-index/``) and
kept in step with it.

- ``vectors.f32``: every vector the index was given, float32, one row per key, appended to and
  never rewritten in place; exact search and the final scores read it (memory-mapped).
- ``rows.parquet``: per key, the file it holds (path, size, mtime, content digest) and whether it
  is still live (a file scanned again or gone leaves a dead key behind).
- ``hnsw.usearch`` (kind ``hnsw``): a USearch HNSW graph over the live keys, vectors stored as
  float16; it proposes candidates, which are then scored exactly from ``vectors.f32``.
- ``manifest.json``, written last (atomically): the kind, the model digest and width, the keys
  issued, and the table's size and mtime when the index last matched it.

:func:`open_index` compares the table with the manifest on every open: the same file, the index is
used as it is; a grown or changed table, it is refreshed incrementally (new and changed files added,
gone ones retired; rebuilt once half its keys are dead), and ``on_message`` says so; another model
or width, it is rebuilt. A stale index is never used silently. A crash mid-refresh leaves the old
manifest, and the next open redoes the refresh (vectors past the manifest's count are cut first).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mictag.output.embeddings import EmbeddingsError, EmbeddingTable, Files, require_pyarrow
from mictag.output.embeddings import read_table
from mictag.output.files import index_dir
from mictag.output.formats import write_parquet_table
from mictag.output.journal import write_text_synced, writing

KINDS = ("auto", "exact", "hnsw")
# auto: exact search up to this many files, HNSW above (benchmarks/similar_index.py: exact search
# of 100,000 768-wide vectors takes ~20 ms a query here, of 1,000,000 ~250 ms; HNSW stays ~1 ms).
EXACT_UP_TO = 100_000
HNSW = {"connectivity": 16, "expansion_add": 128, "expansion_search": 128}
FORMAT = 1


@dataclass
class Manifest:
    kind: str
    model_sha256: str
    dim: int
    keys: int  # keys issued so far (rows of vectors.f32)
    live: int
    table_size: int
    table_mtime_ns: int
    format: int = FORMAT


class LibraryIndex:
    """An opened index: ``search`` answers queries; ``vector``/``key_of`` look files up."""

    def __init__(self, folder: Path, manifest: Manifest, keys: Files, hnsw=None):
        self.folder, self.manifest, self.hnsw = folder, manifest, hnsw
        self.keys = keys  # per key: path, size_bytes, mtime, content_sha256, live
        self.by_path = {keys.path[k]: int(k) for k in np.flatnonzero(keys.live)}
        self.vectors = (np.memmap(folder / "vectors.f32", np.float32, "r", shape=(manifest.keys, manifest.dim))
                        if manifest.keys else np.zeros((0, manifest.dim), np.float32))
        self.live_keys = np.fromiter(self.by_path.values(), np.int64, len(self.by_path))
        self.live_keys.sort()
        self._by_content: dict[str, list[int]] | None = None

    @property
    def kind(self) -> str:
        return self.manifest.kind

    def __len__(self) -> int:
        return len(self.by_path)

    def key_of(self, path: str) -> int | None:
        return self.by_path.get(path)

    def path(self, key: int) -> str:
        return self.keys.path[key]

    def keys_with_content(self, sha256: str) -> list[int]:
        """The live keys of files with these bytes (a copy, a renamed file)."""
        if self._by_content is None:
            self._by_content = {}
            for k in self.live_keys:
                self._by_content.setdefault(self.keys.content_sha256[k], []).append(int(k))
        return self._by_content.get(sha256, []) if sha256 else []

    def vector(self, key: int) -> np.ndarray:
        return np.array(self.vectors[key], np.float32)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None,
               exclude: set[int] = frozenset()) -> list[tuple[int, float]]:
        """The ``k`` live keys nearest ``query`` (an L2-normalised vector) by cosine similarity,
        nearest first, as (key, similarity) with the similarity computed exactly; ``allowed``
        (sorted keys) restricts the answer, ``exclude`` leaves keys out."""
        query = np.asarray(query, np.float32)
        if query.shape != (self.manifest.dim,):
            raise EmbeddingsError(f"a query vector of width {query.shape[-1] if query.ndim else 0}, "
                                  f"but the index holds vectors of width {self.manifest.dim}")
        pool = self.live_keys if allowed is None else np.intersect1d(self.live_keys, allowed)
        want = min(k + len(exclude), len(pool))
        if want == 0:
            return []
        if self.hnsw is None or len(pool) <= EXACT_UP_TO // 10 or (allowed is not None and len(pool) < len(self) // 4):
            candidates = pool  # small (or a small share after the tags): every one, exactly
        else:
            candidates = self._proposed(query, want, allowed)
        return self._ranked(query, candidates, k, exclude)

    def _proposed(self, query: np.ndarray, want: int, allowed: np.ndarray | None) -> np.ndarray:
        """HNSW candidates: over-fetched so that after the filters ``want`` remain, and more asked
        for until they do (or the graph has no more)."""
        share = 1.0 if allowed is None else len(np.intersect1d(self.live_keys, allowed)) / max(1, len(self))
        fetch = min(len(self), max(4 * want, int(2 * want / max(share, 1e-6))))
        while True:
            found = self.hnsw.search(query, fetch).keys.astype(np.int64)
            if allowed is not None:
                found = found[np.isin(found, allowed, assume_unique=False)]
            if len(found) >= want or fetch >= len(self):
                return found
            fetch = min(len(self), fetch * 4)

    def _similarities(self, query: np.ndarray, keys: np.ndarray) -> np.ndarray:
        return _similarities_of(self.vectors, query, keys)

    def _ranked(self, query: np.ndarray, keys: np.ndarray, k: int, exclude: set[int]) -> list[tuple[int, float]]:
        if exclude:
            keys = keys[~np.isin(keys, np.fromiter(exclude, np.int64, len(exclude)))]
        if len(keys) == 0:
            return []
        sims = self._similarities(query, keys)
        top = np.argpartition(-sims, min(k, len(sims)) - 1)[:k] if len(sims) > k else np.arange(len(sims))
        top = top[np.lexsort((keys[top], -sims[top]))]  # nearest first; ties by key (stable output)
        return [(int(keys[i]), float(sims[i])) for i in top]


# -- building and refreshing ---------------------------------------------------------------------
STEP = 65536  # rows per matrix product: bounded memory whatever the library's size


def _similarities_of(vectors: np.ndarray, query: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``vectors[keys] @ query``, in steps; over most of the rows, read in order (a memory map)."""
    if len(keys) > len(vectors) // 2:
        every = np.concatenate([vectors[i : i + STEP] @ query for i in range(0, len(vectors), STEP)])
        return every[keys].astype(np.float32)
    return np.concatenate([vectors[keys[i : i + STEP]] @ query for i in range(0, len(keys), STEP)]).astype(np.float32)


def _read_manifest(folder: Path) -> Manifest | None:
    try:
        data = json.loads((folder / "manifest.json").read_text("utf-8"))
        manifest = Manifest(**data)
    except (OSError, ValueError, TypeError):
        return None
    return manifest if manifest.format == FORMAT else None


def _read_keys(folder: Path, count: int) -> Files | None:
    import pyarrow.parquet as pq

    try:
        keys = Files.of(pq.read_table(folder / "rows.parquet"), live=True)
    except (OSError, ValueError, KeyError):
        return None
    return keys if len(keys) == count else None


def _write_keys(folder: Path, keys: Files) -> None:
    write_parquet_table(folder / "rows.parquet", keys.arrow())


def _new_hnsw(dim: int):
    try:
        from usearch.index import Index
    except ImportError:
        raise EmbeddingsError("an approximate index needs usearch: pip install 'mictag[similar]' "
                              "(or --index exact)") from None
    return Index(ndim=dim, metric="cos", dtype="f16", **HNSW)


def _load_hnsw(folder: Path, view: bool = False):
    """The saved graph: memory-mapped (``view``: a querying process, nothing copied, read-only) or
    loaded to be changed (a refresh). Its search breadth is set again (it is not saved)."""
    from usearch.index import Index

    path = folder / "hnsw.usearch"
    try:
        index = Index.restore(str(path), view=view)
    except Exception:  # a missing or damaged graph: the caller rebuilds it
        return None
    if index is None:
        return None
    index.expansion_search = HNSW["expansion_search"]
    return index


def _save_hnsw(folder: Path, hnsw) -> None:
    tmp = folder / "hnsw.usearch.tmp"
    hnsw.save(str(tmp))
    os.replace(tmp, folder / "hnsw.usearch")


def _table_stamp(table: Path) -> tuple[int, int]:
    st = table.stat()
    return st.st_size, st.st_mtime_ns


def open_index(table: str | os.PathLike, kind: str = "auto", rebuild: bool = False,
               on_message: Callable[[str], None] | None = None) -> LibraryIndex:
    """The index of the embeddings ``table``: built on first use, refreshed when the table changed
    (see the module docstring). ``kind``: exact, hnsw, or auto (by the number of files)."""
    if kind not in KINDS:
        raise EmbeddingsError(f"unknown index kind {kind!r}: choose {', '.join(KINDS)}")
    require_pyarrow()
    say = on_message or (lambda m: None)
    table = Path(table)
    if not table.is_file():
        raise EmbeddingsError(f"{table} does not exist: write it with `mictag scan LIBRARY --out tags.csv "
                              f"--embeddings {table.name}`")
    folder = index_dir(table)
    manifest = None if rebuild else _read_manifest(folder)
    stamp = _table_stamp(table)
    if manifest is not None and (manifest.table_size, manifest.table_mtime_ns) == stamp and kind in ("auto", manifest.kind):
        keys = _read_keys(folder, manifest.keys)
        hnsw = _load_hnsw(folder, view=True) if manifest.kind == "hnsw" else None
        if keys is not None and (manifest.kind == "exact" or hnsw is not None) and _vectors_ok(folder, manifest):
            return LibraryIndex(folder, manifest, keys, hnsw)
        manifest = None  # damaged: rebuilt below
    t0 = time.perf_counter()
    data = read_table(table)
    chosen = kind if kind != "auto" else (manifest.kind if manifest else ("hnsw" if len(data) > EXACT_UP_TO else "exact"))
    if chosen == "hnsw":
        _new_hnsw(1)  # usearch importable, or one clear sentence now
    usable = (manifest is not None and manifest.model_sha256 == data.model_sha256 and manifest.dim == data.dim
              and manifest.kind == chosen)
    keys = _read_keys(folder, manifest.keys) if usable else None
    hnsw = (_load_hnsw(folder) if chosen == "hnsw" else None) if keys is not None else None
    if keys is None or (chosen == "hnsw" and hnsw is None):
        return _build(folder, table, data, chosen, stamp, say, t0)
    return _refresh(folder, manifest, keys, hnsw, data, stamp, say, t0)


def _vectors_ok(folder: Path, manifest: Manifest) -> bool:
    try:
        return (folder / "vectors.f32").stat().st_size >= manifest.keys * manifest.dim * 4
    except OSError:
        return manifest.keys == 0


def _build(folder: Path, table: Path, data: EmbeddingTable, kind: str, stamp, say, t0) -> LibraryIndex:
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (folder / "manifest.json").unlink()  # the old index is void from here on
        for name in ("hnsw.usearch", "vectors.f32"):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        vectors = np.ascontiguousarray(data.vectors, np.float32)
        with open(folder / "vectors.f32", "wb") as f:
            f.write(vectors.tobytes())
            f.flush()
            os.fsync(f.fileno())
        f = data.files
        keys = Files(list(f.path), f.size_bytes.copy(), f.mtime.copy(), list(f.content_sha256), np.ones(len(f), bool))
        _write_keys(folder, keys)
        hnsw = None
        if kind == "hnsw":
            hnsw = _new_hnsw(data.dim)
            if len(keys):
                hnsw.add(np.arange(len(keys), dtype=np.uint64), vectors, threads=os.cpu_count() or 1)
            _save_hnsw(folder, hnsw)
        manifest = Manifest(kind, data.model_sha256, data.dim, len(keys), len(keys), *stamp)
        write_text_synced(folder / "manifest.json", json.dumps(asdict(manifest)))
    say(f"built the {kind} index of {table.name}: {len(keys)} files in {time.perf_counter() - t0:.1f} s")
    return LibraryIndex(folder, manifest, keys, hnsw)


def _refresh(folder: Path, manifest: Manifest, keys: Files, hnsw, data: EmbeddingTable, stamp, say,
             t0) -> LibraryIndex:
    live = {keys.path[k]: int(k) for k in np.flatnonzero(keys.live)}
    fresh, gone, seen = [], [], set()  # table rows to add; keys to retire
    table = data.files
    for i, path in enumerate(table.path):
        seen.add(path)
        key = live.get(path)
        if key is not None and keys.identity(key) == table.identity(i):
            continue
        if key is not None:
            gone.append(key)  # scanned again: its old vector retires
        fresh.append(i)
    gone += [k for p, k in live.items() if p not in seen]
    dead = manifest.keys - manifest.live + len(gone)
    if dead > (manifest.keys + len(fresh)) // 2:  # mostly dead keys: start over
        return _build(folder, data.path, data, manifest.kind, stamp, say, t0)
    first = manifest.keys
    with writing(folder):
        keys.live[gone] = False
        vectors_file = folder / "vectors.f32"
        added = np.ascontiguousarray(data.vectors[fresh], np.float32)
        with open(vectors_file, "r+b" if vectors_file.exists() else "wb") as f:
            f.truncate(first * manifest.dim * 4)  # what a crashed refresh appended past the manifest goes
            f.seek(0, os.SEEK_END)
            f.write(added.tobytes())
            f.flush()
            os.fsync(f.fileno())
        keys = Files(keys.path + [table.path[i] for i in fresh],
                     np.concatenate([keys.size_bytes, table.size_bytes[fresh]]),
                     np.concatenate([keys.mtime, table.mtime[fresh]]),
                     keys.content_sha256 + [table.content_sha256[i] for i in fresh],
                     np.concatenate([keys.live, np.ones(len(fresh), bool)]))
        _write_keys(folder, keys)
        if hnsw is not None:
            stray = [int(k) for k in hnsw.keys if int(k) >= first] if len(hnsw) > manifest.live else []
            drop = np.asarray(gone + stray, np.uint64)
            if len(drop):
                hnsw.remove(drop)
            if fresh:
                hnsw.add(np.arange(first, first + len(fresh), dtype=np.uint64), added, threads=os.cpu_count() or 1)
            _save_hnsw(folder, hnsw)
        manifest = Manifest(manifest.kind, manifest.model_sha256, manifest.dim, len(keys), int(keys.live.sum()),
                            *stamp)
        write_text_synced(folder / "manifest.json", json.dumps(asdict(manifest)))
    say(f"the table changed since its index was built: refreshed it (+{len(fresh)} files, "
        f"-{len(gone)} retired) in {time.perf_counter() - t0:.1f} s")
    return LibraryIndex(folder, manifest, keys, hnsw)
