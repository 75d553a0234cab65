"""What every inference engine is to the scan: a :class:`Backend` that scores a batch of windows,
at once (``run``) or in two halves (``submit`` now, ``Submitted.result()`` later), so that a GPU
engine overlaps one batch's upload with another's compute. The engines themselves and how one is
chosen and opened: :mod:`mictag.runtime.engines.open`, :mod:`mictag.runtime.engines.choice`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

from mictag.errors import MictagError, ModelError


class Submitted:
    """A batch handed to :meth:`Backend.submit`. ``result()`` waits for it and returns its
    probabilities, (rows, labels) float32, an array of its own (the same one on later calls);
    ``embeddings()``, where the backend was asked for them (:meth:`Backend.want_embeddings`), the
    frozen network's pooled features of each row, (rows, dim) float32. ``fetch`` returns the
    probabilities, or (probabilities, embeddings). ``outcome``: what a checked fast path's checks
    found in it (:mod:`mictag.runtime.engines.trust`)."""

    __slots__ = ("rows", "_fetch", "_value", "_embeddings", "outcome")

    def __init__(self, rows: int, fetch: Callable[[], object] | None = None, value: np.ndarray | None = None,
                 outcome=None, embeddings: np.ndarray | None = None):
        self.rows, self._fetch, self._value, self.outcome = rows, fetch, value, outcome
        self._embeddings = None if embeddings is None else np.asarray(embeddings, np.float32)

    def result(self) -> np.ndarray:
        if self._value is None:
            got = self._fetch()
            if isinstance(got, tuple):
                got, embeddings = got
                self._embeddings = np.asarray(embeddings, np.float32)
            self._value = np.asarray(got, np.float32)
            self._fetch = None
        return self._value

    def embeddings(self) -> np.ndarray | None:
        self.result()
        return self._embeddings


def _in_parts(submit_one: Callable[[np.ndarray, np.ndarray], object], x: np.ndarray, valid: np.ndarray,
              limit: int) -> Submitted:
    """``submit_one`` on slices of at most ``limit`` rows, as one batch (each part's ``result()``
    gives its probabilities, or (probabilities, embeddings))."""
    parts = [submit_one(x[i : i + limit], valid[i : i + limit]) for i in range(0, x.shape[0], limit)]
    if len(parts) == 1:
        return Submitted(x.shape[0], parts[0].result)
    return Submitted(x.shape[0], lambda: _joined([p.result() for p in parts]))


def _joined(results: list) -> object:
    if isinstance(results[0], tuple):
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])
    return np.concatenate(results)


class Backend:
    """``run(x, valid) -> probabilities`` on a batch of windows; ``meta`` describes the model.
    ``submit`` / ``Submitted.result`` split the two halves of ``run`` (see the module docstring)."""

    name = ""
    meta: dict
    preferred_batch = 8
    in_flight = 1  # batches worth holding in flight: 2 where submit returns before the GPU is done
    plan = None  # the EnginePlan (mictag.runtime.engines.choice) that opened it, where one did

    @property
    def description(self) -> str:
        """What runs the model, e.g. "openvino bf16 (avx512_bf16)"."""
        return self.plan.describe() if self.plan else self.name

    @property
    def variant(self) -> str:
        return self.meta.get("variant", "waveform")

    embeds = False  # each Submitted carries its batch's embeddings too (see want_embeddings)

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Probabilities (rows, labels) for windows ``x`` with ``valid`` samples (or frames) each."""
        return self.submit(x, valid).result()

    def run_embedded(self, x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, embeddings) for windows ``x``: one pass through the model, both outputs."""
        done = self.submit(x, valid)
        return done.result(), done.embeddings()

    def want_embeddings(self) -> None:
        """From now on, every batch's embeddings come back with its probabilities (the scan's
        ``--embeddings``). A ModelError where this engine or model cannot give them."""
        raise ModelError(f"the {self.description} engine cannot return embeddings")

    def submit(self, x: np.ndarray, valid: np.ndarray) -> Submitted:
        """Start scoring a batch; ``x`` and ``valid`` may be reused once this returns. A backend
        without a pipeline runs the batch here."""
        if self.embeds:
            if type(self).run_embedded is Backend.run_embedded:
                raise NotImplementedError(f"{type(self).__name__} implements neither run_embedded nor submit")
            probs, embeddings = self.run_embedded(x, valid)
            return Submitted(x.shape[0], value=np.asarray(probs, np.float32), embeddings=embeddings)
        if type(self).run is Backend.run:
            raise NotImplementedError(f"{type(self).__name__} implements neither run nor submit")
        return Submitted(x.shape[0], value=np.asarray(self.run(x, valid), np.float32))

    def result(self, handle: Submitted) -> np.ndarray:
        """``handle.result()``: the probabilities of a submitted batch."""
        return handle.result()

    def _empty(self) -> Submitted:
        embeddings = np.zeros((0, 0), np.float32) if self.embeds else None
        return Submitted(0, value=np.zeros((0, len(self.meta["labels"])), np.float32), embeddings=embeddings)


@contextmanager
def model_errors(foreign: Callable[[Exception], str] | None = None):
    """mictag's own errors from loading or running a model become ModelError, with their message;
    with ``foreign``, so does any other exception (an engine library's), saying ``foreign(exc)``."""
    try:
        yield
    except ModelError:
        raise
    except MictagError as exc:
        raise ModelError(str(exc)) from None
    except Exception as exc:
        if foreign is None:
            raise
        raise ModelError(foreign(exc)) from None


def input_names(variant: str) -> tuple[str, str]:
    return ("windows", "valid_samples") if variant == "waveform" else ("frames", "valid_frames")


def row_shapes(meta: dict, names: tuple[str, str]) -> dict[str, tuple[int, ...]]:
    """The shape of one row of each model input, from the model's metadata."""
    if meta.get("variant", "waveform") == "waveform":
        window: tuple[int, ...] = (int(meta["window_samples"]),)
    else:
        from mictag.frontends import frontend_from_dict

        cfg = frontend_from_dict(meta["features"])
        window = (cfg.target_frames, cfg.num_mel_bins)
    return {names[0]: window, names[1]: ()}


def embedding_width(widths: dict[str, object]) -> int:
    """The width of a model's ``embedding`` output, from its outputs' last dimensions (by name); a
    ModelError where it has none, or one of no fixed width."""
    if "embedding" not in widths:
        raise ModelError("this model has no embedding output: export it again with this mictag")
    try:
        return int(widths["embedding"])
    except (TypeError, ValueError):
        raise ModelError(f"this model's embedding output has no fixed width ({widths['embedding']})") from None
