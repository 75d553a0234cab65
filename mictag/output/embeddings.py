"""The embeddings table (``mictag scan --embeddings emb.parquet``): one row per file with the
file's identity as the tags output records it (path, size_bytes, mtime, content_sha256), the
digest of the model that made it (``model_sha256``) and ``embedding``, a fixed-size float32
vector: the mean of the frozen network's pooled features over the file's windows, L2-normalised
(:func:`file_vector`), so that two files' cosine similarity is the dot product of their vectors.

Like a Parquet tags output, the table cannot grow row by row: the scan appends each file's vector
to a journal beside it (``<emb>.jsonl-journal``, one JSON line per file, the vector in base64 of
little-endian float32, so every bit survives) under the same rules as the rows (one unbuffered
append per file, synced once a second, a torn last line cut on resume), and writes the table from
the journal when it stops, finished or interrupted.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mictag.errors import MictagError
from mictag.output.files import parquet_journal_path
from mictag.output.formats import read_rows, write_parquet_table
from mictag.output.journal import Journal, write_text_synced
from mictag.output.rows import last_per_path

IDENTITY = ("path", "size_bytes", "mtime", "content_sha256")  # as the tags output's columns
COLUMNS = (*IDENTITY, "model_sha256", "embedding")
NEEDS_PYARROW = "the embeddings table is Parquet, which needs pyarrow: pip install 'mictag[similar]'"


class EmbeddingsError(MictagError):
    """An embeddings table that cannot be read or used as asked."""


def file_vector(windows: list[np.ndarray]) -> np.ndarray:
    """A file's vector: the mean of its windows' embeddings, L2-normalised (float32). A file whose
    mean is all zeros keeps its zeros (it is similar to nothing)."""
    mean = np.mean(np.stack([np.asarray(w, np.float64) for w in windows]), axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4").astype(np.float32)


def journal_path(out: str | Path) -> Path:
    """Where the scan journals the table's rows (the same name as a Parquet tags output's journal)."""
    return parquet_journal_path(out)


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise EmbeddingsError(NEEDS_PYARROW) from None


class EmbeddingsWriter:
    """Appends one file's vector per line to the journal of the table at ``out``."""

    def __init__(self, out: Path, fresh: bool):
        self.out = Path(out)
        self.journal = journal_path(self.out)
        self._journal = Journal(self.journal, fresh)

    def write(self, row: dict, vector: np.ndarray, model_sha256: str) -> None:
        """``row``: a tags row (its identity columns are copied); ``vector``: the file's."""
        line = {k: row.get(k) for k in IDENTITY}
        line["model_sha256"] = model_sha256
        line["dim"] = int(vector.shape[0])
        line["embedding"] = encode_vector(vector)
        self._journal.append(json.dumps(line, ensure_ascii=False) + "\n")

    def close(self, quiet: bool = False) -> None:
        self._journal.close(quiet)


def read_journal(out: str | Path) -> list[dict]:
    """The journal's lines (a torn last one cut), in order; a line that does not decode is left out
    (its file is simply scored again)."""
    lines = []
    for line in read_rows(journal_path(out), "jsonl"):
        try:
            vector = decode_vector(line["embedding"])
        except (KeyError, TypeError, ValueError):
            continue
        if vector.shape[0] != line.get("dim"):
            continue
        lines.append({**line, "embedding": vector})
    return lines


def rewrite_journal(out: str | Path, lines: list[dict]) -> None:
    """Replace the journal with ``lines`` (as :func:`read_journal` gives them), atomically."""
    text = "".join(json.dumps({**{k: v for k, v in l.items() if k != "embedding"},
                               "embedding": encode_vector(l["embedding"])}, ensure_ascii=False) + "\n"
                   for l in lines)
    write_text_synced(journal_path(out), text)


ROW_GROUP = 8192  # rows per Parquet row group: one file's vector is read without the rest


def write_table(out: str | Path, lines: list[dict], about: dict[str, str] | None = None) -> None:
    """Replace the table at ``out`` with ``lines`` (one per file), atomically and durably.
    ``about``: where it came from, kept in the schema's metadata (``model``: the model file,
    ``library``: the folder scanned, ``tags``: the tags output; absolute paths), for ``mictag
    similar`` to score a new file with the same model, join the tags and write playlists."""
    require_pyarrow()
    import pyarrow as pa

    out = Path(out)
    lines = last_per_path(lines)
    dims = {int(l["embedding"].shape[0]) for l in lines}
    if len(dims) > 1:
        raise EmbeddingsError(f"{out}: vectors of {len(dims)} widths ({', '.join(map(str, sorted(dims)))}) "
                              f"in one scan; rerun it with --overwrite")
    dim = dims.pop() if dims else 0
    digests = sorted({l.get("model_sha256") or "" for l in lines})
    flat = np.concatenate([l["embedding"] for l in lines]) if lines else np.zeros(0, np.float32)
    columns = {
        "path": pa.array([l.get("path") for l in lines], pa.string()),
        "size_bytes": pa.array([l.get("size_bytes") for l in lines], pa.int64()),
        "mtime": pa.array([l.get("mtime") for l in lines], pa.float64()),
        "content_sha256": pa.array([l.get("content_sha256") or "" for l in lines], pa.string()),
        "model_sha256": pa.array([l.get("model_sha256") or "" for l in lines], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), max(dim, 1))
        if dim else pa.array([], pa.list_(pa.float32(), 1)),
    }
    meta = {"mictag.embeddings": "1", "mictag.dim": str(dim), "mictag.model_sha256": ",".join(digests),
            "mictag.vector": "mean of window embeddings, L2-normalised",
            **{f"mictag.{k}": str(v) for k, v in (about or {}).items()}}
    table = pa.table(columns).replace_schema_metadata({k: v.encode() for k, v in meta.items()})
    write_parquet_table(out, table, row_group_size=ROW_GROUP)


