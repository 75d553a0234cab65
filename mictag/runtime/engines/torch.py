"""The torch artifact from ``mictag export --torch-out`` (bf16 on GPU and on CPUs with native bf16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mictag.cpu import cpu_info
from mictag.runtime.engines.base import Backend, Submitted, _in_parts, input_names, row_shapes, model_errors


class TorchBackend(Backend):
    """The torch artifact. On a GPU (:mod:`mictag.runtime.engines.torch_cuda`): bf16 by default; windows
    staged through pinned buffers and uploaded on a side stream, double-buffered, so that batch
    n+1's upload overlaps batch n's compute; each batch padded to a bucket (powers of two up to
    ``batch``) whose CUDA graph is captured on first use and replayed after (``graphs=False``:
    eager). ``compile`` adds torch.compile (inductor, without its own CUDA graphs)."""

    def __init__(self, path: Path, device: str | None = None, precision: str | None = None,
                 compile: bool | None = None, batch: int | None = None, graphs: bool | None = None,
                 buckets: tuple[int, ...] | None = None):
        import torch

        from mictag.model.artifact import load_torch_artifact

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.startswith("cuda")
        precision = precision or ("bf16" if self.cuda or cpu_info().bf16 else "fp32")
        self.compiled = bool(compile)
        if self.cuda:
            torch.backends.cudnn.allow_tf32 = False  # the fbank conv must stay exact fp32
        with model_errors():
            # On CUDA our own graphs replace torch.compile's reduce-overhead mode (which captures
            # per shape on the current stream and cannot share our streams).
            self.module, self.meta = load_torch_artifact(path, self.device, precision,
                                                         compile=self.compiled and not self.cuda)
        if self.compiled and self.cuda:
            self.module = torch.compile(self.module, dynamic=False)
        self.name = "torch"
        self.precision = precision
        self.preferred_batch = batch or (buckets[-1] if buckets else (64 if self.cuda else 4))
        self.pipeline = None
        if self.cuda:
            from mictag.runtime.engines.torch_cuda import CudaPipeline

            names = input_names(self.variant)
            row = row_shapes(self.meta, names)[names[0]]
            self.pipeline = CudaPipeline(torch, self.module, self.device, row, row[0], len(self.meta["labels"]),
                                         self.preferred_batch, buckets, graphs=True if graphs is None else graphs)
            self.in_flight = 2

    @property
    def notes(self) -> list[str]:
        """What did not go as planned (a CUDA graph that could not be captured)."""
        return self.pipeline.notes if self.pipeline is not None else []

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.pipeline is not None:
            return self.submit(x, valid).result()
        torch = self.torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x)),
                              torch.from_numpy(np.ascontiguousarray(valid, np.int64)))[0]
            return out.float().numpy()

    def run_embedded(self, x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.pipeline is not None:
            return super().run_embedded(x, valid)
        torch = self.torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x)),
                              torch.from_numpy(np.ascontiguousarray(valid, np.int64)))
            return out[0].float().numpy(), out[2].float().numpy()

    def want_embeddings(self) -> None:
        if self.pipeline is not None:
            torch = self.torch
            names = input_names(self.variant)
            row = row_shapes(self.meta, names)[names[0]]
            with torch.inference_mode():  # one silent window tells the embedding's width
                width = self.module(torch.zeros((1, *row), device=self.device),
                                    torch.full((1,), row[0], dtype=torch.int64, device=self.device))[2].shape[-1]
            self.pipeline.enable_embeddings(int(width))
        self.embeds = True

    def submit(self, x: np.ndarray, valid: np.ndarray) -> Submitted:
        if self.pipeline is None:
            return super().submit(x, valid)
        if x.shape[0] == 0:
            return self._empty()
        return _in_parts(self.pipeline.submit, x, valid, self.pipeline.max_batch)
