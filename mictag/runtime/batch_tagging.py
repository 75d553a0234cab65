"""Tag a caller's own list of files, each result handed back with the caller's key.

For integrations that keep their own records (a beets library, a catalogue database) rather than
a folder and an output table: the windows of all the files are batched across files as in
``mictag scan``, progress goes to a callback, and a file that cannot be read or decoded comes back
as an ``error`` result with its reason, never as an exception, while the others go on.
:func:`model_identity` names the model and scoring rule a result came from, so that a caller can
tell which of its records this model has already tagged; :func:`default_tagger` finds the tagger
``mictag scan`` uses without ``--model`` once it is built.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from mictag.digest import file_digest
from mictag.errors import MictagError, ModelNotFoundError
from mictag.runtime.discovery import FileEntry
from mictag.runtime.models import cached_taggers, default_model, models_dir
from mictag.runtime.pipeline import Scanner
from mictag.runtime.results import FileResult
from mictag.runtime.tagger import Tagger

K = TypeVar("K", bound=Hashable)
BACKBONES = ("ast", "musicnn")


def default_tagger(backbone: str = "ast", on_message: Callable[[str], None] | None = None) -> Path:
    """The tagger ``mictag scan --backbone BACKBONE`` uses without ``--model``, once it is built.

    For the AST that is the newest zero-training tagger in the cache, found without torch; where
    none is built this says to run ``mictag models pull`` rather than build one from the Hugging
    Face cache as the scan would (that needs torch and minutes, which a caller tagging on the fly,
    an import hook, must not start). For musicnn it is the scan's own choice
    (:func:`mictag.runtime.models.default_model`), torch-free once ``mictag models pull musicnn``
    has built it."""
    if backbone not in BACKBONES:
        raise MictagError(f"unknown backbone {backbone!r}: choose {' or '.join(BACKBONES)}")
    if backbone == "musicnn":
        return default_model(on_message=on_message, backbone="musicnn")
    built = cached_taggers("ast")
    if built:
        return built[0]
    raise ModelNotFoundError(f"no AST tagger built in {models_dir()}: run `mictag models pull` once (it downloads "
                             f"the ~350 MB AudioSet AST unless the Hugging Face cache has it, and builds the tagger; "
                             f"needs the [train] extra), or use an exported model (.onnx, .engine, .pt)")


def model_identity(model: str | os.PathLike, threshold: float | None = None) -> str:
    """What scored a result: the model file's name and sha256 (first 12 hex digits) and, when
    one threshold replaces the model's own, that threshold, e.g.
    ``"tagger.onnx sha256:1a2b3c4d5e6f"`` or ``"tagger.onnx sha256:1a2b3c4d5e6f threshold=0.3"``.
    A record made under the same identity needs no redoing."""
    path = Path(model)
    if not path.is_file():
        raise MictagError(f"{path}: no such model file")
    ident = f"{path.name} sha256:{file_digest(path)[:12]}"
    return ident if threshold is None else f"{ident} threshold={threshold:g}"


def tag_files(tagger: Tagger, files: Iterable[tuple[K, str | os.PathLike]], workers: int = 1,
              on_progress: Callable[[dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> Iterator[tuple[K, FileResult]]:
    """Tag ``files`` ((key, path) pairs) with ``tagger``'s model and options, yielding
    ``(key, FileResult)`` as files finish (not in input order).

    ``workers`` decode processes (0: decode in this process, no start-up cost, for a few files);
    windows of all the files are batched together. A path that cannot be opened comes back at
    once as an ``error`` result; ``on_progress`` gets the scan's dict (files_done, files_total,
    windows, errors, elapsed) with those counted in. ``should_stop`` as in :meth:`Scanner.scan`."""
    entries: list[FileEntry] = []
    keys: dict[str, deque] = {}
    unreadable: list[tuple[K, FileResult]] = []
    for key, path in files:
        p = os.fspath(path)
        try:
            st = os.stat(p)
        except OSError as exc:
            unreadable.append((key, FileResult(p, status="error", error=f"cannot read it ({exc.strerror or exc})")))
            continue
        if not stat.S_ISREG(st.st_mode):
            unreadable.append((key, FileResult(p, status="error", error="not a regular file")))
            continue
        keys.setdefault(p, deque()).append(key)  # the same file twice comes back twice, in turn
        entries.append(FileEntry(p, p, st.st_size, st.st_mtime))
    yield from unreadable

    def progress(p: dict) -> None:
        n = len(unreadable)
        on_progress({**p, "files_done": p["files_done"] + n, "files_total": p["files_total"] + n,
                     "errors": p.get("errors", 0) + n})

    if not entries:
        return
    # The tagger's own scanner decodes in-process; this one gets the workers asked for.
    scanner = Scanner(tagger.backend, replace(tagger.options, workers=workers))
    for result in scanner.scan(entries, progress if on_progress else None, should_stop):
        yield keys[result.path].popleft(), result
