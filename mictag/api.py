"""The Python API for ingestion scripts::

    from mictag import Tagger
    tagger = Tagger()                           # the model `mictag scan` uses; or Tagger("tagger.onnx")
    result = tagger.tag("song.flac")            # FileResult: scores, tags, duration, status
    result = tagger.tag_array(samples, 44100)   # any rate, mono or (samples, channels)
    Tagger(embeddings=True).tag("song.flac").embedding  # and the file's vector (as `scan --embeddings`)
    for r in tagger.tag_paths(paths, workers=4):  # results as files finish; bad files as error rows
        ...

The model is loaded once. Bad input raises typed errors (AudioError, ModelError) from ``tag`` and
``tag_array``; ``tag_paths`` reports them on the file's row and goes on, like ``mictag scan``.

:func:`tag_files` tags a caller's own list of files, each result handed back with the caller's key.

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

import numpy as np

from mictag.audio import AudioError, Resampler, downmix
from mictag.catalog import cached_taggers, default_model, models_dir
from mictag.digest import file_digest
from mictag.errors import MictagError, ModelNotFoundError
from mictag.runtime.engines.open import open_backend
from mictag.runtime.scan.decode import Done
from mictag.runtime.scan.discovery import FileEntry
from mictag.runtime.scan.pipeline import Scanner, ScanOptions, FileState
from mictag.output.rows import FileResult
from mictag.runtime.engines.trust import CheckOutcome, RowGate
from mictag.runtime.scan.windows import frame_windows, sample_windows


class Tagger:
    def __init__(self, model: str | os.PathLike | None = None, backend: str = "auto", batch_size: int | None = None,
                 hop_seconds: float | None = None, aggregate: str = "max", threshold: float | None = None,
                 segments: bool = False, precision: str | None = None, on_message=None,
                 library: str | os.PathLike | None = None, embeddings: bool = False):
        """``model``: an exported model; None takes the one ``mictag scan`` would (the AudioSet AST's
        tagger where it can be had, else the shipped musicnn-openmic20 tagger, fetched on first use).
        ``backend``/``precision`` as in ``mictag scan`` (auto: the fastest bounded path here, checked
        against fp32 as it goes); ``library`` names the folder the files come from, so that what
        those checks find is remembered for it (None: for the Python API as a whole);
        ``on_message`` hears what the model and engine choice have to say; ``embeddings``: each
        result's ``embedding`` holds the file's vector (the mean of its windows' embeddings,
        L2-normalised: :mod:`mictag.output.embeddings`)."""
        self.options = ScanOptions(hop_seconds=hop_seconds, batch_size=batch_size, aggregate=aggregate,
                                   threshold=threshold, workers=0, segments=segments,
                                   embeddings=embeddings)  # checked before any model loads
        if model is None:
            from mictag.catalog import first_scan_model

            model = first_scan_model(on_message=on_message)
        self.model = Path(model)
        self.backend = open_backend(model, backend, precision=precision, on_message=on_message, library=library)
        self._scanner = Scanner(self.backend, self.options)

    @property
    def labels(self) -> list[str]:
        return self._scanner.labels

    @property
    def thresholds(self) -> np.ndarray:
        return self._scanner.thresholds

    @staticmethod
    def _entry(path: str | os.PathLike) -> FileEntry:
        p = Path(path)
        try:
            st = p.stat()
        except OSError as exc:
            raise AudioError(f"{p}: cannot read ({exc.strerror or exc})") from None
        return FileEntry(str(p), str(p), st.st_size, st.st_mtime)

    def tag(self, path: str | os.PathLike) -> FileResult:
        """Tag one file; raises AudioError if it cannot be decoded at all."""
        (result,) = list(self._scanner.scan([self._entry(path)]))  # all of it: a checked fast path settles at the end
        if result.status == "error":
            raise AudioError(f"{path}: {result.error}")
        return result

    def tag_paths(self, paths: Iterable[str | os.PathLike], workers: int = 1) -> Iterator[FileResult]:
        """Tag many files with ``workers`` decode processes, yielding results as files finish (on a
        checked fast path, once a check covers them: for many files this is the cheap way, since
        the checks are spread over all of them; ``tag`` checks each file it returns)."""
        entries = []
        for p in paths:
            try:
                entries.append(self._entry(p))
            except AudioError:
                entries.append(FileEntry(str(p), str(p), -1, 0.0))
        scanner = Scanner(self.backend, ScanOptions(**{**self.options.__dict__, "workers": workers}))
        yield from scanner.scan(entries)

    def tag_array(self, samples: np.ndarray, sample_rate: int, name: str = "<array>") -> FileResult:
        """Tag audio already in memory: (samples,) or (samples, channels), any rate, float or int."""
        a = np.asarray(samples)
        if a.ndim not in (1, 2) or a.size == 0:
            raise AudioError(f"{name}: expected a non-empty (samples,) or (samples, channels) array, got shape {a.shape}")
        if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise AudioError(f"{name}: sample_rate must be a positive integer, got {sample_rate!r}")
        if a.dtype.kind == "i":
            a = a.astype(np.float32) / np.float32(-np.iinfo(a.dtype).min)
        elif a.dtype.kind != "f":
            raise AudioError(f"{name}: unsupported sample type {a.dtype}")
        mono = downmix(a.astype(np.float32, copy=False))
        if not np.all(np.isfinite(mono)):
            raise AudioError(f"{name}: the samples contain NaN or infinity")
        resample = Resampler(int(sample_rate))
        audio16k = np.concatenate([resample(mono), resample(np.zeros(0, np.float32), last=True)])
        s = self._scanner
        cut = frame_windows if s.variant == "fbank" else sample_windows
        windows = list(cut([audio16k], s.cfg, s.hop))
        entry = FileEntry(name, name, int(a.nbytes), 0.0)
        state = FileState(entry, {}, [], embeddings={} if self.options.embeddings else None)
        gate = RowGate() if hasattr(self.backend, "final_check") else None
        for start in range(0, len(windows), s.batch_size):
            batch = windows[start : start + s.batch_size]
            x, valid = np.stack([w.data for w in batch]), np.asarray([w.valid for w in batch])
            done = self.backend.submit(x, valid)
            if gate is not None:
                gate.batch({0}, getattr(done, "outcome", None))
            vectors = done.embeddings() if state.embeddings is not None else None
            for r, (w, row) in enumerate(zip(batch, done.result())):
                state.probs[w.index] = row
                state.segments.append((w.index, w.seconds(s.cfg)))
                if vectors is not None:
                    state.embeddings[w.index] = vectors[r]
        if gate is not None:  # returned at once: checked before it is returned, like a scan's rows
            if gate.pending:
                gate.outcome(self.backend.final_check() or CheckOutcome(fast=True, passed=True))
            if gate.tainted:
                state.probs.clear()
                for start in range(0, len(windows), s.batch_size):
                    batch = windows[start : start + s.batch_size]
                    x, valid = np.stack([w.data for w in batch]), np.asarray([w.valid for w in batch])
                    if state.embeddings is not None:
                        probs, vectors = self.backend.reference.run_embedded(x, valid)
                        state.embeddings.update({w.index: v for w, v in zip(batch, vectors)})
                    else:
                        probs = self.backend.reference.run(x, valid)
                    state.probs.update({w.index: row for w, row in zip(batch, probs)})
        state.done = Done(0, audio16k.size / s.cfg.sample_rate, len(windows), "ok", "")
        return s._result(state)


# -- a caller's own list of files ------------------------------------------------------------
K = TypeVar("K", bound=Hashable)
BACKBONES = ("ast", "musicnn")


def default_tagger(backbone: str = "ast", on_message: Callable[[str], None] | None = None) -> Path:
    """The tagger ``mictag scan --backbone BACKBONE`` uses without ``--model``, once it is built.

    For the AST that is the newest zero-training tagger in the cache, found without torch; where
    none is built this says to run ``mictag models pull`` rather than build one from the Hugging
    Face cache as the scan would (that needs torch and minutes, which a caller tagging on the fly,
    an import hook, must not start). For musicnn it is the scan's own choice
    (:func:`mictag.catalog.default_model`), torch-free once ``mictag models pull musicnn``
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


def file_entry(path: str, rel: str | None = None) -> FileEntry | FileResult:
    """The scan's entry for a file a caller names, or its error result where it cannot be a file
    to decode (it cannot be read, or it is a folder, a FIFO, a device): the words of the scan."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return FileResult(path, status="error", error=f"cannot read ({exc.strerror or exc})")  # as mictag.audio says
    if not stat.S_ISREG(st.st_mode):
        return FileResult(path, status="error", error="not a regular file")
    return FileEntry(path, path if rel is None else rel, st.st_size, st.st_mtime)


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
        entry = file_entry(p)
        if isinstance(entry, FileResult):
            unreadable.append((key, entry))
            continue
        keys.setdefault(p, deque()).append(key)  # the same file twice comes back twice, in turn
        entries.append(entry)
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
