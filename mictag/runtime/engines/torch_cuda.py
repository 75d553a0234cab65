"""The torch backend's CUDA path: double-buffered uploads on a side stream and one CUDA graph per
batch bucket.

- Two slots, each a pinned host buffer and a device buffer for the windows and for the valid
  counts (sized for the largest bucket), plus a pinned buffer for the probabilities. Batch n+1
  is uploaded on the copy stream while batch n computes on the compute stream; events order the
  two, and a slot is reused only once the batch that held it has been fetched.
- A batch runs at the smallest bucket that holds it (powers of two up to the largest batch). The
  first batch of a bucket captures that bucket's CUDA graph (after a warm-up on a side stream);
  later ones copy their rows into the graph's static inputs on the device and replay it, which
  removes the launch overhead of a few hundred kernels per batch. Where capture fails, that
  bucket runs eagerly from then on, and ``notes`` says why.
- Only the probabilities of the real rows come back to the host (and their embeddings, once
  :meth:`CudaPipeline.enable_embeddings` asked for them).

Imported only by the torch backend on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mictag.runtime.engines.buckets import batch_buckets, bucket_for

WARMUP_RUNS = 2  # before capture: lets cuDNN/cuBLAS pick kernels and allocate workspaces


@dataclass(eq=False)
class _Graph:
    graph: Any
    x: Any  # the static inputs the graph reads
    valid: Any
    out: Any  # the static probabilities it writes
    emb: Any  # and the static embeddings


@dataclass(eq=False)
class _Slot:
    host_x: Any  # pinned tensors; *_np are numpy views of them
    host_valid: Any
    host_out: Any
    host_x_np: np.ndarray
    host_valid_np: np.ndarray
    host_out_np: np.ndarray
    dev_x: Any
    dev_valid: Any
    uploaded: Any  # torch.cuda.Event: the slot's inputs are on the device
    ready: Any  # the slot's probabilities are in host_out
    pending: "_Pending | None" = None
    host_emb: Any = None  # pinned, with embeddings on
    host_emb_np: np.ndarray | None = None


class _Pending:
    def __init__(self, slot: _Slot, rows: int):
        self.slot, self.rows = slot, rows
        self._value: np.ndarray | None = None

    def result(self) -> np.ndarray:
        if self._value is None:
            self.slot.ready.synchronize()
            self._value = self.slot.host_out_np[: self.rows].copy()
            if self.slot.host_emb_np is not None:
                self._value = (self._value, self.slot.host_emb_np[: self.rows].copy())
            if self.slot.pending is self:
                self.slot.pending = None
            self.slot = None
        return self._value


class CudaPipeline:
    """Feeds ``module`` (``(x, valid) -> (probabilities, ...)``) on a CUDA ``device``. ``row``: the
    shape of one window; ``full``: the valid count of a whole window (for the static inputs)."""

    def __init__(self, torch, module, device: str, row: tuple[int, ...], full: int, labels: int, max_batch: int,
                 buckets: tuple[int, ...] | None = None, graphs: bool = True, slots: int = 2):
        self.torch, self.module, self.device = torch, module, torch.device(device)
        self.row, self.full, self.labels = tuple(row), int(full), labels
        self.buckets = tuple(sorted(buckets)) if buckets else batch_buckets(max_batch, smallest=min(8, max_batch))
        self.max_batch = self.buckets[-1]
        self.use_graphs = graphs
        self.graphs: dict[int, _Graph | None] = {}  # None: capture failed, the bucket runs eagerly
        self.notes: list[str] = []
        self.copy_stream = torch.cuda.Stream(self.device)
        self.compute_stream = torch.cuda.Stream(self.device)
        top = self.max_batch
        self.slots = []
        for _ in range(slots):
            hx = torch.zeros((top, *self.row), dtype=torch.float32, pin_memory=True)
            hv = torch.full((top,), self.full, dtype=torch.int64, pin_memory=True)
            ho = torch.zeros((top, labels), dtype=torch.float32, pin_memory=True)
            # Device buffers start as whole silent windows: the padding rows of a bucket are
            # always finite (later, rows of earlier batches), and they are discarded.
            dx = torch.zeros((top, *self.row), dtype=torch.float32, device=self.device)
            dv = torch.full((top,), self.full, dtype=torch.int64, device=self.device)
            self.slots.append(_Slot(hx, hv, ho, hx.numpy(), hv.numpy(), ho.numpy(), dx, dv,
                                    torch.cuda.Event(), torch.cuda.Event()))
        self._next = 0
        self.embedding_dim: int | None = None

    def enable_embeddings(self, dim: int) -> None:
        """From the next batch on, copy each row's embedding (width ``dim``) back too."""
        torch = self.torch
        for slot in self.slots:
            if slot.pending is not None:
                slot.pending.result()
            slot.host_emb = torch.zeros((self.max_batch, dim), dtype=torch.float32, pin_memory=True)
            slot.host_emb_np = slot.host_emb.numpy()
        self.embedding_dim = dim

    def _graph(self, rows: int) -> _Graph | None:
        """The bucket's graph, captured on first use; None where it runs eagerly."""
        if not self.use_graphs:
            return None
        if rows in self.graphs:
            return self.graphs[rows]
        torch = self.torch
        entry = None
        try:
            torch.cuda.synchronize(self.device)  # nothing of ours in flight while capturing
            sx = torch.zeros((rows, *self.row), dtype=torch.float32, device=self.device)
            sv = torch.full((rows,), self.full, dtype=torch.int64, device=self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.module(sx, sv)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self.module(sx, sv)
            torch.cuda.synchronize(self.device)
            entry = _Graph(graph, sx, sv, outputs[0], outputs[2])
        except Exception as exc:  # an op that cannot be captured: run this bucket eagerly
            self.notes.append(f"CUDA graph capture failed at batch {rows} ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}); it runs eagerly")
            torch.cuda.synchronize(self.device)  # a capture error that left the device broken surfaces here
        self.graphs[rows] = entry
        return entry

    def submit(self, x: np.ndarray, valid: np.ndarray) -> _Pending:
        """Queue 1 to ``max_batch`` windows; they are copied before this returns."""
        torch = self.torch
        n = x.shape[0]
        if not 0 < n <= self.max_batch:
            raise ValueError(f"a batch holds 1 to {self.max_batch} windows, not {n}")
        if tuple(x.shape[1:]) != self.row:
            raise ValueError(f"windows of shape {tuple(x.shape[1:])}, but the model takes {self.row}")
        b = bucket_for(n, self.buckets)
        slot = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        if slot.pending is not None:
            slot.pending.result()  # its batch is done: inputs, outputs and pinned buffers are free
        with torch.inference_mode():
            graph = self._graph(b)
            slot.host_x_np[:n] = x
            slot.host_valid_np[:n] = valid
            with torch.cuda.stream(self.copy_stream):
                # Only the real rows travel; the bucket's other rows keep earlier (finite) data.
                slot.dev_x[:n].copy_(slot.host_x[:n], non_blocking=True)
                slot.dev_valid[:n].copy_(slot.host_valid[:n], non_blocking=True)
                slot.uploaded.record(self.copy_stream)
            self.compute_stream.wait_event(slot.uploaded)
            with torch.cuda.stream(self.compute_stream):
                if graph is not None:
                    graph.x.copy_(slot.dev_x[:b])
                    graph.valid.copy_(slot.dev_valid[:b])
                    graph.graph.replay()
                    out, emb = graph.out, graph.emb
                else:
                    outputs = self.module(slot.dev_x[:b], slot.dev_valid[:b])
                    out, emb = outputs[0], outputs[2]
                slot.host_out[:n].copy_(out[:n], non_blocking=True)
                if slot.host_emb is not None:
                    slot.host_emb[:n].copy_(emb[:n], non_blocking=True)
                slot.ready.record(self.compute_stream)
        slot.pending = _Pending(slot, n)
        return slot.pending