@dataclass
class Files:
    """Files by number, column-wise (a million of them stay small): the identity columns of an
    embeddings table, or of an index's keys (with ``live``)."""

    path: list[str]
    size_bytes: np.ndarray  # int64
    mtime: np.ndarray  # float64
    content_sha256: list[str]
    live: np.ndarray | None = None  # bool, for an index's keys

    def __len__(self) -> int:
        return len(self.path)

    def identity(self, i: int) -> tuple:
        return self.path[i], int(self.size_bytes[i]), float(self.mtime[i]), self.content_sha256[i]

    def row(self, i: int) -> dict:
        return {"path": self.path[i], "size_bytes": int(self.size_bytes[i]), "mtime": float(self.mtime[i]),
                "content_sha256": self.content_sha256[i]}

    @classmethod
    def of(cls, table, live: bool = False) -> "Files":
        """From a pyarrow table with these columns (nulls: 0, 0.0, "")."""
        import pyarrow.compute as pc

        def column(name, fill):
            return pc.fill_null(table.column(name), fill)

        return cls(column("path", "").to_pylist(), column("size_bytes", 0).to_numpy().astype(np.int64),
                   column("mtime", 0.0).to_numpy().astype(np.float64), column("content_sha256", "").to_pylist(),
                   column("live", False).to_numpy(zero_copy_only=False).astype(bool) if live else None)

    def arrow(self):
        import pyarrow as pa

        columns = {"path": pa.array(self.path, pa.string()), "size_bytes": pa.array(self.size_bytes, pa.int64()),
                   "mtime": pa.array(self.mtime, pa.float64()),
                   "content_sha256": pa.array(self.content_sha256, pa.string())}
        if self.live is not None:
            columns["live"] = pa.array(self.live, pa.bool_())
        return pa.table(columns)


@dataclass
class EmbeddingTable:
    """An embeddings table in memory: ``files`` (identity, by row), ``vectors`` ((files, dim)
    float32, L2-normalised rows), the model's digest and where the table came from."""

    path: Path
    files: Files
    vectors: np.ndarray
    model_sha256: str
    about: dict[str, str] = field(default_factory=dict)  # model, library, tags (see write_table)
    _index: dict[str, int] | None = None

    @property
    def rows(self) -> list[dict]:
        """Each file's identity and the model digest, as dicts (for a few thousand files)."""
        return [{**self.files.row(i), "model_sha256": self.model_sha256} for i in range(len(self.files))]

    @property
    def index(self) -> dict[str, int]:
        """path -> row number."""
        if self._index is None:
            self._index = {p: i for i, p in enumerate(self.files.path)}
        return self._index

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.files)


def read_table(path: str | Path) -> EmbeddingTable:
    """The table at ``path``; an EmbeddingsError naming the file and what is wrong with it."""
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise EmbeddingsError(f"{path} does not exist: write it with `mictag scan LIBRARY --out tags.csv "
                              f"--embeddings {path.name}`")
    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise EmbeddingsError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0][:160]})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise EmbeddingsError(f"{path} is not an embeddings table of `mictag scan --embeddings` "
                              f"(it lacks {', '.join(missing)})")
    column = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise EmbeddingsError(f"{path}: its embedding column is {column.type}, not fixed-size vectors")
    dim = column.type.list_size
    vectors = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim) \
        if len(column) else np.zeros((0, dim), np.float32)
    digests = set(pc.unique(pc.fill_null(table.column("model_sha256"), "")).to_pylist())
    if len(digests) > 1:
        raise EmbeddingsError(f"{path} mixes vectors of {len(digests)} models; scan again with --overwrite")
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    digest = digests.pop() if digests else meta.get("mictag.model_sha256", "")
    if not np.all(np.isfinite(vectors)):
        raise EmbeddingsError(f"{path} holds vectors that are not finite numbers")
    about = {k[len("mictag."):]: v for k, v in meta.items() if k in ("mictag.model", "mictag.library", "mictag.tags")}
    return EmbeddingTable(path, Files.of(table), vectors, digest, about)
