"""A beets plugin that tags the instruments playing in each item with mictag's runtime.

Enable it in beets' config (the values shown are the defaults)::

    plugins: mictag
    mictag:
        model: ''        # an exported .onnx / .engine / .pt; empty: the default tagger in mictag's cache
        backbone: ast    # with no model: whose default tagger, ast or musicnn (as `mictag scan --backbone`)
        threshold:       # one tag threshold for every label instead of the model's own (0..1)
        auto: yes        # tag items as they are imported
        write: no        # also write `instruments` into the files' tags (beets' item.try_write)
        backend: auto    # as `mictag scan --backend`
        workers: auto    # decode processes for `beet mictag` (auto: CPU cores - 1); imports decode inline
        embeddings: ''   # for `beet mictag-similar`: the table of `mictag scan MUSIC --embeddings emb.parquet`

``beet mictag [-f] [-w | -W] [QUERY]`` tags the matching items and stores, per item, the flexible
attributes ``instruments`` (the labels at or above their thresholds, ``;``-separated, as the
``tags`` column of ``mictag scan``), ``mictag_<label>`` (each label's score, a float) and
``mictag_model`` (the model's name, sha256 and threshold override). Items already tagged under
the same ``mictag_model`` are skipped unless ``-f``. A file that cannot be decoded is reported on
one line with its path and reason and the others go on; the command then exits 1.

Query them as any field: ``beet ls instruments:piano``, ``beet ls mictag_guitar:0.8..``.

``beet mictag-similar [-k N] [-e EMB] QUERY`` prints the items that sound most like the item QUERY
matches (the first, if several do), nearest first with their cosine similarity, from the embeddings
table a ``mictag scan --embeddings`` of the music directory wrote (``embeddings`` in the config, or
``-e``). It stores nothing in the library; a neighbour beets does not know is printed by its path.

Importing this module imports only beets and mictag's label list: beets loads every enabled
plugin on every ``beet`` command, so mictag's runtime (and its inference engine) loads only when
items are tagged, and torch only if the torch backend is chosen.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from beets import ui
from beets.dbcore import types
from beets.plugins import BeetsPlugin
from beets.util import displayable_path

from mictag.labels import OPENMIC_LABELS

if TYPE_CHECKING:
    import optparse
    from collections.abc import Sequence
    from pathlib import Path

    from beets.importer import ImportSession, ImportTask
    from beets.library import Item, Library

    from mictag.output.rows import FileResult
    from mictag.api import Tagger

PREFIX = "mictag_"
MODEL_FIELD = "mictag_model"
INSTRUMENTS_FIELD = "instruments"
FILE_TAG = "INSTRUMENTS"  # the tag `write` puts in files, the one `mictag write-tags` writes


class _ProgressLine:
    """One self-rewriting line on stderr while items are tagged, shown only on a terminal.
    Messages about single items erase it first, so that they stay readable."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._shown = False

    def __call__(self, p: dict) -> None:
        if not self.enabled:
            return
        done, total, elapsed = p["files_done"], p["files_total"], max(p["elapsed"], 1e-9)
        eta = f"{(total - done) * elapsed / done / 60:.1f} min" if done else "?"
        line = (f"mictag: {done}/{total} items  {p['windows'] / elapsed:.1f} windows/s  ETA {eta}  "
                f"failed {p.get('errors', 0)}")
        sys.stderr.write("\r" + line.ljust(78))
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r" + " " * 78 + "\r")
            sys.stderr.flush()
            self._shown = False


