"""``mictag scan --ray``: the scan as a Ray Data pipeline, past one machine.

Stages:
1. listing, on the driver: discovery and the resume journal, exactly as the local scan
   (:func:`mictag.runtime.scan.run.run_scan` does this before handing the files here);
2. decode + window: ``map_batches`` over Ray tasks, one file per task, reusing the runtime's
   :func:`~mictag.runtime.scan.decode.decode_file` (decode, resample, fbank, windows); a generator, so
   a long file streams out in blocks of windows instead of one huge block;
3. model: ``map_batches`` on an actor pool (one actor per GPU with ``num_gpus=1``, CPU actors
   otherwise), each loading the model once; windows are batched for the backend and the heavy
   window arrays are dropped after it, so only scores travel on;
4. per-file aggregation: on the driver, as the stream arrives, with the same
   :class:`~mictag.runtime.scan.pipeline.Scoring` as the local scan; rows are written and flushed as
   files complete, so the resume journal works unchanged. (A Ray ``groupby`` would be an
   all-to-all barrier that holds every row back until the whole library is done.)

Failures: Ray retries decode tasks whose worker died, and Ray Data restarts dead model actors and
retries their batches (its actor pools default to unlimited ``max_restarts``/``max_task_retries``). A file whose blocks still fail is not lost: the scan tolerates
failed blocks and gives each file that produced no row an error row, so every file appears once.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mictag.errors import MictagError
from mictag.privacy import keep_quiet
from mictag.frontends import frontend_from_dict
from mictag.runtime.engines.open import model_metadata, open_backend
from mictag.runtime.scan.discovery import FileEntry
from mictag.runtime.scan.decode import Done, Failed, Window, decode_file
from mictag.runtime.scan.pipeline import ScanOptions, Scoring, FileState
from mictag.output.rows import FileResult
from mictag.runtime.engines.trust import CheckOutcome, RowGate

NEEDS_RAY = "--ray needs Ray Data, which is not installed: pip install 'mictag[dist]'"
_KINDS = {Window: "win", Done: "done", Failed: "error"}  # a decode message's kind in a Ray block
WINDOWS_PER_BLOCK = 16


def _import_ray():
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # Ray's C++ retry chatter is not for users
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MictagError(NEEDS_RAY) from None
    return ray


def decode_stage(batch: dict, cfg: dict, variant: str, hop: int, chunk_seconds: float) -> Iterator[dict]:
    """Ray task body: one file in, blocks of window rows out, then one closing row."""
    fb = frontend_from_dict(cfg)
    shape = (fb.target_frames, fb.num_mel_bins) if variant == "fbank" else (fb.window_samples,)
    fid, path = int(batch["fid"][0]), str(batch["path"][0])
    rows: list = []

    def block(items: list) -> dict:
        n = len(items)
        out = {"kind": np.array([_KINDS[type(m)] for m in items]), "fid": np.full(n, fid, np.int64),
               "index": np.zeros(n, np.int64), "valid": np.zeros(n, np.int64), "t0": np.zeros(n), "t1": np.zeros(n),
               "data": np.zeros((n, *shape), np.float32), "duration": np.zeros(n), "n_windows": np.zeros(n, np.int64),
               "status": np.array([""] * n, dtype=object), "note": np.array([""] * n, dtype=object),
               "size": np.full(n, -1, np.int64), "mtime": np.zeros(n)}
        for i, m in enumerate(items):
            if isinstance(m, Window):
                out["index"][i], out["data"][i], out["valid"][i] = m.index, m.data, m.valid
                out["t0"][i], out["t1"][i] = m.seconds
            elif isinstance(m, Done):
                out["duration"][i], out["n_windows"][i], out["status"][i], out["note"][i] = (m.duration, m.windows,
                                                                                            m.status, m.note)
                if m.size_bytes is not None:  # (-1: not known, a dangling link)
                    out["size"][i], out["mtime"][i] = m.size_bytes, m.mtime
            else:
                out["status"][i], out["note"][i] = "error", m.reason
        return out

    for message in decode_file(fid, path, fb, variant, hop, chunk_seconds):
        rows.append(message)
        if len(rows) >= WINDOWS_PER_BLOCK:
            yield block(rows)
            rows = []
    if rows:
        yield block(rows)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nobody answers at (ray.init would wait for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise MictagError(f"Ray address {address!r} must look like HOST:PORT (or ray://HOST:PORT)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise MictagError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); "
                          f"check the address, or run --ray without one for a local Ray") from None


class ModelStage:
    """Ray actor: loads the model once, scores the window rows of each batch. On a checked fast
    path (:mod:`mictag.runtime.engines.trust`) each output batch also says what its checks found, with the
    actor's id and the batch's number, so that the driver can hold rows until a check covers them."""

    def __init__(self, model: str, backend: str, precision: str | None = None, library: str | None = None,
                 thresholds: list[float] | None = None, embeddings: bool = False):
        import uuid

        # planned for this node's CPU; a fast path's verdicts are this node's, for this library
        self.backend = open_backend(model, backend, precision=precision, library=library)
        if thresholds is not None and hasattr(self.backend, "use_thresholds"):
            self.backend.use_thresholds(np.asarray(thresholds))
        if embeddings:
            self.backend.want_embeddings()
        self.actor = uuid.uuid4().hex
        self.batches = 0

    def __call__(self, batch: dict) -> dict:
        kinds = batch["kind"]
        wins = np.flatnonzero(kinds == "win")
        k = len(self.backend.meta["labels"])
        probs = np.zeros((len(kinds), k), np.float32)
        outcome = embeddings = None
        if wins.size:
            done = self.backend.submit(batch["data"][wins], batch["valid"][wins])
            probs[wins] = done.result()
            outcome = done.outcome
            if self.backend.embeds:
                got = done.embeddings()
                embeddings = np.zeros((len(kinds), got.shape[1]), np.float32)
                embeddings[wins] = got
        out = {key: value for key, value in batch.items() if key != "data"}  # scores travel on, windows don't
        out["probs"] = probs
        if self.backend.embeds:  # a block without windows has no width to give: a column of empty rows
            out["embedding"] = list(embeddings) if embeddings is not None else [np.zeros(0, np.float32)] * len(kinds)
        if hasattr(self.backend, "final_check"):  # the same columns in every block, windows or not
            n = len(kinds)
            if outcome is not None:
                self.batches += 1
            out["trust_actor"] = np.full(n, self.actor)
            out["trust_batch"] = np.full(n, self.batches if outcome is not None else 0, np.int64)  # 0: no windows
            out["trust_fast"] = np.full(n, bool(outcome and outcome.fast))
            out["trust_passed"] = np.full(n, -1 if outcome is None or outcome.passed is None else int(outcome.passed),
                                          np.int8)
            out["trust_reason"] = np.full(n, outcome.reason if outcome else "", dtype=object)
            out["trust_left"] = np.full(n, bool(outcome and outcome.left))
        return out


class RayExecutor:
    """Runs the decode and model stages on Ray; aggregates on the driver."""

    stage = ModelStage  # the model actor's class

    def __init__(self, model: str | os.PathLike, backend: str, options: ScanOptions, address: str | None,
                 cpus: int | None, say: Callable[[str], None], precision: str | None = None,
                 library: str | os.PathLike | None = None):
        self.ray = _import_ray()
        self.library = str(Path(library).resolve()) if library is not None else None
        self.say = say
        self.redone = 0
        self.trust = Counter()  # checks seen in the actors' batches: passed, failed
        self.on_replace: Callable[[list[str]], None] | None = None  # as Scanner.on_replace
        self._fast_rows: list[FileEntry] = []  # rows yielded with windows from a fast path
        self._replay: list[FileEntry] = []
        self.model = str(Path(model).resolve())
        self.backend = backend
        self.precision = precision
        self.options = options
        self.meta = model_metadata(model)
        self.scoring = Scoring(self.meta, options)
        self.windows_scored = 0
        self.backend_name = f"ray ({backend})"
        self._connect(address, cpus, say)

    def _connect(self, address: str | None, cpus: int | None, say) -> None:
        ray = self.ray
        if address and address != "auto":
            _check_reachable(address)
        if ray.is_initialized():
            return
        # Workers on other machines do not inherit this process's environment: the opt-outs travel
        # with the job (mictag.privacy).
        quiet = {"env_vars": keep_quiet()}
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR", runtime_env=quiet)
            else:
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         runtime_env=quiet)
        except Exception as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise MictagError(f"cannot start or reach {where} ({reason})") from None
        say(f"Ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, {ray.cluster_resources().get('GPU', 0):.0f} GPUs")

    def scan(self, entries: list[FileEntry], on_progress: Callable[[dict], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Iterator[FileResult]:
        ray = self.ray
        entries = list(entries)
        if not entries:
            return
        sc, o = self.scoring, self.options
        ctx = ray.data.DataContext.get_current()
        ctx.max_errored_blocks = -1  # a file that keeps failing becomes an error row, not a failed scan
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        items = [{"fid": i, "path": e.path} for i, e in enumerate(entries)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        # Ray retries a decode task whose worker died (its default for tasks).
        ds = ds.map_batches(decode_stage, batch_size=1, batch_format="numpy",
                            fn_kwargs={"cfg": sc.cfg.to_dict(), "variant": sc.variant, "hop": sc.hop,
                                       "chunk_seconds": o.chunk_seconds})
        pool = max(1, gpus) if gpus else max(1, cpus // 4)
        ds = ds.map_batches(self.stage, fn_constructor_args=(self.model, self.backend, self.precision, self.library,
                                                             [float(t) for t in sc.thresholds], o.embeddings),
                            batch_size=o.batch_size or (64 if gpus else 4), batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=pool), num_gpus=1 if gpus else 0)
        states = {i: FileState(e, {}, [], embeddings={} if o.embeddings else None) for i, e in enumerate(entries)}
        gate = RowGate()
        finished = 0
        seen_batches: set[tuple[str, int]] = set()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if should_stop and should_stop():
                break  # what finished is written; the rest is the next run's
            released = self._trust(batch, gate, states, seen_batches)
            for r in range(len(batch["kind"])):
                fid, kind = int(batch["fid"][r]), batch["kind"][r]
                st = states.get(fid)
                if st is None:
                    continue  # a retried block delivering a file twice: the first copy counted
                if kind == "win":
                    st.probs[int(batch["index"][r])] = batch["probs"][r]
                    st.segments.append((int(batch["index"][r]), (float(batch["t0"][r]), float(batch["t1"][r]))))
                    if st.embeddings is not None:
                        st.embeddings[int(batch["index"][r])] = np.asarray(batch["embedding"][r], np.float32)
                    self.windows_scored += 1
                elif kind == "error":
                    del states[fid]
                    finished += 1
                    e = st.entry
                    yield FileResult(e.rel, e.size, e.mtime, None, 0, "error", str(batch["note"][r]))
                    continue
                else:
                    size = int(batch["size"][r])
                    st.done = Done(fid, float(batch["duration"][r]), int(batch["n_windows"][r]), str(batch["status"][r]),
                                   str(batch["note"][r]), *((size, float(batch["mtime"][r])) if size >= 0 else ()))
                if st.done is not None and len(st.probs) >= st.done.windows:
                    del states[fid]
                    finished += 1
                    if gate.finished(fid, st):
                        if fid in gate.fast_files:
                            self._fast_rows.append(st.entry)
                        yield sc.result(st)
            for st in released:
                self._fast_rows.append(st.entry)
                yield sc.result(st)
            if on_progress:
                on_progress({"files_done": finished, "files_total": len(entries), "windows": self.windows_scored,
                             "errors": 0, "elapsed": 0.0})
        else:
            for st in states.values():  # blocks Ray gave up on after its retries
                e = st.entry
                yield FileResult(e.rel, e.size, e.mtime, None, 0, "error", "the distributed scan lost this file after retries")
        # The actors are gone: rows still waiting for their check, and those a failed check touched,
        # are scored again here, on the reference.
        gate.give_up()
        redo = [st.entry for st in gate.redo.values()] + self._replay
        if redo and not (should_stop and should_stop()):
            yield from self._redo(redo, should_stop)

    def _trust(self, batch: dict, gate: RowGate, states: dict, seen: set) -> list:
        """Feed the check outcomes of one block (a checked fast path's; a block may hold several
        actor batches) to the gate; the held states they release."""
        if "trust_actor" not in batch or not len(batch["kind"]):
            return []
        released = []
        rows_of: dict[tuple[str, int], list[int]] = {}
        for r, (actor, number) in enumerate(zip(batch["trust_actor"], batch["trust_batch"])):
            rows_of.setdefault((str(actor), int(number)), []).append(r)
        for (actor, number), rows in sorted(rows_of.items()):
            if number == 0 or (actor, number) in seen:
                continue  # rows of a batch with no windows; or a retried block
            seen.add((actor, number))
            r = rows[0]
            passed = int(batch["trust_passed"][r])
            outcome = CheckOutcome(fast=bool(batch["trust_fast"][r]), passed=None if passed < 0 else bool(passed),
                                   reason=str(batch["trust_reason"][r]), left=bool(batch["trust_left"][r]))
            if outcome.passed is not None:
                self.trust["passed" if outcome.passed else "failed"] += 1
                if outcome.passed is False:
                    self.say(f"a model actor's fast path failed a check ({outcome.reason}): what it scored is "
                             f"scored again")
            fids = {int(batch["fid"][i]) for i in rows if batch["kind"][i] == "win"}
            released += gate.batch(fids, outcome, source=actor, number=number)
            if outcome.left and outcome.passed is False and self._fast_rows:  # rows already given go too
                if self.on_replace is not None:
                    self.on_replace([e.rel for e in self._fast_rows])
                self._replay += self._fast_rows
                self._fast_rows = []
        return released

    def _redo(self, entries: list[FileEntry], should_stop) -> Iterator[FileResult]:
        from mictag.runtime.scan.pipeline import Scanner

        reference = open_backend(self.model, self.backend, precision="fp32")
        again = Scanner(reference, ScanOptions(**{**self.options.__dict__, "workers": max(1, self.options.workers)}))
        for result in again.scan(entries, should_stop=should_stop):
            self.redone += 1
            yield result
        self.windows_scored += again.windows_scored

    @property
    def notes(self) -> list[str]:
        if not self.trust and not self.redone:
            return []
        return [f"fast path checked against fp32 in the model actors: {self.trust['passed']} checks passed, "
                f"{self.trust['failed']} failed; {self.redone} files scored again on fp32 on the driver"]