class MictagPlugin(BeetsPlugin):
    """``beet mictag`` and, with ``auto``, tagging at import."""

    # Typed, so that scores sort and compare as numbers (`mictag_guitar:0.8..`). Every mictag
    # model predicts OpenMIC's labels or a subset (musicnn's 8); a label outside them is still
    # stored, as an untyped flexible attribute.
    item_types = {
        INSTRUMENTS_FIELD: types.STRING,
        MODEL_FIELD: types.STRING,
        **{f"{PREFIX}{label}": types.Float(3) for label in OPENMIC_LABELS},
    }

    def __init__(self) -> None:
        super().__init__()
        self.config.add({
            "model": "",
            "backbone": "ast",
            "threshold": None,
            "auto": True,
            "write": False,
            "backend": "auto",
            "workers": "auto",
            "embeddings": "",
        })
        self._model: tuple[Path, str] | None = None  # (model path, identity), resolved once
        self._tagger: Tagger | None = None  # loaded once, at the first item that needs it
        self._import_failure: str | None = None  # a model that failed at import is not retried per album
        if self.config["auto"].get(bool):
            self.import_stages = [self.imported]
        if self.config["write"].get(bool):
            self._map_file_tag()

    # -- the command --------------------------------------------------------------------------
    def commands(self) -> list[ui.Subcommand]:
        cmd = ui.Subcommand("mictag", help="tag the instruments playing in each item (mictag)")
        cmd.parser.add_option("-f", "--force", action="store_true", default=False,
                              help="tag again the items this model has already tagged")
        cmd.parser.add_option("-w", "--write", dest="write", action="store_true", default=None,
                              help="write instruments into the files' tags (default: the write option)")
        cmd.parser.add_option("-W", "--nowrite", dest="write", action="store_false",
                              help="don't write to the files (opposite of -w)")
        cmd.func = self.command
        similar = ui.Subcommand("mictag-similar", help="the items that sound most like an item (mictag embeddings)")
        similar.parser.add_option("-k", type="int", default=10, help="how many items (default 10)")
        similar.parser.add_option("-e", "--embeddings", default=None,
                                  help="the table of `mictag scan --embeddings` (default: the embeddings option)")
        similar.func = self.similar_command
        return [cmd, similar]

    def similar_command(self, lib: Library, opts: optparse.Values, args: list[str]) -> None:
        try:
            from beets.dbcore.query import PathQuery
        except ImportError:  # beets before 2.1 kept it in beets.library
            from beets.library import PathQuery

        from mictag.errors import MictagError
        from mictag.similar.search import find_similar

        table = opts.embeddings or self.config["embeddings"].as_str()
        if not table:
            raise ui.UserError("mictag-similar needs the embeddings of your music: run `mictag scan "
                               "<music directory> --out tags.csv --embeddings emb.parquet`, then set "
                               "`mictag: embeddings: emb.parquet` in beets' config (or pass -e)")
        items = list(lib.items(args))
        if not items:
            raise ui.UserError("no item matches the query")
        item = items[0]
        if len(items) > 1:
            self._log.info("{} items match; the nearest to the first: {}", len(items), item)
        try:
            answer = find_similar(os.path.expanduser(table), os.fsdecode(item.path), k=opts.k,
                                  backend=self.config["backend"].as_str(), on_message=self._log.debug)
        except MictagError as exc:
            raise ui.UserError(f"mictag-similar: {exc}") from None
        for n in answer.neighbours:
            found = list(lib.items(PathQuery("path", os.fsencode(n.location)))) if n.location else []
            ui.print_(f"{n.similarity:.3f}  {found[0] if found else n.location or n.path}")

    def command(self, lib: Library, opts: optparse.Values, args: list[str]) -> None:
        write = self.config["write"].get(bool) if opts.write is None else opts.write
        items = list(lib.items(args))
        if not items:
            self._log.info("no items match the query")
            return
        try:
            tagged, skipped, failed = self.tag_items(items, write=write, force=opts.force,
                                                     workers=self._workers(), progress=sys.stderr.isatty())
        except KeyboardInterrupt:  # each item is stored as it finishes: nothing done is lost
            raise ui.UserError("mictag: interrupted; the items tagged so far are stored: rerun the same "
                               "command to tag the rest") from None
        note = " (-f tags them again)" if skipped else ""
        self._log.info("{} tagged, {} already tagged by {}{}, {} failed", tagged, skipped, self._model[1], note,
                       failed)
        if failed:
            # As `mictag scan`: the rest are stored, and a script can tell that some were not.
            raise ui.UserError(f"mictag: {failed} of {len(items)} items could not be tagged (see above)")

    # -- the import stage ---------------------------------------------------------------------
    def imported(self, session: ImportSession, task: ImportTask) -> None:
        """Tag the task's items once they are in the library. Files are not written here: beets
        writes them after this stage when the import writes tags, `instruments` included with
        ``write`` on. A model that cannot be loaded leaves items untagged, said once."""
        if self._import_failure is not None:
            return
        try:
            # Decoded in this process: an album is a few files, not worth starting workers for.
            self.tag_items(task.imported_items(), write=False, force=False, workers=0, progress=False)
        except ui.UserError as exc:
            self._import_failure = str(exc).removeprefix("mictag: ")  # the logger says whose it is
            self._log.warning("{}; the items are imported untagged (`beet mictag` tags them later)",
                              self._import_failure)

    # -- tagging ------------------------------------------------------------------------------
    def tag_items(self, items: Sequence[Item], write: bool, force: bool, workers: int,
                  progress: bool) -> tuple[int, int, int]:
        """Tag ``items`` (all of them with ``force``, else those not tagged by this model),
        storing each as its file finishes so that an interruption keeps what is done.
        Returns (tagged, skipped, failed); raises UserError if the model cannot be used."""
        if not items:
            return 0, 0, 0
        path, identity = self._resolve_model()
        todo = [item for item in items if force or item.get(MODEL_FIELD) != identity]
        if not todo:
            return 0, len(items), 0
        tagger = self._load_tagger(path)
        from mictag.api import tag_files

        if write:
            self._map_file_tag()
        line = _ProgressLine(progress)
        tagged = failed = 0
        try:
            for item, result in tag_files(tagger, ((item, os.fsdecode(item.path)) for item in todo), workers, line):
                if result.scores is None:  # "error", or "empty": nothing was decoded
                    line.clear()
                    self._log.error("{}: {}", displayable_path(item.path), result.error or result.status)
                    failed += 1
                    continue
                if result.status == "partial":  # tagged from what could be decoded, as the scan does
                    line.clear()
                    self._log.warning("{}: tagged from the part that decoded: {}", displayable_path(item.path),
                                      result.error)
                self._store(item, result, tagger.labels, identity, write)
                tagged += 1
        finally:
            line.clear()
        return tagged, len(items) - len(todo), failed

    def _store(self, item: Item, result: FileResult, labels: list[str], identity: str, write: bool) -> None:
        # Scores of labels this model does not have (another model tagged the item before) would
        # read as this model's: drop them.
        for key in [k for k in item.keys() if k.startswith(PREFIX) and k != MODEL_FIELD]:
            if key[len(PREFIX):] not in labels:
                del item[key]
        item[INSTRUMENTS_FIELD] = ";".join(result.tags)
        for label, score in zip(labels, result.scores):
            item[f"{PREFIX}{label}"] = round(float(score), 6)  # as `mictag scan` writes them
        item[MODEL_FIELD] = identity
        if write:
            item.try_write()  # beets writes the file (and logs a failure); the database is stored anyway
        item.store()

    # -- configuration ------------------------------------------------------------------------
    def _threshold(self) -> float | None:
        value = self.config["threshold"].get()
        if value is None or value == "":
            return None
        try:
            threshold = float(value)
        except (TypeError, ValueError):
            threshold = -1.0
        if not 0.0 <= threshold <= 1.0:
            raise ui.UserError(f"mictag: threshold must be a number between 0 and 1, not {value!r}")
        return threshold

    def _workers(self) -> int:
        value = self.config["workers"].get()
        if value in (None, "", "auto"):
            return max(1, (os.cpu_count() or 2) - 1)  # as `mictag scan`
        try:
            workers = int(value)
        except (TypeError, ValueError):
            workers = -1
        if workers < 0:
            raise ui.UserError(f"mictag: workers must be auto or a whole number >= 0, not {value!r}")
        return workers

    def _resolve_model(self) -> tuple[Path, str]:
        """The model file and its identity: found and hashed, not loaded (a run where every item
        is already tagged never loads an engine)."""
        if self._model is None:
            from pathlib import Path

            from mictag.errors import MictagError
            from mictag.api import default_tagger, model_identity

            model = self.config["model"].get() or ""
            try:
                path = Path(os.path.expanduser(str(model))) if model else default_tagger(
                    self.config["backbone"].as_str(), on_message=lambda m: self._log.info("{}", m))
                self._model = (path, model_identity(path, self._threshold()))
            except MictagError as exc:
                hint = "" if model else "; or set `model:` under `mictag:` in beets' config"
                raise ui.UserError(f"mictag: {exc}{hint}") from None
        return self._model

    def _load_tagger(self, path: Path) -> Tagger:
        if self._tagger is None:
            from mictag.errors import MictagError
            from mictag.runtime.engines.open import BACKENDS
            from mictag.api import Tagger

            backend = self.config["backend"].as_str()
            if backend not in BACKENDS:
                raise ui.UserError(f"mictag: backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
            try:
                self._tagger = Tagger(path, backend=backend, threshold=self._threshold(),
                                      on_message=lambda m: self._log.info("{}", m))
            except (MictagError, ValueError) as exc:
                raise ui.UserError(f"mictag: cannot use {path}: {exc}") from None
            self._log.debug("{} on {}", path, self._tagger.backend.description)
        return self._tagger

    def _map_file_tag(self) -> None:
        """Make `instruments` a field beets reads from and writes to files, so that try_write()
        puts it there. Only when writing: then the files are the record (`beet update` reads it
        back); otherwise the database is, and a file without the tag must not blank the field."""
        import mediafile

        if INSTRUMENTS_FIELD in mediafile.MediaFile.__dict__:
            return  # mapped already (the command after __init__, or another plugin)
        self.add_media_field(INSTRUMENTS_FIELD, _instruments_field(mediafile))


def _instruments_field(mediafile: Any) -> Any:
    """The file tag behind `instruments`: one INSTRUMENTS value per instrument, as `mictag
    write-tags` writes them (Vorbis comments, an ID3 TXXX frame, an MP4 freeform atom), joined
    with ";" as beets stores the field. No instrument: no tag."""

    class InstrumentsField(mediafile.ListMediaField):
        def __get__(self, mf, owner=None):
            values = super().__get__(mf, owner)
            return ";".join(values) if values else None

        def __set__(self, mf, value):
            values = [v for v in value.split(";") if v] if isinstance(value, str) else list(value or [])
            if values:
                super().__set__(mf, values)
            else:
                self.__delete__(mf)

    return InstrumentsField(
        mediafile.MP3ListDescStorageStyle(desc=FILE_TAG),
        mediafile.MP4ListStorageStyle(f"----:com.apple.iTunes:{FILE_TAG}"),
        mediafile.ListStorageStyle(FILE_TAG),
        mediafile.ASFStorageStyle(FILE_TAG),
    )
